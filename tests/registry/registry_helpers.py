"""Helpers of the registry tests: real registries on 127.0.0.1, a token issuer, test images.

Three set-ups, each started once per session (``docker-registry serve CONFIG``, its own
config and storage under a temp dir, killed by PID at the end):

* ``plain_registry``: no auth;
* ``basic_registry``: htpasswd with a bcrypt entry (``htpasswd -Bbn``), user tester/testpw;
* ``token_registry``: Bearer tokens from :class:`TokenIssuer`, a small HTTP server on
  127.0.0.1 signing RS256 JWTs whose certificate the registry trusts via
  ``auth.token.rootcertbundle`` (distribution's token spec: ``iss``, ``sub``, ``aud``,
  ``exp``, ``nbf``, ``iat``, ``jti``, ``access``; the key travels in the ``x5c`` header).

(PYTEST_DONT_REWRITE: the test modules import this module before pytest loads it as a
plugin, so its asserts could not be rewritten anyway.)
"""

from __future__ import annotations

import base64
import datetime
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tarfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest


def require_binary(name: str) -> str:
    """As tests/conftest.py's: skip on a laptop, fail under CI=true (a conftest cannot import
    its parent conftest by name)."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"prerequisite missing in CI: the {name} binary", pytrace=False)
        pytest.skip(f"needs the {name} binary")
    return path


USER, PASSWORD = "tester", "testpw"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RegistryProc:
    host: str  # "127.0.0.1:PORT"
    pid: int
    root: Path
    log: Path
    proc: subprocess.Popen[bytes] = field(repr=False)

    def access_log(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def start_registry(
    base: Path, name: str, auth_yaml: str = "", *, ready_scheme: str = "http"
) -> RegistryProc:
    """A registry on a free 127.0.0.1 port. ``auth_yaml`` is appended to the config (an
    ``auth:`` section, or lines indented under ``http:`` such as ``tls:``)."""
    require_binary("docker-registry")
    port = free_port()
    d = base / name
    d.mkdir(parents=True)
    config = d / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: info\n  accesslog:\n    disabled: false\n"
        f"storage:\n  filesystem:\n    rootdirectory: {d / 'data'}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n" + auth_yaml
    )
    log = d / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    reg = RegistryProc(host=f"127.0.0.1:{port}", pid=proc.pid, root=d, log=log, proc=proc)
    deadline = time.monotonic() + 20
    while True:
        try:
            ctx = ssl._create_unverified_context() if ready_scheme == "https" else None
            urllib.request.urlopen(
                f"{ready_scheme}://{reg.host}/v2/", timeout=1, context=ctx
            ).close()
            break
        except urllib.error.HTTPError:
            break  # 401: up, and asking for auth
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                reg.stop()
                raise RuntimeError(f"registry did not start: {log.read_text()[-2000:]}") from None
            time.sleep(0.05)
    return reg


# -- token issuer -------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenIssuer:
    """Issues distribution JWTs. ``expire_next`` tokens are issued already expired (the
    registry then answers 401); anonymous callers get pull access to ``pub/*`` only."""

    SERVICE = "overunder-test-registry"
    ISSUER = "overunder-test-issuer"

    def __init__(self, directory: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "overunder test token signer")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = directory / "token-cert.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.expire_next = 0
        self.expires_in = 300
        self.use_access_token = False
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        port = free_port()
        self.realm = f"http://127.0.0.1:{port}/token"
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                issuer._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def sign(self, claims: dict[str, Any]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        sig = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(sig)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        q = parse_qs(urlsplit(h.path).query)
        user = None
        authz = h.headers.get("Authorization", "")
        if authz.startswith("Basic "):
            u, _, p = base64.b64decode(authz[6:]).decode().partition(":")
            if (u, p) != (USER, PASSWORD):
                body = b'{"details":"incorrect username or password"}'
                h.send_response(401)
                h.send_header("Content-Type", "application/json")
                h.send_header("Content-Length", str(len(body)))
                h.end_headers()
                h.wfile.write(body)
                return
            user = u
        access = []
        for scope in q.get("scope", []):
            for item in scope.split(" "):
                typ, _, rest = item.partition(":")
                repo, _, actions = rest.rpartition(":")
                wanted = [a for a in actions.split(",") if a]
                if user is None:
                    granted = ["pull"] if repo.startswith("pub/") and "pull" in wanted else []
                else:
                    granted = wanted
                access.append({"type": typ, "name": repo, "actions": granted})
        now = int(time.time())
        with self.lock:
            expired = self.expire_next > 0
            if expired:
                self.expire_next -= 1
            self.requests.append({"user": user, "scope": q.get("scope", []), "expired": expired})
        exp = now - 600 if expired else now + self.expires_in
        claims = {
            "iss": self.ISSUER,
            "sub": user or "",
            "aud": self.SERVICE,
            "exp": exp,
            "nbf": now - 700 if expired else now - 10,
            "iat": now - 700 if expired else now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        token = self.sign(claims)
        key = "access_token" if self.use_access_token else "token"
        body = json.dumps({key: token, "expires_in": self.expires_in}).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


@dataclass
class TokenSetup:
    registry: RegistryProc
    issuer: TokenIssuer


# -- test images --------------------------------------------------------------------------


@dataclass
class Blob:
    data: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}


@dataclass
class SampleImage:
    config: Blob
    layers: list[Blob]
    manifest: bytes
    media_type: str
    diff_ids: list[str]

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()

    def blobs(self) -> list[Blob]:
        return [*self.layers, self.config]


def layer_tar(files: dict[str, bytes], *, with_busybox: bool = False) -> bytes:
    """A plain tar with fixed metadata (reproducible bytes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(Path(p).parent) for p in files} - {"."})
        if with_busybox:
            dirs = sorted({*dirs, "bin"})
        for d in dirs:
            ti = tarfile.TarInfo(d)
            ti.type = tarfile.DIRTYPE
            ti.mode = 0o755
            ti.mtime = 1700000000
            tar.addfile(ti)
        if with_busybox:
            data = Path("/bin/busybox").read_bytes()
            ti = tarfile.TarInfo("bin/busybox")
            ti.size, ti.mode, ti.mtime = len(data), 0o755, 1700000000
            tar.addfile(ti, io.BytesIO(data))
            for link in ("sh", "ls", "cat", "echo"):
                ti = tarfile.TarInfo(f"bin/{link}")
                ti.type, ti.linkname, ti.mtime = tarfile.SYMTYPE, "busybox", 1700000000
                tar.addfile(ti)
        for name, content in sorted(files.items()):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(content), 0o644, 1700000000
            tar.addfile(ti, io.BytesIO(content))
    return buf.getvalue()


def make_image(
    layers: list[bytes],
    *,
    oci: bool = False,
    compression: str = "gzip",
    architecture: str = "amd64",
    variant: str | None = None,
) -> SampleImage:
    """An image from plain tars: compressed as asked, config with diff_ids, a manifest."""
    blobs = []
    for tar in layers:
        if compression == "gzip":
            data = gzip.compress(tar, mtime=0)
            mtype = (
                "application/vnd.oci.image.layer.v1.tar+gzip"
                if oci
                else "application/vnd.docker.image.rootfs.diff.tar.gzip"
            )
        elif compression == "zstd":
            import zstandard

            data = zstandard.ZstdCompressor().compress(tar)
            mtype = "application/vnd.oci.image.layer.v1.tar+zstd"
        else:
            data = tar
            mtype = (
                "application/vnd.oci.image.layer.v1.tar"
                if oci
                else "application/vnd.docker.image.rootfs.diff.tar"
            )
        blobs.append(Blob(data, mtype))
    diff_ids = ["sha256:" + hashlib.sha256(t).hexdigest() for t in layers]
    cfg: dict[str, Any] = {
        "architecture": architecture,
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
    }
    if variant:
        cfg["variant"] = variant
    config = Blob(
        json.dumps(cfg, separators=(",", ":")).encode(),
        "application/vnd.oci.image.config.v1+json"
        if oci
        else "application/vnd.docker.container.image.v1+json",
    )
    mtype = (
        "application/vnd.oci.image.manifest.v1+json"
        if oci
        else "application/vnd.docker.distribution.manifest.v2+json"
    )
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mtype,
            "config": config.descriptor(),
            "layers": [b.descriptor() for b in blobs],
        },
        indent=3,  # not our own serialisation: the digest must survive a round trip
    ).encode()
    return SampleImage(config, blobs, manifest, mtype, diff_ids)


def make_index(children: list[tuple[SampleImage, str, str | None]], *, oci: bool) -> bytes:
    mtype = (
        "application/vnd.oci.image.index.v1+json"
        if oci
        else "application/vnd.docker.distribution.manifest.list.v2+json"
    )
    entries = []
    for img, arch, variant in children:
        platform: dict[str, str] = {"architecture": arch, "os": "linux"}
        if variant:
            platform["variant"] = variant
        entries.append(
            {
                "mediaType": img.media_type,
                "digest": img.digest,
                "size": len(img.manifest),
                "platform": platform,
            }
        )
    return json.dumps({"schemaVersion": 2, "mediaType": mtype, "manifests": entries}).encode()


def raw_push(host: str, repo: str, tag: str, img: SampleImage, *, auth: str | None = None) -> None:
    """Push with urllib, independent of the code under test (POST then PUT per blob)."""
    headers = {"Authorization": auth} if auth else {}
    for blob in img.blobs():
        req = urllib.request.Request(
            f"http://{host}/v2/{repo}/blobs/uploads/", method="POST", headers=headers
        )
        with urllib.request.urlopen(req) as r:
            loc = r.headers["Location"]
        if loc.startswith("/"):
            loc = f"http://{host}{loc}"
        sep = "&" if "?" in loc else "?"
        req = urllib.request.Request(
            f"{loc}{sep}digest={blob.digest}",
            data=blob.data,
            method="PUT",
            headers={**headers, "Content-Type": "application/octet-stream"},
        )
        urllib.request.urlopen(req).close()
    raw_put_manifest(host, repo, tag, img.manifest, img.media_type, auth=auth)


def raw_put_manifest(
    host: str, repo: str, ref: str, data: bytes, media_type: str, *, auth: str | None = None
) -> None:
    headers = {"Content-Type": media_type}
    if auth:
        headers["Authorization"] = auth
    req = urllib.request.Request(
        f"http://{host}/v2/{repo}/manifests/{ref}", data=data, method="PUT", headers=headers
    )
    urllib.request.urlopen(req).close()


# -- fixtures (a plugin: test modules list this module in pytest_plugins) ----------


@pytest.fixture(scope="session")
def registry_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("registries")


@pytest.fixture(scope="session")
def plain_registry(registry_base: Path) -> Iterator[RegistryProc]:
    reg = start_registry(registry_base, "plain")
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def basic_registry(registry_base: Path) -> Iterator[RegistryProc]:
    require_binary("htpasswd")
    d = registry_base / "basic-auth"
    d.mkdir()
    htpasswd = d / "htpasswd"
    out = subprocess.run(
        ["htpasswd", "-Bbn", USER, PASSWORD], capture_output=True, check=True, text=True
    )
    htpasswd.write_text(out.stdout)
    reg = start_registry(
        registry_base,
        "basic",
        f"auth:\n  htpasswd:\n    realm: test-realm\n    path: {htpasswd}\n",
    )
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture(scope="session")
def token_registry(registry_base: Path) -> Iterator[TokenSetup]:
    d = registry_base / "token-auth"
    d.mkdir()
    issuer = TokenIssuer(d)
    try:
        reg = start_registry(
            registry_base,
            "token",
            "auth:\n  token:\n"
            f"    realm: {issuer.realm}\n"
            f"    service: {TokenIssuer.SERVICE}\n"
            f"    issuer: {TokenIssuer.ISSUER}\n"
            f"    rootcertbundle: {issuer.cert_path}\n",
        )
        try:
            yield TokenSetup(reg, issuer)
        finally:
            reg.stop()
    finally:
        issuer.close()


@pytest.fixture(scope="session")
def busybox_image() -> SampleImage:
    return make_image(
        [
            layer_tar({"etc/hello.txt": b"hello\n"}, with_busybox=True),
            layer_tar({"data/one.txt": b"one\n" * 1000, "data/two.txt": b"two\n"}),
        ]
    )


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private DOCKER_CONFIG dir (never the user's ~/.docker)."""
    d = tmp_path / "docker-config"
    monkeypatch.setenv("DOCKER_CONFIG", str(d))
    return d / "config.json"


# -- fault injection ----------------------------------------------------------------------


class FakeResponse:
    """A canned answer (for 429 / 401 / 503 injections)."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes, url: str) -> None:
        from overunder.registry.transport import Headers

        self.status = status
        self.reason = "injected"
        self.headers = Headers(list(headers.items()))
        self.url = url
        self._body = io.BytesIO(body)

    def read(self, n: int = -1) -> bytes:
        return self._body.read(n)

    def readinto(self, buf: memoryview) -> int:
        return self._body.readinto(buf)

    def close(self) -> None:
        pass

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class WrappedResponse:
    """A real answer whose body is corrupted or cut off."""

    def __init__(self, inner: Any, *, corrupt_at: int | None, drop_after: int | None) -> None:
        self._inner = inner
        self.status = inner.status
        self.reason = inner.reason
        self.headers = inner.headers
        self.url = inner.url
        self._pos = 0
        self._corrupt_at = corrupt_at
        self._drop_after = drop_after

    def read(self, n: int = -1) -> bytes:
        buf = bytearray(n if n > 0 else 1 << 20)
        got = self.readinto(memoryview(buf))
        return bytes(buf[:got])

    def readinto(self, buf: memoryview) -> int:
        from overunder.registry.transport import ConnectionDropped

        if self._drop_after is not None:
            if self._pos >= self._drop_after:
                self._inner.close()
                raise ConnectionDropped("injected: connection dropped mid-body")
            buf = buf[: self._drop_after - self._pos]
        got: int = self._inner.readinto(buf)
        if self._corrupt_at is not None and self._pos <= self._corrupt_at < self._pos + got:
            i = self._corrupt_at - self._pos
            buf[i] = buf[i] ^ 0xFF
        self._pos += got
        return got

    def close(self) -> None:
        self._inner.close()

    def __enter__(self) -> WrappedResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FaultTransport:
    """Wraps the real transport; each injection fires a set number of times on requests whose
    method and URL match. ``log`` records every request (method, url, headers)."""

    def __init__(self) -> None:
        from overunder.registry.transport import HTTPTransport

        self.inner = HTTPTransport(timeout=10)
        self.log: list[tuple[str, str, dict[str, str]]] = []
        self.statuses: list[list[Any]] = []  # [method, url part, status, headers, times]
        self.bodies: list[list[Any]] = []  # [url part, corrupt_at, drop_after, times]
        self.lock = threading.Lock()

    def fail_with(
        self, method: str, part: str, status: int, headers: dict[str, str], times: int = 1
    ) -> None:
        self.statuses.append([method, part, status, headers, times])

    def mangle(
        self, part: str, *, corrupt_at: int | None = None, drop_after: int | None = None
    ) -> None:
        self.bodies.append([part, corrupt_at, drop_after, 1])

    def request(self, method: str, url: str, *, headers: Any = None, body: Any = None) -> Any:
        with self.lock:
            self.log.append((method, url, dict(headers or {})))
            for rule in self.statuses:
                if rule[4] > 0 and rule[0] == method and rule[1] in url:
                    rule[4] -= 1
                    return FakeResponse(rule[2], rule[3], b'{"errors":[]}', url)
            mangle = None
            if method == "GET":
                for rule in self.bodies:
                    if rule[3] > 0 and rule[0] in url:
                        rule[3] -= 1
                        mangle = rule
                        break
        resp = self.inner.request(method, url, headers=headers, body=body)
        if mangle is not None:
            return WrappedResponse(resp, corrupt_at=mangle[1], drop_after=mangle[2])
        return resp

    def close(self) -> None:
        self.inner.close()

    def requests(self, method: str, part: str) -> list[dict[str, str]]:
        return [h for m, u, h in self.log if m == method and part in u]


def access_lines(reg: RegistryProc) -> list[tuple[str, str, int]]:
    """(method, path, status) of every request in the registry's access log."""
    import re

    out = []
    for m in re.finditer(
        r'"(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) HTTP/[\d.]+" (\d+)', reg.access_log()
    ):
        out.append((m.group(1), m.group(2), int(m.group(3))))
    return out


def basic_header(user: str = USER, password: str = PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
