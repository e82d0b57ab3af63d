"""The HTTP seam under the registry client: one request in, one streaming response out.

Built on the standard library's ``http.client``: on loopback it costs about half the CPU of
httpx (performance-anchors.md A4), and the registry protocol needs nothing beyond HTTP/1.1
keep-alive. Connections are kept per (scheme, host, port) and reused by whichever thread asks
next; a response returns its connection to the pool only after its body was read to the end
(or was empty), otherwise the connection is closed.

The :class:`Transport` protocol is the seam tests use for fault injection: a wrapper may
corrupt bytes, answer 429, drop the connection mid-body or answer 401, and the client above
must cope. Redirects, retries and authentication are the client's business, not this layer's.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from overunder.errors import InvalidArgument, RegistryError

__all__ = [
    "Body",
    "ConnectionDropped",
    "HTTPTransport",
    "Headers",
    "Response",
    "Transport",
]

DEFAULT_TIMEOUT = 60.0
_BLOCK = 1 << 20
_DRAIN_MAX = 64 << 10  # upload read size (http.client's default of 8 KiB costs CPU on big blobs)
USER_AGENT = "overunder/0.1 (+https://github.com/overunder)"


# A request body: bytes, an open binary file (read from its current position), or an iterable
# of chunks (sent with Content-Length taken from the headers).
class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


Body = bytes | Readable | Iterable[bytes] | None


class ConnectionDropped(RegistryError):
    """The connection failed or closed before the whole answer arrived (retryable)."""


class Headers:
    """Case-insensitive response headers (the last value wins, except via :meth:`get_all`)."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items = list(items)
        self._map = {k.lower(): v for k, v in self._items}

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._map.get(name.lower(), default)

    def get_all(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self._items if k.lower() == lname]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._map

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)


class Response(Protocol):
    """A streaming answer. ``read``/``readinto`` raise :class:`ConnectionDropped` when the
    connection breaks mid-body; ``close`` must always be called (a ``with`` block does it)."""

    status: int
    reason: str
    headers: Headers
    url: str

    def read(self, n: int = -1) -> bytes: ...

    def readinto(self, buf: memoryview) -> int: ...

    def close(self) -> None: ...

    def __enter__(self) -> Response: ...

    def __exit__(self, *exc: object) -> None: ...


class Transport(Protocol):
    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: Body = None,
    ) -> Response: ...

    def close(self) -> None: ...


@dataclass
class _Pool:
    idle: list[http.client.HTTPConnection] = field(default_factory=list)


