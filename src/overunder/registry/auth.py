"""Registry authentication: the ``WWW-Authenticate`` challenge, Basic, and Bearer tokens.

The flow (registry-protocol.md §3, distribution's token spec):

1. A request answers 401 with ``WWW-Authenticate: Basic realm="…"`` or
   ``Bearer realm="https://auth…/token",service="…",scope="repository:a/b:pull"``.
2. Basic: resend with ``Authorization: Basic base64(user:password)``.
   Bearer: ``GET <realm>?service=…&scope=…`` (Basic credentials if we have them; with an
   identity token, the OAuth2 ``POST`` with ``grant_type=refresh_token``), read ``token`` or
   ``access_token`` and ``expires_in`` (60 s when absent or smaller), resend with
   ``Authorization: Bearer <token>``.
3. Tokens are cached per scope set and renewed shortly before they expire, or when the
   registry answers 401 again (revoked, clock skew, a token for another scope).

Credentials are only ever sent to the registry host itself and to the realm named by its
challenge, and only over HTTPS unless that host is one we reach over plain HTTP on purpose
(loopback, or declared insecure).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from overunder.errors import RegistryError
from overunder.registry.config import Credentials
from overunder.registry.transport import Headers, Transport

__all__ = ["Authenticator", "Challenge", "parse_challenges"]

MIN_TOKEN_SECONDS = 60
RENEW_MARGIN_SECONDS = 5.0
CLIENT_ID = "overunder"


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # lower case: "basic" | "bearer" | other
    params: dict[str, str] = field(default_factory=dict)


def parse_challenges(values: Sequence[str]) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` header values (RFC 7235): several challenges may share one
    value, separated by commas, and quoted strings may hold commas and escaped quotes."""
    out: list[Challenge] = []
    for value in values:
        i, n = 0, len(value)
        current: Challenge | None = None
        while i < n:
            while i < n and value[i] in " \t,":
                i += 1
            start = i
            while i < n and value[i] not in " \t,=":
                i += 1
            token = value[start:i]
            if not token:
                break
            j = i
            while j < n and value[j] in " \t":
                j += 1
            if j < n and value[j] == "=" and current is not None:
                i = j + 1
                while i < n and value[i] in " \t":
                    i += 1
                if i < n and value[i] == '"':
                    i += 1
                    buf: list[str] = []
                    while i < n and value[i] != '"':
                        if value[i] == "\\" and i + 1 < n:
                            i += 1
                        buf.append(value[i])
                        i += 1
                    i += 1
                    val = "".join(buf)
                else:
                    start = i
                    while i < n and value[i] not in ",":
                        i += 1
                    val = value[start:i].strip()
                current.params[token.lower()] = val
            else:
                current = Challenge(token.lower(), {})
                out.append(current)
    return out


@dataclass
class _Token:
    value: str
    expires_at: float


