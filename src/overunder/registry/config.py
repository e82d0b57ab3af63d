"""``~/.docker/config.json``: registry credentials, in Docker's format, shared with Docker.

Where: ``$DOCKER_CONFIG/config.json`` when ``DOCKER_CONFIG`` is set, else
``~/.docker/config.json``. What (the parts we read and write)::

    {"auths": {"127.0.0.1:5000": {"auth": base64("user:password")},
               "https://index.docker.io/v1/": {"auth": "…"} | {"identitytoken": "…"}},
     "credsStore": "pass",                       # helper for every registry
     "credHelpers": {"gcr.io": "gcloud"}}        # helper per registry

A helper is the program ``docker-credential-<name>`` speaking Docker's protocol on stdin /
stdout (``get``, ``store``, ``erase``). ``credHelpers`` wins over ``credsStore``, which wins
over ``auths``. When a configured helper binary is not installed we fall back to ``auths``
(Docker would fail), and say nothing: the caller sees anonymous or file credentials.

Every other key of the file is kept as is. Writes are crash-safe (temp in the same directory,
fsync, rename) and the file is mode 0600, as Docker writes it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overunder import atomic
from overunder.errors import InvalidArgument, RegistryError

__all__ = [
    "Credentials",
    "DockerConfig",
    "config_path",
    "normalize_server",
]

HUB_KEY = "https://index.docker.io/v1/"
_HUB_ALIASES = frozenset(
    {"docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com"}
)
TOKEN_USERNAME = "<token>"  # what helpers return as Username for an identity token


@dataclass(frozen=True, slots=True)
class Credentials:
    """What we present to a registry: a username and password, or an identity (refresh)
    token from an earlier OAuth login."""

    username: str = ""
    password: str = ""
    identity_token: str = ""

    @property
    def empty(self) -> bool:
        return not (self.username or self.password or self.identity_token)


def config_path() -> Path:
    base = os.environ.get("DOCKER_CONFIG")
    return Path(base) / "config.json" if base else Path.home() / ".docker" / "config.json"


def normalize_server(server: str) -> str:
    """The config key for ``server``: Hub's aliases become ``https://index.docker.io/v1/``;
    others lose scheme and path (Docker's ``ConvertToHostname``)."""
    s = server.strip()
    host = s
    for prefix in ("https://", "http://"):
        if host.startswith(prefix):
            host = host[len(prefix) :]
    host = host.split("/", 1)[0]
    if host in _HUB_ALIASES:
        return HUB_KEY
    if not host:
        raise InvalidArgument(f"invalid registry address {server!r}", hint="give HOST[:PORT]")
    return host


class DockerConfig:
    """The parsed file; :meth:`save` writes it back."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else config_path()
        self.data: dict[str, Any] = {}
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return
        except OSError as err:
            raise RegistryError(f"cannot read {self.path}: {err.strerror}") from err
        if not text.strip():
            return
        try:
            data = json.loads(text)
        except ValueError as err:
            raise InvalidArgument(
                f"{self.path} is not valid JSON: {err}",
                hint="fix or remove the file (it holds registry logins)",
            ) from err
        if not isinstance(data, dict):
            raise InvalidArgument(f"{self.path} is not a JSON object", hint="fix or remove it")
        self.data = data

    # -- lookup -------------------------------------------------------------------------

    def _auths(self) -> dict[str, Any]:
        auths = self.data.get("auths")
        if not isinstance(auths, dict):
            auths = {}
            self.data["auths"] = auths
        return auths

    def helper_for(self, server: str) -> str | None:
        """The credential helper configured for ``server`` (installed or not)."""
        key = normalize_server(server)
        helpers = self.data.get("credHelpers")
        if isinstance(helpers, dict):
            for k, v in helpers.items():
                if _same_server(k, key) and isinstance(v, str) and v:
                    return v
        store = self.data.get("credsStore")
        return store if isinstance(store, str) and store else None

    def get(self, server: str) -> Credentials:
        """Credentials for ``server``; empty ones when none are stored."""
        key = normalize_server(server)
        helper = self.helper_for(key)
        if helper and _helper_binary(helper):
            creds = _helper_get(helper, key)
            if not creds.empty:
                return creds
        for k, entry in self._auths().items():
            if _same_server(k, key) and isinstance(entry, dict):
                return _decode_entry(entry, k, self.path)
        return Credentials()

    # -- changes --------------------------------------------------------------------------

    def store(self, server: str, creds: Credentials) -> str:
        """Save ``creds`` for ``server`` (via its helper when installed); returns where."""
        key = normalize_server(server)
        helper = self.helper_for(key)
        if helper and _helper_binary(helper):
            _helper_run(
                helper,
                "store",
                json.dumps(
                    {
                        "ServerURL": key,
                        "Username": TOKEN_USERNAME if creds.identity_token else creds.username,
                        "Secret": creds.identity_token or creds.password,
                    }
                ),
            )
            # Docker keeps an empty entry in auths so that `docker login` lists the server.
            self._auths()[key] = {}
            self.save()
            return f"credential helper docker-credential-{helper}"
        entry: dict[str, Any] = {}
        if creds.identity_token:
            entry["identitytoken"] = creds.identity_token
        else:
            raw = f"{creds.username}:{creds.password}".encode()
            entry["auth"] = base64.b64encode(raw).decode()
        auths = self._auths()
        for k in [k for k in auths if _same_server(k, key) and k != key]:
            del auths[k]
        auths[key] = entry
        self.save()
        return str(self.path)

    def erase(self, server: str) -> bool:
        """Forget ``server``; True when something was removed."""
        key = normalize_server(server)
        removed = False
        helper = self.helper_for(key)
        if helper and _helper_binary(helper):
            with contextlib.suppress(RegistryError):
                _helper_run(helper, "erase", key)
                removed = True
        auths = self._auths()
        for k in [k for k in auths if _same_server(k, key)]:
            del auths[k]
            removed = True
        if removed:
            self.save()
        return removed

    def save(self) -> None:
        """temp → fsync → rename, mode 0600, parent dir created 0700."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = json.dumps(self.data, indent="\t") + "\n"
        atomic.write_bytes(self.path, data.encode(), mode=0o600)


def _same_server(key: str, normalized: str) -> bool:
    try:
        return normalize_server(key) == normalized
    except InvalidArgument:
        return False


def _decode_entry(entry: dict[str, Any], key: str, path: Path) -> Credentials:
    token = entry.get("identitytoken") or ""
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, sep, password = base64.b64decode(auth, validate=False).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as err:
            raise InvalidArgument(
                f"{path}: the auth of {key!r} is not base64 of 'user:password'",
                hint=f"run 'overunder login {key}' again",
            ) from err
        if not sep:
            raise InvalidArgument(
                f"{path}: the auth of {key!r} is not base64 of 'user:password'",
                hint=f"run 'overunder login {key}' again",
            )
        return Credentials(username=user, password=password, identity_token=str(token))
    username = entry.get("username") or ""
    password = entry.get("password") or ""
    return Credentials(username=str(username), password=str(password), identity_token=str(token))


def _helper_binary(name: str) -> str | None:
    return shutil.which(f"docker-credential-{name}")


def _helper_run(name: str, action: str, stdin: str) -> str:
    binary = _helper_binary(name)
    if binary is None:
        raise RegistryError(f"credential helper docker-credential-{name} is not installed")
    try:
        proc = subprocess.run(
            [binary, action], input=stdin, capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise RegistryError(f"docker-credential-{name} {action} failed: {err}") from err
    if proc.returncode != 0:
        msg = (proc.stdout.strip() or proc.stderr.strip() or f"exit {proc.returncode}")[:200]
        raise RegistryError(
            f"docker-credential-{name} {action} failed: {msg}",
            hint="check the credential helper, or remove credsStore/credHelpers from "
            f"{config_path()}",
        )
    return proc.stdout


def _helper_get(name: str, server: str) -> Credentials:
    try:
        out = _helper_run(name, "get", server)
    except RegistryError:
        # "credentials not found in native keychain" is an ordinary miss.
        return Credentials()
    try:
        doc = json.loads(out)
    except ValueError:
        return Credentials()
    if not isinstance(doc, dict):
        return Credentials()
    user = str(doc.get("Username") or "")
    secret = str(doc.get("Secret") or "")
    if user == TOKEN_USERNAME:
        return Credentials(identity_token=secret)
    return Credentials(username=user, password=secret)
