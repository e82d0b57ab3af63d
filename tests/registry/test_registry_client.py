"""The registry client and the pull half against a real distribution registry on 127.0.0.1:
manifests (Docker, OCI, lists, indexes), blobs into the content store, faults, auth."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import pytest
from registry_helpers import (
    FaultTransport,
    RegistryProc,
    SampleImage,
    TokenSetup,
    basic_header,
    layer_tar,
    make_image,
    make_index,
    raw_push,
    raw_put_manifest,
)

from overunder.content import ContentStore
from overunder.errors import IntegrityError, NotFound, RegistryError
from overunder.registry.client import RegistryClient, RetryPolicy
from overunder.registry.config import Credentials
from overunder.registry.pull import PlatformSpec, Puller, parse_platform

# The registries and images are session fixtures of this plugin module (one registry of
# each kind for the whole run; a conftest.py here would shadow tests/conftest.py).
pytest_plugins = ["registry_helpers"]
pytestmark = pytest.mark.registry

FAST = RetryPolicy(attempts=4, base_delay=0.0, sleep=lambda s: None)
_seq = itertools.count()


def repo(prefix: str = "t/img") -> str:
    return f"{prefix}{next(_seq)}"


def pull_into(
    store: ContentStore, client: RegistryClient, name: str, ref: str, platform: str | None = None
) -> tuple[str, list[str]]:
    """Resolve, fetch config and layers; returns (manifest digest, layer digests)."""
    with Puller(client, store) as p:
        r = p.resolve(name, ref, platform=parse_platform(platform) if platform else None)
        p.fetch_config(r)
        for f in p.fetch_blobs(name, r.parsed.layers):
            f.result()
        p.store_manifests(r)
        return r.manifest.digest, [d.digest for d in r.parsed.layers]


def assert_stored(store: ContentStore, img: SampleImage) -> None:
    for blob in img.blobs():
        assert store.read(blob.digest) == blob.data
    assert store.read(img.digest) == img.manifest


def test_ping_and_manifest(plain_registry: RegistryProc, busybox_image: SampleImage) -> None:
    name = repo()
    raw_push(plain_registry.host, name, "1", busybox_image)
    with RegistryClient(plain_registry.host) as c:
        assert c.ping() == 200
        assert c.scheme == "http"
        m = c.get_manifest(name, "1")
        assert m.digest == busybox_image.digest
        assert m.data == busybox_image.manifest
        head = c.head_manifest(name, "1")
        assert head is not None
        assert head.digest == busybox_image.digest
        assert c.head_manifest(name, "nope") is None
        with pytest.raises(NotFound, match="manifest unknown"):
            c.get_manifest(name, "nope")


@pytest.mark.parametrize("oci", [False, True], ids=["docker", "oci"])
def test_pull_by_tag_and_digest(plain_registry: RegistryProc, tmp_path: Path, oci: bool) -> None:
    img = make_image([layer_tar({"a.txt": b"a" * 5000}), layer_tar({"b.txt": b"b"})], oci=oci)
    name = repo()
    raw_push(plain_registry.host, name, "v1", img)
    store = ContentStore(tmp_path / "content")
    with RegistryClient(plain_registry.host) as c:
        digest, _ = pull_into(store, c, name, "v1")
        assert digest == img.digest
        assert_stored(store, img)
        store2 = ContentStore(tmp_path / "content2")
        digest2, _ = pull_into(store2, c, name, img.digest)
        assert digest2 == img.digest
        assert_stored(store2, img)


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_zstd_and_uncompressed_layers(
    plain_registry: RegistryProc, tmp_path: Path, compression: str
) -> None:
    img = make_image([layer_tar({"z.txt": b"z" * 10000})], oci=True, compression=compression)
    name = repo()
    raw_push(plain_registry.host, name, "1", img)
    store = ContentStore(tmp_path / "c")
    with RegistryClient(plain_registry.host) as c:
        pull_into(store, c, name, "1")
    assert_stored(store, img)


@pytest.mark.parametrize("oci", [False, True], ids=["manifest-list", "oci-index"])
def test_index_picks_platform(plain_registry: RegistryProc, tmp_path: Path, oci: bool) -> None:
    amd = make_image([layer_tar({"arch": b"amd64\n"})], oci=oci)
    arm = make_image([layer_tar({"arch": b"arm64\n"})], oci=oci, architecture="arm64", variant="v8")
    name = repo("t/multi")
    raw_push(plain_registry.host, name, "amd", amd)
    raw_push(plain_registry.host, name, "arm", arm)
    index = make_index([(amd, "amd64", None), (arm, "arm64", "v8")], oci=oci)
    mtype = (
        "application/vnd.oci.image.index.v1+json"
        if oci
        else "application/vnd.docker.distribution.manifest.list.v2+json"
    )
    raw_put_manifest(plain_registry.host, name, "1", index, mtype)
    index_digest = "sha256:" + hashlib.sha256(index).hexdigest()
    with RegistryClient(plain_registry.host) as c:
        store = ContentStore(tmp_path / "a")
        with Puller(c, store) as p:
            r = p.resolve(name, "1", platform=PlatformSpec("linux", "amd64"))
            assert r.digest == index_digest
            assert r.manifest.digest == amd.digest
            r = p.resolve(name, "1", platform=parse_platform("linux/arm64"))
            assert r.manifest.digest == arm.digest
            r = p.resolve(name, "1", platform=parse_platform("linux/arm64/v8"))
            assert r.manifest.digest == arm.digest
            with pytest.raises(
                NotFound, match=r"linux/s390x.*available: linux/amd64, linux/arm64/v8"
            ):
                p.resolve(name, "1", platform=parse_platform("linux/s390x"))
            with pytest.raises(NotFound, match="linux/arm64/v7"):
                p.resolve(name, "1", platform=parse_platform("linux/arm64/v7"))


def test_corrupt_blob_is_refused_and_nothing_stored(
    plain_registry: RegistryProc, tmp_path: Path, busybox_image: SampleImage
) -> None:
    name = repo()
    raw_push(plain_registry.host, name, "1", busybox_image)
    layer = busybox_image.layers[0]
    ft = FaultTransport()
    ft.mangle(layer.digest, corrupt_at=1000)
    store = ContentStore(tmp_path / "c")
    with (
        RegistryClient(plain_registry.host, transport=ft, retry=FAST) as c,
        pytest.raises(IntegrityError, match=layer.digest),
    ):
        pull_into(store, c, name, "1")
    ft.close()
    assert not store.has(layer.digest)
    with store.writer(ref=f"pull-{layer.digest}") as w:  # nothing kept to resume from
        assert w.offset == 0
        w.abort()


def test_corrupt_manifest_is_refused(
    plain_registry: RegistryProc, busybox_image: SampleImage
) -> None:
    name = repo()
    raw_push(plain_registry.host, name, "1", busybox_image)
    ft = FaultTransport()
    ft.mangle(f"/manifests/{busybox_image.digest}", corrupt_at=40)
    with (
        RegistryClient(plain_registry.host, transport=ft, retry=FAST) as c,
        pytest.raises(IntegrityError, match="registry sent content with digest"),
    ):
        c.get_manifest(name, busybox_image.digest)


def test_429_then_success(
    plain_registry: RegistryProc, tmp_path: Path, busybox_image: SampleImage
) -> None:
    name = repo()
    raw_push(plain_registry.host, name, "1", busybox_image)
    ft = FaultTransport()
    ft.fail_with("GET", "/manifests/", 429, {"Retry-After": "0"}, times=2)
    ft.fail_with("GET", f"/blobs/{busybox_image.layers[0].digest}", 503, {}, times=1)
    slept: list[float] = []
    retry = RetryPolicy(attempts=4, base_delay=0.01, sleep=slept.append)
    store = ContentStore(tmp_path / "c")
    with RegistryClient(plain_registry.host, transport=ft, retry=retry) as c:
        pull_into(store, c, name, "1")
    assert_stored(store, busybox_image)
    assert len(ft.requests("GET", "/manifests/")) == 3
    assert len(slept) == 3
    assert slept[0] == 0.0  # Retry-After honoured


def test_429_gives_up_with_a_clear_error(plain_registry: RegistryProc) -> None:
    ft = FaultTransport()
    ft.fail_with("GET", "/manifests/", 429, {"Retry-After": "0"}, times=10)
    with (
        RegistryClient(plain_registry.host, transport=ft, retry=FAST) as c,
        pytest.raises(RegistryError, match="too many requests"),
    ):
        c.get_manifest("t/x", "1")


def test_drop_mid_blob_resumes_with_range(plain_registry: RegistryProc, tmp_path: Path) -> None:
    big = layer_tar({"r.bin": hashlib.sha512(b"x").digest() * 40000})
    img = make_image([big], compression="none")
    name = repo()
    raw_push(plain_registry.host, name, "1", img)
    layer = img.layers[0]
    ft = FaultTransport()
    ft.mangle(f"/blobs/{layer.digest}", drop_after=300_000)
    store = ContentStore(tmp_path / "c")
    with RegistryClient(plain_registry.host, transport=ft, retry=FAST) as c:
        pull_into(store, c, name, "1")
    assert_stored(store, img)
    gets = ft.requests("GET", f"/blobs/{layer.digest}")
    assert len(gets) == 2
    assert "Range" not in gets[0]
    assert gets[1]["Range"] == f"bytes=300000-{len(layer.data) - 1}"


def test_resume_of_an_earlier_interrupted_ingest(
    plain_registry: RegistryProc, tmp_path: Path
) -> None:
    img = make_image([layer_tar({"r.bin": b"q" * 200_000})], compression="none")
    name = repo()
    raw_push(plain_registry.host, name, "1", img)
    layer = img.layers[0]
    store = ContentStore(tmp_path / "c")
    # A previous process got 1000 bytes and died.
    with store.writer(ref=f"pull-{layer.digest}") as w:
        w.write(layer.data[:1000])
    ft = FaultTransport()
    with RegistryClient(plain_registry.host, transport=ft, retry=FAST) as c:
        pull_into(store, c, name, "1")
    assert store.read(layer.digest) == layer.data
    (get,) = ft.requests("GET", f"/blobs/{layer.digest}")
    assert get["Range"] == f"bytes=1000-{len(layer.data) - 1}"


def test_basic_auth(
    basic_registry: RegistryProc, tmp_path: Path, busybox_image: SampleImage
) -> None:
    name = repo()
    raw_push(basic_registry.host, name, "1", busybox_image, auth=basic_header())
    with (
        RegistryClient(basic_registry.host, retry=FAST) as c,
        pytest.raises(RegistryError, match="unauthorized"),
    ):
        c.get_manifest(name, "1")
    bad = Credentials("tester", "wrong")
    with RegistryClient(basic_registry.host, credentials=bad, retry=FAST) as c:
        with pytest.raises(RegistryError, match="unauthorized"):
            c.get_manifest(name, "1")
        with pytest.raises(RegistryError, match="incorrect username or password"):
            c.check_login()
    good = Credentials("tester", "testpw")
    with RegistryClient(basic_registry.host, credentials=good) as c:
        c.check_login()
        pull_into(ContentStore(tmp_path / "c"), c, name, "1")


def test_token_auth(token_registry: TokenSetup, tmp_path: Path, busybox_image: SampleImage) -> None:
    reg, issuer = token_registry.registry, token_registry.issuer
    good = Credentials("tester", "testpw")
    name = repo()
    with RegistryClient(reg.host, credentials=good) as c:
        c.check_login()
        from overunder.registry.push import Pusher

        store = ContentStore(tmp_path / "src")
        for b in busybox_image.blobs():
            store.put(b.data)
        from overunder.image.manifest import parse_manifest

        m = parse_manifest(busybox_image.manifest)
        Pusher(c, store).push(
            name,
            "1",
            manifest=busybox_image.manifest,
            media_type=busybox_image.media_type,
            config=m.config,
            layers=m.layers,
        )
    # Anonymous: the issuer grants nothing outside pub/.
    with (
        RegistryClient(reg.host, retry=FAST) as c,
        pytest.raises(RegistryError, match="unauthorized"),
    ):
        c.get_manifest(name, "1")
    with (
        RegistryClient(reg.host, credentials=Credentials("tester", "nope"), retry=FAST) as c,
        pytest.raises(RegistryError, match=r"token service .* refused"),
    ):
        c.get_manifest(name, "1")
    issuer.use_access_token = True
    try:
        with RegistryClient(reg.host, credentials=good) as c:
            digest, _ = pull_into(ContentStore(tmp_path / "c"), c, name, "1")
            assert digest == busybox_image.digest
    finally:
        issuer.use_access_token = False


def test_expired_token_is_renewed_after_401(
    token_registry: TokenSetup, tmp_path: Path, busybox_image: SampleImage
) -> None:
    reg, issuer = token_registry.registry, token_registry.issuer
    name = "pub/" + repo("expired")
    raw_push(reg.host, name, "1", busybox_image, auth=_push_token(token_registry, name))
    before = len(issuer.requests)
    issuer.expire_next = 1
    with RegistryClient(reg.host) as c:
        digest, _ = pull_into(ContentStore(tmp_path / "c"), c, name, "1")
    assert digest == busybox_image.digest
    reqs = issuer.requests[before:]
    assert reqs[0]["expired"]
    assert not reqs[1]["expired"]
    assert len(reqs) == 2  # one renewal, then the token is reused for every blob


def test_token_renewed_when_it_expires(
    token_registry: TokenSetup, busybox_image: SampleImage
) -> None:
    reg, issuer = token_registry.registry, token_registry.issuer
    name = "pub/" + repo("clock")
    raw_push(reg.host, name, "1", busybox_image, auth=_push_token(token_registry, name))
    now = [1000.0]
    with RegistryClient(reg.host, clock=lambda: now[0]) as c:
        c.get_manifest(name, "1")
        c.get_manifest(name, "1")
        assert c.auth.token_requests == 1
        now[0] += issuer.expires_in + 1
        c.get_manifest(name, "1")
        assert c.auth.token_requests == 2


def _push_token(setup: TokenSetup, name: str) -> str:
    import json
    import time
    import uuid

    now = int(time.time())
    token = setup.issuer.sign(
        {
            "iss": setup.issuer.ISSUER,
            "sub": "tester",
            "aud": setup.issuer.SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": [{"type": "repository", "name": name, "actions": ["pull", "push"]}],
        }
    )
    assert json.dumps(token)
    return f"Bearer {token}"


def test_blob_redirect_followed_without_authorization(
    plain_registry: RegistryProc, tmp_path: Path, busybox_image: SampleImage
) -> None:
    """A 307 to another host (a CDN): followed, and the registry's credentials stay home."""
    name = repo()
    raw_push(plain_registry.host, name, "1", busybox_image)
    layer = busybox_image.layers[1]
    port = plain_registry.host.rsplit(":", 1)[1]
    other = f"http://localhost:{port}/v2/{name}/blobs/{layer.digest}"
    ft = FaultTransport()
    ft.fail_with(
        "GET", f"127.0.0.1:{port}/v2/{name}/blobs/{layer.digest}", 307, {"Location": other}
    )
    store = ContentStore(tmp_path / "c")
    with RegistryClient(plain_registry.host, transport=ft, credentials=Credentials("u", "p")) as c:
        c.auth.challenge = None
        pull_into(store, c, name, "1")
    assert store.read(layer.digest) == layer.data
    (followed,) = ft.requests("GET", f"localhost:{port}/")
    assert "Authorization" not in followed