class _HTTPResponse:
    """A :class:`Response` over ``http.client``; gives its connection back when drained."""

    def __init__(
        self,
        transport: HTTPTransport,
        *,
        key: tuple[str, str, int],
        conn: http.client.HTTPConnection,
        resp: http.client.HTTPResponse,
        url: str,
        method: str,
    ) -> None:
        self._transport = transport
        self._key = key
        self._conn: http.client.HTTPConnection | None = conn
        self._resp = resp
        self.status = resp.status
        self.reason = resp.reason
        self.headers = Headers(resp.getheaders())
        self.url = url
        self._done = method == "HEAD" or self.status in (204, 304) or resp.length == 0

    def read(self, n: int = -1) -> bytes:
        if self._done:
            return b""
        try:
            data = self._resp.read() if n < 0 else self._resp.read(n)
        except (http.client.HTTPException, OSError) as err:
            self._fail()
            raise self._dropped(err) from err
        if n < 0 or not data:
            self._done = True
        if n > 0 and not data:
            self._check_complete()
        return data

    def readinto(self, buf: memoryview) -> int:
        if self._done:
            return 0
        try:
            got = self._resp.readinto(buf)
        except (http.client.HTTPException, OSError) as err:
            self._fail()
            raise self._dropped(err) from err
        if got == 0:
            self._done = True
            self._check_complete()
        return got

    def _dropped(self, err: BaseException) -> ConnectionDropped:
        return ConnectionDropped(
            f"connection to {self._key[1]}:{self._key[2]} broke while reading {self.url}: {err}",
            hint="the request is retried automatically; check the network if it persists",
        )

    def _check_complete(self) -> None:
        # http.client returns b"" instead of raising when a Content-Length body is cut short.
        if self._resp.length:
            self._fail()
            raise ConnectionDropped(
                f"connection to {self._key[1]}:{self._key[2]} closed with "
                f"{self._resp.length} bytes of {self.url} still to come",
                hint="the request is retried automatically; check the network if it persists",
            )

    def _fail(self) -> None:
        self._done = True
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        # http.client closes the response itself once the body was read to its end.
        drained = self._done or self._resp.isclosed()
        length = self._resp.length
        if not drained and self.status != 416 and length is not None and length <= _DRAIN_MAX:
            # A small unread body (an error document): reading it keeps the connection.
            try:
                self._resp.read()
                drained = True
            except (http.client.HTTPException, OSError):
                drained = False
        if drained and not self._resp.will_close:
            self._resp.close()  # closes only the response's file object, not the socket
            self._transport._release(self._key, conn)
        else:
            # A big unread body, or a 416 whose Content-Length is the whole blob's while its
            # body is short (registry-protocol.md §7): drop the connection.
            conn.close()

    def __enter__(self) -> _HTTPResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HTTPTransport:
    """Keep-alive HTTP/1.1 over ``http.client``; thread safe (one request per connection at
    a time). HTTPS certificates are checked, except for the hosts in ``insecure_hosts``
    (``host`` or ``host:port``; the client passes the registries the user declared insecure,
    never the hosts they redirect to or take tokens from)."""

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        insecure_hosts: Iterable[str] = (),
        ssl_context: ssl.SSLContext | None = None,
        max_idle_per_host: int = 8,
    ) -> None:
        self.timeout = timeout
        self.max_idle_per_host = max_idle_per_host
        self._insecure = {h.lower() for h in insecure_hosts}
        self._ssl = ssl_context  # made on first HTTPS use (loading CA certs costs ~40 ms)
        self._ssl_unverified: ssl.SSLContext | None = None
        self._lock = threading.Lock()
        self._pools: dict[tuple[str, str, int], _Pool] = {}

    def _context(self, host: str, port: int) -> ssl.SSLContext:
        unverified = host.lower() in self._insecure or f"{host}:{port}".lower() in self._insecure
        with self._lock:
            if unverified:
                if self._ssl_unverified is None:
                    ctx = ssl.create_default_context()
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                    self._ssl_unverified = ctx
                return self._ssl_unverified
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            return self._ssl

    def _connect(self, key: tuple[str, str, int]) -> http.client.HTTPConnection:
        scheme, host, port = key
        if scheme == "https":
            return http.client.HTTPSConnection(
                host,
                port,
                timeout=self.timeout,
                context=self._context(host, port),
                blocksize=_BLOCK,
            )
        return http.client.HTTPConnection(host, port, timeout=self.timeout, blocksize=_BLOCK)

    def _acquire(self, key: tuple[str, str, int]) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            pool = self._pools.setdefault(key, _Pool())
            if pool.idle:
                return pool.idle.pop(), True
        return self._connect(key), False

    def _release(self, key: tuple[str, str, int], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            pool = self._pools.setdefault(key, _Pool())
            if len(pool.idle) < self.max_idle_per_host:
                pool.idle.append(conn)
                return
        conn.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: Body = None,
    ) -> Response:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidArgument(f"cannot fetch {url!r}: not an http(s) URL")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        key = (parts.scheme, parts.hostname, port)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        hdrs = {"User-Agent": USER_AGENT}
        hdrs.update(headers or {})
        if isinstance(body, bytes):
            hdrs.setdefault("Content-Length", str(len(body)))
        elif body is None and method in ("PUT", "POST", "PATCH"):
            hdrs.setdefault("Content-Length", "0")
        # A pooled connection may have been closed by the server while idle: retry once on
        # a fresh one, but only when nothing of a streaming body was consumed.
        for attempt in (0, 1):
            conn, reused = self._acquire(key)
            try:
                conn.request(method, target, body=_body_for(body), headers=hdrs)
                resp = conn.getresponse()
            except (http.client.HTTPException, OSError) as err:
                conn.close()
                rewindable = body is None or isinstance(body, bytes)
                if reused and attempt == 0 and rewindable:
                    continue
                if isinstance(err, ssl.SSLCertVerificationError):
                    raise RegistryError(
                        f"TLS certificate of {parts.hostname} not trusted: {err.verify_message}",
                        hint="fix the certificate, or, if you trust this registry, declare it "
                        "insecure with --insecure-registry or OVERUNDER_INSECURE_REGISTRIES",
                    ) from err
                if isinstance(err, ConnectionRefusedError | socket.gaierror):
                    # Nobody listens, or no such host: retrying will not help (Docker fails
                    # at once too).
                    raise RegistryError(
                        f"{method} {url} failed: {_describe(err)}",
                        hint="check the registry address and that the registry is running",
                    ) from err
                raise ConnectionDropped(
                    f"{method} {url} failed: {_describe(err)}",
                    hint="check that the registry is up and reachable",
                ) from err
            return _HTTPResponse(self, key=key, conn=conn, resp=resp, url=url, method=method)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        with self._lock:
            pools, self._pools = self._pools, {}
        for pool in pools.values():
            for conn in pool.idle:
                conn.close()


def _body_for(body: Body) -> Any:
    if body is None or isinstance(body, bytes) or hasattr(body, "read"):
        return body
    return iter(body)


def _describe(err: BaseException) -> str:
    if isinstance(err, socket.timeout):
        return "timed out"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, socket.gaierror):
        return f"no such host ({err.strerror})"
    return str(err) or type(err).__name__
