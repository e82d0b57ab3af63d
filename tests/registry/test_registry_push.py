"""Push against a real registry: monolithic and chunked uploads, cross-repository mounts,
HEAD skips, and the digest kept over a pull → push round trip."""

from __future__ import annotations

import itertools
import json
import os
import stat
from pathlib import Path

import pytest
from registry_helpers import RegistryProc, access_lines, layer_tar, make_image, raw_push

from overunder.content import ContentStore
from overunder.image.manifest import parse_manifest
from overunder.registry.client import RegistryClient
from overunder.registry.config import Credentials, DockerConfig
from overunder.registry.pull import Puller
from overunder.registry.push import Pusher

# The registries and images are session fixtures of this plugin module (one registry of
# each kind for the whole run; a conftest.py here would shadow tests/conftest.py).
pytest_plugins = ["registry_helpers"]
pytestmark = pytest.mark.registry
_seq = itertools.count()


def _pull(store: ContentStore, c: RegistryClient, name: str, ref: str) -> str:
    with Puller(c, store) as p:
        r = p.resolve(name, ref)
        p.fetch_config(r)
        for f in p.fetch_blobs(name, r.parsed.layers):
            f.result()
        p.store_manifests(r)
        return r.manifest.digest


def _push(
    store: ContentStore, c: RegistryClient, digest: str, name: str, tag: str, **kw: object
) -> tuple[str, list[str]]:
    data = store.read(digest)
    m = parse_manifest(data)
    got, results = Pusher(c, store, chunk_size=kw.pop("chunk_size", None)).push(  # type: ignore[arg-type]
        name,
        tag,
        manifest=data,
        media_type=m.media_type,
        config=m.config,
        layers=m.layers,
        **kw,  # type: ignore[arg-type]
    )
    return got, [r.how for r in results]


def test_round_trip_keeps_digest_then_skips_and_mounts(
    plain_registry: RegistryProc, tmp_path: Path
) -> None:
    n = next(_seq)
    img = make_image([layer_tar({"f": b"x" * 3000}), layer_tar({"g": b"y"})], oci=True)
    src, dst, third = f"t/src{n}", f"t/dst{n}", f"t/third{n}"
    raw_push(plain_registry.host, src, "1", img)
    store = ContentStore(tmp_path / "c")
    with RegistryClient(plain_registry.host) as c:
        digest = _pull(store, c, src, "1")
        got, hows = _push(store, c, digest, dst, "2")
        assert got == img.digest
        assert hows == ["pushed", "pushed", "pushed"]
        assert c.get_manifest(dst, "2").data == img.manifest
        # Again: HEAD finds every blob.
        _, hows = _push(store, c, digest, dst, "3")
        assert hows == ["exists", "exists", "exists"]
        # Another repo, mounting from the source repo.
        _, hows = _push(store, c, digest, third, "1", mount_from=src)
        assert hows == ["mounted", "mounted", "mounted"]
    mounts = [
        s
        for m, p, s in access_lines(plain_registry)
        if m == "POST" and "mount=" in p and f"/v2/{third}/" in p
    ]
    assert mounts == [201, 201, 201]
    # And the pushed copies pull back intact.
    with RegistryClient(plain_registry.host) as c:
        assert _pull(ContentStore(tmp_path / "d"), c, third, "1") == img.digest


def test_mount_falls_back_to_upload(plain_registry: RegistryProc, tmp_path: Path) -> None:
    n = next(_seq)
    img = make_image([layer_tar({"only-here": os.urandom(100)})])
    store = ContentStore(tmp_path / "c")
    for b in img.blobs():
        store.put(b.data)
    store.put(img.manifest)
    with RegistryClient(plain_registry.host) as c:
        got, hows = _push(store, c, img.digest, f"t/fb{n}", "1", mount_from="t/nothing-here")
    assert got == img.digest
    assert hows == ["pushed", "pushed"]