class Authenticator:
    """Authorization for one registry host; shared by the threads of one pull or push."""

    def __init__(
        self,
        host: str,
        credentials: Credentials,
        transport: Transport,
        *,
        plain_http_ok: Callable[[str], bool],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.host = host
        self.credentials = credentials
        self._transport = transport
        self._plain_http_ok = plain_http_ok
        self._clock = clock
        self._lock = threading.Lock()
        self.challenge: Challenge | None = None
        self._tokens: dict[tuple[str, ...], _Token] = {}
        self.token_requests = 0  # for tests and --debug

    # -- what to send -------------------------------------------------------------------

    def header(self, scopes: Sequence[str]) -> str | None:
        """The ``Authorization`` value for a request needing ``scopes``, or None (anonymous
        until the registry asks)."""
        ch = self.challenge
        if ch is None:
            return None
        if ch.scheme == "basic":
            return self._basic() if self.credentials.username else None
        if ch.scheme == "bearer":
            key = tuple(sorted(scopes)) or tuple(
                s for s in ch.params.get("scope", "").split(" ") if s
            )
            with self._lock:
                tok = self._tokens.get(key)
                if tok is None or self._clock() >= tok.expires_at - RENEW_MARGIN_SECONDS:
                    tok = self._fetch_token(ch, key)
                    self._tokens[key] = tok
            return f"Bearer {tok.value}"
        return None

    def _basic(self) -> str:
        raw = f"{self.credentials.username}:{self.credentials.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    # -- what the registry said -----------------------------------------------------------

    def on_unauthorized(self, headers: Headers, scopes: Sequence[str], sent: str | None) -> bool:
        """Take in a 401's challenge. True when a retry can do better than ``sent`` (the
        Authorization we had sent, or None)."""
        challenges = parse_challenges(headers.get_all("WWW-Authenticate"))
        known = [c for c in challenges if c.scheme in ("bearer", "basic")]
        if not known:
            return False
        # Prefer Bearer (what Docker does when both are offered).
        ch = next((c for c in known if c.scheme == "bearer"), known[0])
        with self._lock:
            self.challenge = ch
            if ch.scheme == "bearer":
                key = tuple(sorted(scopes))
                had = self._tokens.pop(key, None)
                # A first challenge, or a token the registry no longer accepts: fetch anew.
                return sent is None or (had is not None and sent == f"Bearer {had.value}")
        return ch.scheme == "basic" and bool(self.credentials.username) and sent is None

    def set_challenge(self, headers: Headers) -> None:
        """Record the challenge of a ping's 401 (no retry decision involved)."""
        known = [
            c
            for c in parse_challenges(headers.get_all("WWW-Authenticate"))
            if c.scheme in ("bearer", "basic")
        ]
        if known:
            self.challenge = next((c for c in known if c.scheme == "bearer"), known[0])

    # -- the token service --------------------------------------------------------------

    def _fetch_token(self, ch: Challenge, scopes: tuple[str, ...]) -> _Token:
        realm = ch.params.get("realm", "")
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RegistryError(
                f"registry {self.host} sent a token realm that is not a URL: {realm!r}",
                hint="the registry's auth configuration is broken",
            )
        netloc = parts.netloc.rsplit("@", 1)[-1]
        if parts.scheme == "http" and not self._plain_http_ok(netloc):
            raise RegistryError(
                f"registry {self.host} asks for tokens from {realm} over plain HTTP",
                hint="credentials are only sent over HTTPS, except to loopback or registries "
                "declared with --insecure-registry",
            )
        service = ch.params.get("service")
        creds = self.credentials
        self.token_requests += 1
        if creds.identity_token:
            form = [
                ("grant_type", "refresh_token"),
                ("refresh_token", creds.identity_token),
                ("client_id", CLIENT_ID),
            ]
            if service:
                form.append(("service", service))
            form.extend(("scope", s) for s in scopes)
            resp = self._transport.request(
                "POST",
                realm,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                body=urlencode(form).encode(),
            )
        else:
            query: list[tuple[str, str]] = []
            if service:
                query.append(("service", service))
            query.extend(("scope", s) for s in scopes)
            if creds.username:
                query.append(("account", creds.username))
            url = realm + ("&" if parts.query else "?") + urlencode(query) if query else realm
            headers = {"Authorization": self._basic()} if creds.username else {}
            resp = self._transport.request("GET", url, headers=headers)
        with resp:
            body = resp.read(1 << 20)
            status = resp.status
        if status in (401, 403):
            raise RegistryError(
                f"unauthorized: the token service {realm} refused "
                f"{'the stored credentials' if not creds.empty else 'anonymous access'} "
                f"for {' '.join(scopes) or self.host}",
                hint=f"log in with 'overunder login {self.host}' (or check the name and your "
                "access rights)",
            )
        if status != 200:
            raise RegistryError(
                f"token service {realm} answered {status}: {body[:200]!r}",
                hint="retry later; the registry's auth service is failing",
            )
        try:
            doc = json.loads(body)
        except ValueError as err:
            raise RegistryError(f"token service {realm} sent invalid JSON: {err}") from err
        value = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        if not isinstance(value, str) or not value:
            raise RegistryError(f"token service {realm} sent no token")
        expires_in = doc.get("expires_in")
        if not isinstance(expires_in, int | float) or expires_in < MIN_TOKEN_SECONDS:
            expires_in = MIN_TOKEN_SECONDS
        return _Token(value=value, expires_at=self._clock() + float(expires_in))
