"""A client for one registry host speaking the distribution (OCI) API.

What it does for every caller (pull, push, login):

* **Endpoint.** ``localhost``, ``127.0.0.0/8`` and ``::1`` are reached over plain HTTP, as
  Docker does; every other host over HTTPS with certificate checks. Hosts the user declares
  insecure (``--insecure-registry HOST``, ``OVERUNDER_INSECURE_REGISTRIES=h1,h2``) get HTTPS
  without certificate checks, falling back to plain HTTP when HTTPS does not answer.
* **Auth.** Anonymous until the registry answers 401, then Basic or a Bearer token
  (:mod:`overunder.registry.auth`); one retry per request after a new challenge.
* **Retries.** 429, 500, 502, 503, 504 and dropped connections are retried with exponential
  backoff (``Retry-After`` honoured, capped); then the last error is raised.
* **Redirects.** Followed for GET/HEAD (blob storage behind a CDN); the registry's
  ``Authorization`` is never sent to another host.
* **Verification.** Manifests are checked against the digest asked for and against
  ``Docker-Content-Digest``, over the bytes as received. Blobs are written through a content
  writer that checks digest and size on commit, and resumed with ``Range`` after a drop,
  never asking past the blob's end.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol
from urllib.parse import urlencode, urljoin, urlsplit

from overunder.content.digest import is_digest, validate_digest
from overunder.errors import IntegrityError, NotFound, RegistryError
from overunder.image import mediatypes as mt
from overunder.image.manifest import detect_media_type
from overunder.registry.auth import Authenticator
from overunder.registry.config import Credentials
from overunder.registry.transport import (
    Body,
    ConnectionDropped,
    HTTPTransport,
    Response,
    Transport,
)

__all__ = [
    "MANIFEST_ACCEPT",
    "BlobWriter",
    "ManifestResult",
    "RegistryClient",
    "RetryPolicy",
    "insecure_registries_from_env",
    "is_loopback",
    "pull_scope",
    "push_scope",
]

MANIFEST_ACCEPT = ", ".join(
    [mt.OCI_INDEX, mt.DOCKER_MANIFEST_LIST, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST]
)
MAX_MANIFEST_BYTES = 4 << 20  # distribution refuses larger manifests too
READ_CHUNK = 1 << 20
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
INSECURE_ENV = "OVERUNDER_INSECURE_REGISTRIES"


def pull_scope(repo: str) -> str:
    return f"repository:{repo}:pull"


def push_scope(repo: str) -> str:
    return f"repository:{repo}:pull,push"


def _host_only(host: str) -> str:
    """``[::1]:5000`` -> ``::1``; ``127.0.0.1:5000`` -> ``127.0.0.1``; ``h`` -> ``h``."""
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def is_loopback(host: str) -> bool:
    """True for ``localhost``, ``127.0.0.0/8`` and ``::1`` (with or without a port)."""
    name = _host_only(host).lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def insecure_registries_from_env() -> list[str]:
    raw = os.environ.get(INSECURE_ENV, "")
    return [h.strip() for h in raw.replace(" ", ",").split(",") if h.strip()]


class BlobWriter(Protocol):
    """Where a blob goes (a :class:`overunder.content.ContentWriter` fits)."""

    offset: int

    def write(self, data: bytes | bytearray | memoryview) -> int: ...

    def commit(self) -> str: ...

    def abort(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 5  # tries in all, the first included
    base_delay: float = 0.5
    max_delay: float = 20.0
    sleep: Callable[[float], None] = time.sleep

    def delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(self.max_delay, max(0.0, float(retry_after)))
            except ValueError:
                pass  # an HTTP date: fall back to our own backoff
        backoff: float = min(self.max_delay, self.base_delay * (2**attempt))
        return backoff * (0.5 + random.random() / 2)


@dataclass(frozen=True, slots=True)
class ManifestResult:
    data: bytes  # exactly as received
    media_type: str
    digest: str


def _error_text(body: bytes) -> str:
    """``CODE: message`` items of a distribution error body, or the body's start."""
    try:
        doc = json.loads(body)
        errs = doc.get("errors") if isinstance(doc, dict) else None
        if isinstance(errs, list) and errs:
            parts = []
            for e in errs:
                if isinstance(e, dict):
                    code = str(e.get("code", "")).lower().replace("_", " ")
                    msg = str(e.get("message", ""))
                    parts.append(f"{code}: {msg}" if code and msg and code != msg else msg or code)
            if parts:
                return "; ".join(parts)
    except (ValueError, UnicodeDecodeError):
        pass
    return body[:200].decode("utf-8", "replace").strip()