def test_keep_alive_reuses_one_connection(
    plain_registry: RegistryProc, busybox_image: SampleImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answers read to the end, error documents included, give their connection back."""
    import http.client

    name = repo()
    raw_push(plain_registry.host, name, "1", busybox_image)
    opened: list[int] = []
    orig = http.client.HTTPConnection.connect

    def counting(self: http.client.HTTPConnection) -> None:
        opened.append(1)
        orig(self)

    monkeypatch.setattr(http.client.HTTPConnection, "connect", counting)
    with RegistryClient(plain_registry.host) as c:
        for _ in range(3):
            c.get_manifest(name, "1")
            c.head_manifest(name, "1")
            assert c.blob_size(name, "sha256:" + "0" * 64) is None
            with pytest.raises(NotFound):
                c.get_manifest(name, "nope")
    assert len(opened) == 1


def test_injected_401_mid_pull_renews_the_token(
    token_registry: TokenSetup, tmp_path: Path, busybox_image: SampleImage
) -> None:
    """A registry that stops accepting a token (revoked, expired early) answers 401 with a
    fresh challenge: the client fetches a new token once and carries on."""
    reg, issuer = token_registry.registry, token_registry.issuer
    name = "pub/" + repo("revoked")
    raw_push(reg.host, name, "1", busybox_image, auth=_push_token(token_registry, name))
    challenge = (
        f'Bearer realm="{issuer.realm}",service="{issuer.SERVICE}",'
        f'scope="repository:{name}:pull",error="invalid_token"'
    )
    ft = FaultTransport()
    ft.fail_with(
        "GET", f"/blobs/{busybox_image.layers[0].digest}", 401, {"WWW-Authenticate": challenge}
    )
    with RegistryClient(reg.host, transport=ft, retry=FAST) as c:
        digest, _ = pull_into(ContentStore(tmp_path / "c"), c, name, "1")
        assert digest == busybox_image.digest
        assert c.auth.token_requests == 2
    ft.close()
    auths = [
        h.get("Authorization", "")
        for h in ft.requests("GET", f"/blobs/{busybox_image.layers[0].digest}")
    ]
    assert len(auths) == 2
    assert auths[0] != auths[1]
    assert all(a.startswith("Bearer ") for a in auths)