def test_chunked_upload_in_order(plain_registry: RegistryProc, tmp_path: Path) -> None:
    n = next(_seq)
    img = make_image([layer_tar({"big": os.urandom(300_000)})], compression="none")
    store = ContentStore(tmp_path / "c")
    for b in img.blobs():
        store.put(b.data)
    store.put(img.manifest)
    name = f"t/chunk{n}"
    with RegistryClient(plain_registry.host) as c:
        got, hows = _push(store, c, img.digest, name, "1", chunk_size=65536)
        assert got == img.digest
        assert hows == ["pushed", "pushed"]
        assert _pull(ContentStore(tmp_path / "back"), c, name, "1") == img.digest
    patches = [
        s for m, p, s in access_lines(plain_registry) if m == "PATCH" and f"/v2/{name}/" in p
    ]
    size = len(img.layers[0].data)
    assert len(patches) == -(-size // 65536)
    assert set(patches) == {202}


def test_docker_config_file_format_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"auths": {}, "HttpHeaders": {"X-Keep": "me"}}))
    cfg = DockerConfig(path)
    cfg.store("127.0.0.1:5000", Credentials("tester", "testpw"))
    cfg.store("docker.io", Credentials("hubuser", "s3cret:with:colons"))
    doc = json.loads(path.read_text())
    assert doc["HttpHeaders"] == {"X-Keep": "me"}
    assert doc["auths"]["127.0.0.1:5000"] == {"auth": "dGVzdGVyOnRlc3Rwdw=="}
    assert "https://index.docker.io/v1/" in doc["auths"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = DockerConfig(path)
    assert again.get("http://127.0.0.1:5000/v2/") == Credentials("tester", "testpw")
    assert again.get("registry-1.docker.io") == Credentials("hubuser", "s3cret:with:colons")
    assert again.get("other:1").empty
    assert again.erase("127.0.0.1:5000")
    assert not again.erase("127.0.0.1:5000")
    assert "127.0.0.1:5000" not in json.loads(path.read_text())["auths"]
    assert list(path.parent.iterdir()) == [path]  # no temp files left


def test_credential_helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    store = tmp_path / "helper-store.json"
    helper = bindir / "docker-credential-fake"
    helper.write_text(
        "#!/usr/bin/env python3\n"
        "import json, sys\n"
        f"path = {str(store)!r}\n"
        "try:\n    db = json.load(open(path))\nexcept FileNotFoundError:\n    db = {}\n"
        "action = sys.argv[1]\ndata = sys.stdin.read()\n"
        "if action == 'store':\n"
        "    d = json.loads(data); db[d['ServerURL']] = d; json.dump(db, open(path, 'w'))\n"
        "elif action == 'get':\n"
        "    if data.strip() not in db:\n"
        "        print('credentials not found in native keychain'); sys.exit(1)\n"
        "    print(json.dumps(db[data.strip()]))\n"
        "elif action == 'erase':\n"
        "    db.pop(data.strip(), None); json.dump(db, open(path, 'w'))\n"
    )
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"credsStore": "fake", "auths": {}}))
    cfg = DockerConfig(path)
    where = cfg.store("127.0.0.1:5000", Credentials("tester", "testpw"))
    assert "docker-credential-fake" in where
    doc = json.loads(path.read_text())
    assert doc["auths"] == {"127.0.0.1:5000": {}}  # no secret in the file
    assert json.loads(store.read_text())["127.0.0.1:5000"]["Secret"] == "testpw"
    assert DockerConfig(path).get("127.0.0.1:5000") == Credentials("tester", "testpw")
    assert DockerConfig(path).get("elsewhere:1").empty
    # credHelpers wins over credsStore; a helper that is not installed falls back to auths.
    path.write_text(
        json.dumps(
            {
                "credsStore": "fake",
                "credHelpers": {"h:1": "missing"},
                "auths": {"h:1": {"auth": "dTpwdw=="}},
            }
        )
    )
    assert DockerConfig(path).get("h:1") == Credentials("u", "pw")
    assert DockerConfig(path).erase("127.0.0.1:5000")
    assert "127.0.0.1:5000" not in json.loads(store.read_text())