class RegistryClient:
    """The distribution API of one host. Thread safe: pulls fetch layers from several threads
    through one client (and one connection pool)."""

    def __init__(
        self,
        host: str,
        *,
        credentials: Credentials | None = None,
        transport: Transport | None = None,
        insecure: Iterable[str] = (),
        retry: RetryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        insecure_set = {h.lower() for h in (*insecure, *insecure_registries_from_env())}
        self.insecure = host.lower() in insecure_set or _host_only(host).lower() in insecure_set
        if is_loopback(host):
            self.scheme = "http"
        else:
            self.scheme = "https"
        self._transport: Transport = transport or HTTPTransport(
            insecure_hosts=[host] if self.insecure else ()
        )
        self._owns_transport = transport is None
        self.retry = retry or RetryPolicy()
        self.auth = Authenticator(
            host,
            credentials or Credentials(),
            self._transport,
            plain_http_ok=lambda h: is_loopback(h) or h.lower() in insecure_set,
            clock=clock,
        )
        self._pinged = False
        self._ping_lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def close(self) -> None:
        if self._owns_transport:
            self._transport.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the request loop ---------------------------------------------------------------

    def ping(self) -> int:
        """``GET /v2/``; records the auth challenge. Returns the status (200 or 401)."""
        with self._ping_lock:
            try:
                status = self._ping_once()
            except (ConnectionDropped, RegistryError):
                if not (self.insecure and self.scheme == "https"):
                    raise
                self.scheme = "http"  # declared insecure and no HTTPS: plain HTTP, as Docker
                status = self._ping_once()
            self._pinged = True
            return status

    def _ping_once(self) -> int:
        resp = self._send("GET", self.base_url + "/v2/", headers={}, body=None)
        with resp:
            if resp.status == 401:
                self.auth.set_challenge(resp.headers)
                return 401
            if resp.status == 200:
                resp.read(4096)
                return 200
            if resp.status == 404:
                raise RegistryError(
                    f"{self.host} does not speak the registry v2 API (GET /v2/ answered 404)",
                    hint="check the registry address",
                )
            raise RegistryError(
                f"{self.host}: GET /v2/ answered {resp.status} {resp.reason}",
                hint="check the registry address, or retry later",
            )

    def _send(self, method: str, url: str, *, headers: Mapping[str, str], body: Body) -> Response:
        """One request with retries on 429/5xx and dropped connections (rewindable bodies
        only); no auth, no redirects."""
        attempt = 0
        while True:
            try:
                resp = self._transport.request(method, url, headers=headers, body=body)
            except ConnectionDropped:
                if attempt + 1 >= self.retry.attempts or not _rewindable(body):
                    raise
                self.retry.sleep(self.retry.delay(attempt, None))
                attempt += 1
                continue
            if (
                resp.status in RETRY_STATUSES
                and attempt + 1 < self.retry.attempts
                and _rewindable(body)
            ):
                wait = self.retry.delay(attempt, resp.headers.get("Retry-After"))
                resp.close()
                self.retry.sleep(wait)
                attempt += 1
                continue
            return resp

    def request(
        self,
        method: str,
        path_or_url: str,
        *,
        scopes: Sequence[str] = (),
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        follow_redirects: bool = True,
    ) -> Response:
        """A request to this registry with auth, retries and redirects. The caller checks
        the status and must close the response."""
        if not self._pinged:
            self.ping()
        url = path_or_url if "://" in path_or_url else self.base_url + path_or_url
        hdrs = dict(headers or {})
        # Credentials go to the registry host only (an upload Location may point elsewhere).
        home = urlsplit(url).netloc == self.host
        sent = self.auth.header(scopes) if home else None
        if sent:
            hdrs["Authorization"] = sent
        resp = self._send(method, url, headers=hdrs, body=body)
        if resp.status == 401 and home and _rewindable(body):
            retry = self.auth.on_unauthorized(resp.headers, scopes, sent)
            if retry:
                resp.close()
                hdrs.pop("Authorization", None)
                sent = self.auth.header(scopes)
                if sent:
                    hdrs["Authorization"] = sent
                resp = self._send(method, url, headers=hdrs, body=body)
        redirects = 0
        while (
            follow_redirects
            and resp.status in REDIRECT_STATUSES
            and method in ("GET", "HEAD")
            and redirects < MAX_REDIRECTS
        ):
            location = resp.headers.get("Location")
            resp.close()
            if not location:
                raise RegistryError(f"{method} {url}: redirect without a Location")
            url = urljoin(url, location)
            redirects += 1
            if urlsplit(url).netloc != self.host:
                # Storage behind a CDN: signed URL, no registry credentials.
                hdrs.pop("Authorization", None)
            resp = self._send(method, url, headers=hdrs, body=None)
        return resp

    def _raise_for(self, resp: Response, what: str) -> None:
        """Turn a failed answer into an error naming ``what``; closes ``resp``."""
        status = resp.status
        body = b"" if status == 416 else resp.read(64 * 1024)
        resp.close()
        text = _error_text(body) or resp.reason
        if status in (401, 403):
            text = _error_text(body) or "authentication required"
            if self.auth.credentials.empty:
                text += f" (no credentials stored for {self.host})"
            raise RegistryError(
                f"{what}: {text if text.startswith('unauthorized') else 'unauthorized: ' + text}",
                hint=f"log in with 'overunder login {self.host}', and check the name and "
                "your access rights",
            )
        if status == 404:
            raise NotFound(f"{what}: {text or 'not found'}", hint="check the name and tag")
        if status == 429:
            raise RegistryError(
                f"{what}: too many requests: {text}",
                hint="the registry rate-limits you; wait, or log in for a higher limit",
            )
        raise RegistryError(f"{what}: {status} {text}", hint="retry later")

    # -- manifests ------------------------------------------------------------------------

    def get_manifest(self, repo: str, reference: str) -> ManifestResult:
        """GET a manifest or index by tag or digest, verified (IntegrityError otherwise)."""
        what = f"manifest for {self.host}/{repo}{'@' if is_digest(reference) else ':'}{reference}"
        resp = self.request(
            "GET",
            f"/v2/{repo}/manifests/{reference}",
            scopes=[pull_scope(repo)],
            headers={"Accept": MANIFEST_ACCEPT},
        )
        if resp.status != 200:
            if resp.status == 404:
                resp.close()
                raise NotFound(
                    f"{what} not found: manifest unknown",
                    hint="check the name and tag (overunder never falls back to schema 1)",
                )
            self._raise_for(resp, what)
        with resp:
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > MAX_MANIFEST_BYTES:
                raise IntegrityError(f"{what} is {length} bytes, over the 4 MiB limit")
            data = resp.read(MAX_MANIFEST_BYTES + 1)
            if len(data) > MAX_MANIFEST_BYTES:
                raise IntegrityError(f"{what} is over the 4 MiB limit")
            content_type = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
            header_digest = resp.headers.get("Docker-Content-Digest")
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if is_digest(reference) and actual != reference:
            raise IntegrityError(
                f"{what}: the registry sent content with digest {actual}",
                hint="the registry or something between is corrupting data; nothing was stored",
            )
        if header_digest and header_digest.startswith("sha256:") and header_digest != actual:
            raise IntegrityError(
                f"{what}: Docker-Content-Digest says {header_digest} but the content hashes "
                f"to {actual}",
                hint="the registry or something between is corrupting data; nothing was stored",
            )
        media_type = detect_media_type(data, content_type)
        if media_type == mt.DOCKER_MANIFEST_V1_SIGNED or media_type.startswith(
            "application/vnd.docker.distribution.manifest.v1"
        ):
            raise RegistryError(
                f"{what}: the registry only offers a Docker schema 1 manifest",
                hint="schema 1 is deprecated and unsupported; push the image again with a "
                "current tool",
            )
        return ManifestResult(data=data, media_type=media_type, digest=actual)

    def head_manifest(self, repo: str, reference: str) -> ManifestResult | None:
        """HEAD a manifest: digest and media type without a body (does not count as a Hub
        pull); None when the registry does not have it."""
        resp = self.request(
            "HEAD",
            f"/v2/{repo}/manifests/{reference}",
            scopes=[pull_scope(repo)],
            headers={"Accept": MANIFEST_ACCEPT},
        )
        with resp:
            if resp.status == 404:
                return None
            if resp.status != 200:
                self._raise_for(resp, f"manifest for {self.host}/{repo}:{reference}")
            digest = resp.headers.get("Docker-Content-Digest") or ""
            ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
        if not is_digest(digest):
            return None
        return ManifestResult(data=b"", media_type=ctype, digest=digest)

    def put_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> str:
        """PUT manifest bytes verbatim; returns the digest the registry computed (checked
        against ours)."""
        scopes = [push_scope(repo)]
        resp = self.request(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            scopes=scopes,
            headers={"Content-Type": media_type},
            body=data,
        )
        ours = "sha256:" + hashlib.sha256(data).hexdigest()
        if resp.status not in (200, 201, 202):
            self._raise_for(resp, f"push of manifest {self.host}/{repo}:{reference}")
        with resp:
            theirs = resp.headers.get("Docker-Content-Digest")
        if theirs and theirs != ours:
            raise IntegrityError(
                f"registry stored manifest {self.host}/{repo}:{reference} as {theirs}, "
                f"expected {ours}"
            )
        return ours

    def list_tags(self, repo: str, *, page_size: int = 1000) -> list[str]:
        """Every tag of ``repo`` (``GET /v2/<name>/tags/list``, following ``Link`` pages)."""
        url = f"/v2/{repo}/tags/list?" + urlencode({"n": page_size})
        tags: list[str] = []
        for _ in range(10_000):  # a registry that links in circles must not hang us
            resp = self.request("GET", url, scopes=[pull_scope(repo)])
            if resp.status != 200:
                self._raise_for(resp, f"tags of {self.host}/{repo}")
            with resp:
                body = resp.read(16 << 20)
                link = resp.headers.get("Link") or ""
            try:
                doc = json.loads(body)
            except ValueError as err:
                raise RegistryError(f"tags of {self.host}/{repo}: invalid JSON: {err}") from err
            page = doc.get("tags") if isinstance(doc, dict) else None
            tags.extend(t for t in page or [] if isinstance(t, str))
            if 'rel="next"' not in link or "<" not in link:
                break
            url = link[link.index("<") + 1 : link.index(">")]
        return tags

    # -- blobs ----------------------------------------------------------------------------

    def blob_size(self, repo: str, digest: str, *, scopes: Sequence[str] = ()) -> int | None:
        """HEAD a blob: its size, or None when the repository does not have it."""
        validate_digest(digest)
        resp = self.request(
            "HEAD", f"/v2/{repo}/blobs/{digest}", scopes=scopes or [pull_scope(repo)]
        )
        with resp:
            if resp.status == 404:
                return None
            if resp.status != 200:
                self._raise_for(resp, f"blob {digest} in {self.host}/{repo}")
            length = resp.headers.get("Content-Length") or ""
        return int(length) if length.isdigit() else 0

    def fetch_blob(
        self,
        repo: str,
        digest: str,
        size: int,
        writer: BlobWriter,
        *,
        on_bytes: Callable[[int], None] | None = None,
    ) -> str:
        """Stream a blob into ``writer`` (from ``writer.offset`` when resuming), resume with
        ``Range`` after dropped connections, and commit (which verifies digest and size)."""
        validate_digest(digest)
        what = f"blob {digest} of {self.host}/{repo}"
        buf = bytearray(READ_CHUNK)
        view = memoryview(buf)
        drops = 0
        while writer.offset < size:
            offset = writer.offset
            headers = {"Range": f"bytes={offset}-{size - 1}"} if offset else {}
            resp = self.request(
                "GET", f"/v2/{repo}/blobs/{digest}", scopes=[pull_scope(repo)], headers=headers
            )
            try:
                if resp.status not in (200, 206):
                    self._raise_for(resp, what)
                skip = 0
                if resp.status == 206:
                    got = (resp.headers.get("Content-Range") or "").removeprefix("bytes ")
                    start = got.split("-", 1)[0]
                    if not start.isdigit() or int(start) != offset:
                        raise RegistryError(f"{what}: asked for bytes from {offset}, got {got!r}")
                elif offset:
                    skip = offset  # the server ignored Range: drop what we already have
                while True:
                    n = resp.readinto(view)
                    if n == 0:
                        break
                    chunk = view[:n]
                    if skip:
                        cut = min(skip, n)
                        skip -= cut
                        chunk = chunk[cut:]
                        if not chunk:
                            continue
                    writer.write(chunk)
                    if on_bytes is not None:
                        on_bytes(len(chunk))
                if writer.offset < size:
                    raise ConnectionDropped(
                        f"{what}: the answer ended after {writer.offset} of {size} bytes"
                    )
            except ConnectionDropped:
                drops += 1
                if drops >= self.retry.attempts:
                    raise
                self.retry.sleep(self.retry.delay(drops - 1, None))
                continue
            finally:
                resp.close()
        return writer.commit()

    # -- uploads --------------------------------------------------------------------------

    def upload_blob(
        self,
        repo: str,
        digest: str,
        size: int,
        opener: Callable[[], BinaryIO],
        *,
        chunk_size: int | None = None,
        mount_from: str | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> str:
        """Make ``digest`` exist in ``repo``. Returns ``"exists"`` (HEAD found it),
        ``"mounted"`` (cross-repository mount from ``mount_from``) or ``"pushed"``.
        Monolithic (POST, then one PUT) unless ``chunk_size``: PATCHes strictly in order,
        each to the latest ``Location``, then the closing PUT."""
        validate_digest(digest)
        scopes = [push_scope(repo)]
        if mount_from and mount_from != repo:
            scopes.append(pull_scope(mount_from))
        if self.blob_size(repo, digest, scopes=scopes) is not None:
            return "exists"
        attempt = 0
        while True:
            try:
                return self._upload_once(
                    repo=repo,
                    digest=digest,
                    size=size,
                    opener=opener,
                    scopes=scopes,
                    chunk_size=chunk_size,
                    mount_from=mount_from,
                    on_bytes=on_bytes,
                )
            except ConnectionDropped:
                attempt += 1
                if attempt >= self.retry.attempts:
                    raise
                self.retry.sleep(self.retry.delay(attempt - 1, None))

    def _upload_once(
        self,
        *,
        repo: str,
        digest: str,
        size: int,
        opener: Callable[[], BinaryIO],
        scopes: Sequence[str],
        chunk_size: int | None,
        mount_from: str | None,
        on_bytes: Callable[[int], None] | None,
    ) -> str:
        what = f"upload of blob {digest} to {self.host}/{repo}"
        query = ""
        if mount_from and mount_from != repo:
            query = "?" + urlencode({"mount": digest, "from": mount_from})
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/{query}", scopes=scopes)
        if resp.status == 201:
            resp.close()
            return "mounted"
        if resp.status != 202:
            self._raise_for(resp, what)
        with resp:
            location = self._location(resp, what)
        with opener() as f:
            if chunk_size is None or chunk_size >= size:
                resp = self.request(
                    "PUT",
                    _with_query(location, digest=digest),
                    scopes=scopes,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(size),
                    },
                    body=_CountingReader(f, on_bytes),
                )
                if resp.status != 201:
                    self._raise_for(resp, what)
                resp.close()
                return "pushed"
            offset = 0
            while offset < size:
                chunk = f.read(min(chunk_size, size - offset))
                if not chunk:
                    raise IntegrityError(f"{what}: the local blob is shorter than {size} bytes")
                end = offset + len(chunk) - 1
                resp = self.request(
                    "PATCH",
                    location,
                    scopes=scopes,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{offset}-{end}",
                    },
                    body=chunk,
                )
                if resp.status != 202:
                    self._raise_for(resp, what)
                with resp:
                    location = self._location(resp, what)
                    got = resp.headers.get("Range") or ""
                if got and got != f"0-{end}":
                    raise RegistryError(
                        f"{what}: registry has bytes {got} after sending 0-{end}",
                        hint="retry the push",
                    )
                offset = end + 1
                if on_bytes is not None:
                    on_bytes(len(chunk))
        resp = self.request("PUT", _with_query(location, digest=digest), scopes=scopes)
        if resp.status != 201:
            self._raise_for(resp, what)
        resp.close()
        return "pushed"

    def _location(self, resp: Response, what: str) -> str:
        location = resp.headers.get("Location")
        if not location:
            raise RegistryError(f"{what}: the registry sent no upload Location")
        return urljoin(self.base_url + "/", location)

    # -- login ----------------------------------------------------------------------------

    def check_login(self) -> None:
        """Verify the client's credentials against the registry (what ``docker login``
        does): RegistryError when they are refused."""
        status = self.ping()
        if status == 200:
            return
        ch = self.auth.challenge
        if ch is None:
            raise RegistryError(f"{self.host} refused GET /v2/ without an auth challenge")
        resp = self.request("GET", "/v2/")
        with resp:
            if resp.status == 200:
                return
        raise RegistryError(
            f"login to {self.host} failed: unauthorized: incorrect username or password",
            hint="check the username and password",
        )


class _CountingReader:
    """A file-like body that reports bytes as http.client reads them."""

    def __init__(self, f: BinaryIO, on_bytes: Callable[[int], None] | None) -> None:
        self._f = f
        self._on = on_bytes

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        if self._on is not None and data:
            self._on(len(data))
        return data


def _with_query(url: str, **params: str) -> str:
    return url + ("&" if "?" in url else "?") + urlencode(params)


def _rewindable(body: Body) -> bool:
    return body is None or isinstance(body, bytes)
