from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest

from image_fixtures import (
    base_layer,
    data_layer,
    make_image,
    sha,
    whiteout_layer,
    write_docker_archive,
    write_oci_layout,
)
from overunder.engine import image_load, image_save, images
from overunder.engine.paths import EnginePaths
from overunder.errors import IntegrityError, InvalidArgument, NotFound


@pytest.fixture
def paths(tmp_path: Path) -> EnginePaths:
    return EnginePaths(root=tmp_path / "root", run_root=tmp_path / "run")


def _three_layer():  # type: ignore[no-untyped-def]
    return make_image([base_layer(), data_layer(), whiteout_layer()], ["demo/fixture:1"])


def test_load_docker_archive_unpacks_and_records(paths: EnginePaths, tmp_path: Path) -> None:
    img = _three_layer()
    tar = tmp_path / "img.tar"
    write_docker_archive(tar, [img])
    loaded = image_load.load(paths, tar)
    assert [li.lines() for li in loaded] == [["Loaded image: demo/fixture:1"]]
    s = images.stores(paths)
    rec = s.images.resolve("demo/fixture:1")
    assert rec.id == img.id
    dirs = images.layer_dirs(s, images.load_config(s, rec.id))
    assert (dirs[0] / "bin/busybox").is_file()
    assert (dirs[1] / "data/a.txt").read_bytes() == b"a\n"
    gone = dirs[2] / "data/gone.txt"
    if os.geteuid() == 0:
        st = os.lstat(gone)
        assert stat.S_ISCHR(st.st_mode)
        assert st.st_rdev == 0
        assert os.getxattr(dirs[2] / "data/opq", "trusted.overlay.opaque") == b"y"
    # The layer store is private: setuid files and devices in layers are data only.
    assert stat.S_IMODE((paths.root / "snapshots").stat().st_mode) == 0o700
    # Loading again: same image, layers already there.
    again = image_load.load(paths, tar)
    assert again[0].id == img.id
    assert len(list((paths.root / "snapshots").glob("*/fs"))) == 3


def test_load_stream_and_untagged(paths: EnginePaths, tmp_path: Path) -> None:
    img = make_image([base_layer()], [])
    tar = tmp_path / "img.tar"
    write_docker_archive(tar, [img])
    with open(tar, "rb") as f:
        loaded = image_load.load(paths, f)
    assert loaded[0].lines() == [f"Loaded image ID: {img.id}"]


def test_load_oci_layout_dir_and_tar(paths: EnginePaths, tmp_path: Path) -> None:
    img = make_image([base_layer(), data_layer()], ["ocitag"])
    layout = tmp_path / "layout"
    write_oci_layout(layout, [img])
    loaded = image_load.load(paths, layout)
    assert loaded[0].names == ["ocitag:latest"]
    assert loaded[0].id == img.id
    tar = tmp_path / "layout.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(layout, arcname=".")
    paths2 = EnginePaths(root=tmp_path / "root2", run_root=tmp_path / "run2")
    assert image_load.load(paths2, tar)[0].id == img.id


def test_save_layout_matches_docker(paths: EnginePaths, tmp_path: Path) -> None:
    a = make_image([base_layer(), data_layer()], ["demo/a:1"])
    b = make_image([base_layer(), data_layer()], ["demo/b:1"], cmd=["ls"])
    tar = tmp_path / "in.tar"
    write_docker_archive(tar, [a, b])
    image_load.load(paths, tar)
    out = tmp_path / "out.tar"
    image_save.save(paths, ["demo/a:1", "demo/b:1"], out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    with tarfile.open(out) as tf:
        names = tf.getnames()
        assert names == sorted(names)
        manifest = json.loads(tf.extractfile("manifest.json").read())  # type: ignore[union-attr]
        repos = json.loads(tf.extractfile("repositories").read())  # type: ignore[union-attr]
        assert tf.getmember("manifest.json").mtime == 0
        by_tag = {e["RepoTags"][0]: e for e in manifest}
        assert set(by_tag) == {"demo/a:1", "demo/b:1"}
        for img, tag in ((a, "demo/a:1"), (b, "demo/b:1")):
            e = by_tag[tag]
            assert e["Config"] == img.id[7:] + ".json"
            assert tf.extractfile(e["Config"]).read() == img.config  # type: ignore[union-attr]
            for path, diff_id in zip(e["Layers"], img.diff_ids, strict=True):
                data = tf.extractfile(path).read()  # type: ignore[union-attr]
                assert "sha256:" + hashlib.sha256(data).hexdigest() == diff_id
                v1 = path.split("/")[0]
                assert tf.extractfile(f"{v1}/VERSION").read() == b"1.0"  # type: ignore[union-attr]
                v1json = json.loads(tf.extractfile(f"{v1}/json").read())  # type: ignore[union-attr]
                assert v1json["id"] == v1
        # The shared layers are stored once: the top layers differ, lower dirs are shared.
        real = [m for m in tf.getmembers() if m.name.endswith("layer.tar") and m.isfile()]
        links = [m for m in tf.getmembers() if m.name.endswith("layer.tar") and m.issym()]
        assert len(real) == 2
        assert len(links) == 1
        assert links[0].linkname.startswith("../")
        top_a = by_tag["demo/a:1"]["Layers"][-1].split("/")[0]
        assert repos == {"demo/a": {"1": top_a}, "demo/b": {"1": repos["demo/b"]["1"]}}
    # Our save loads back into a fresh store with the same ids.
    paths2 = EnginePaths(root=tmp_path / "r2", run_root=tmp_path / "x2")
    ids = {li.id for li in image_load.load(paths2, out)}
    assert ids == {a.id, b.id}


def test_save_roundtrip_gzip_layers(paths: EnginePaths, tmp_path: Path) -> None:
    from image_fixtures import layer_tar

    # Several MiB: the decompressing reader returns short reads that tarfile must not see.
    big = layer_tar({"r.bin": os.urandom(3 << 20)})
    img = make_image([base_layer(), data_layer(), big], ["gz:1"])
    layout = tmp_path / "l"
    write_oci_layout(layout, [img], gzip_layers=True)
    image_load.load(paths, layout)
    buf = io.BytesIO()
    image_save.save(paths, ["gz:1"], buf)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tf:
        (entry,) = json.loads(tf.extractfile("manifest.json").read())  # type: ignore[union-attr]
        for path, diff_id in zip(entry["Layers"], img.diff_ids, strict=True):
            assert sha(tf.extractfile(path).read()) == diff_id  # type: ignore[union-attr]
    oci = tmp_path / "oci.tar"
    image_save.save(paths, ["gz:1"], oci, format="oci")
    paths2 = EnginePaths(root=tmp_path / "r2", run_root=tmp_path / "x2")
    assert image_load.load(paths2, oci)[0].id == img.id


def test_load_refuses_escaping_manifest_paths(paths: EnginePaths, tmp_path: Path) -> None:
    img = make_image([base_layer()], ["x:1"])
    tar = tmp_path / "bad.tar"
    with tarfile.open(tar, "w") as tf:
        for name, data in (
            ("cfg.json", img.config),
            (
                "manifest.json",
                json.dumps(
                    [{"Config": "cfg.json", "RepoTags": ["x:1"], "Layers": ["../../etc/layer.tar"]}]
                ).encode(),
            ),
        ):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    with pytest.raises(InvalidArgument, match="outside the archive"):
        image_load.load(paths, tar)
    assert images.stores(paths).images.list() == []


def test_load_diff_id_mismatch(paths: EnginePaths, tmp_path: Path) -> None:
    img = make_image([base_layer()], ["x:1"])
    img.layers = [data_layer()]  # config says base layer, archive has another
    tar = tmp_path / "bad.tar"
    write_docker_archive(tar, [img])
    with pytest.raises(IntegrityError, match="diff ID"):
        image_load.load(paths, tar)
    s = images.stores(paths)
    assert s.images.list() == []
    assert s.snapshots.snapshots() == {}


def test_load_truncated_and_not_a_tar(paths: EnginePaths, tmp_path: Path) -> None:
    img = make_image([base_layer()], ["x:1"])
    tar = tmp_path / "img.tar"
    write_docker_archive(tar, [img])
    cut = tmp_path / "cut.tar"
    cut.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    with pytest.raises(InvalidArgument):
        image_load.load(paths, cut)
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello")
    with pytest.raises(InvalidArgument):
        image_load.load(paths, junk)
    with pytest.raises(NotFound):
        image_load.load(paths, tmp_path / "missing.tar")
    assert images.stores(paths).images.list() == []


def test_kernel_overlay_mounts_loaded_image(paths: EnginePaths, tmp_path: Path) -> None:
    """The layer dirs are in overlay form: the kernel honours the whiteout and opaque dir."""
    from conftest import require_overlay
    from overunder.image.ids import chain_ids
    from overunder.mount import mount, unmount

    require_overlay()
    img = _three_layer()
    tar = tmp_path / "img.tar"
    write_docker_archive(tar, [img])
    image_load.load(paths, tar)
    s = images.stores(paths)
    top = chain_ids(img.diff_ids)[-1]
    target = tmp_path / "merged"
    target.mkdir()
    (m,) = s.snapshots.prepare("c1", top)
    mount(m, target)
    try:
        assert sorted(os.listdir(target / "data")) == ["a.txt", "link", "opq"]
        assert os.listdir(target / "data/opq") == ["new.txt"]
        assert (target / "bin/busybox").is_file()
    finally:
        unmount(target)
    s.snapshots.remove("c1")


def test_hostile_layer_writes_nothing_outside(paths: EnginePaths, tmp_path: Path) -> None:
    """A layer that plants a symlink and writes through it fails; nothing lands outside,
    no layer and no image are recorded."""
    from image_fixtures import layer_tar

    outside = tmp_path / "outside"
    outside.mkdir()
    evil = layer_tar({"esc": str(outside), "esc/pwned": b"x"})
    img = make_image([base_layer(), evil], ["evil:1"])
    tar = tmp_path / "evil.tar"
    write_docker_archive(tar, [img])
    with pytest.raises(InvalidArgument, match="esc"):
        image_load.load(paths, tar)
    assert list(outside.iterdir()) == []
    s = images.stores(paths)
    assert s.images.list() == []
    assert s.snapshots.snapshots() == {}  # the base layer that did unpack is collected
    assert list(s.content.digests()) == []


def test_load_gzip_layers_in_docker_archive(paths: EnginePaths, tmp_path: Path) -> None:
    img = make_image([base_layer(), data_layer()], ["gzarch:1"])
    tar = tmp_path / "gz.tar"
    write_docker_archive(tar, [img], gzip_layers=True)
    assert image_load.load(paths, tar)[0].id == img.id
    buf = io.BytesIO()
    image_save.save(paths, ["gzarch:1"], buf)  # layer.tar comes out uncompressed
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tf:
        (entry,) = json.loads(tf.extractfile("manifest.json").read())  # type: ignore[union-attr]
        assert sha(tf.extractfile(entry["Layers"][1]).read()) == img.diff_ids[1]  # type: ignore[union-attr]


def test_load_oci_nested_index_picks_host_platform(paths: EnginePaths, tmp_path: Path) -> None:
    from overunder.image.config import go_arch

    host = make_image([base_layer()], [], cmd=["host"])
    other = make_image([base_layer()], [], cmd=["other"])
    layout = tmp_path / "multi"
    write_oci_layout(layout, [host, other])
    index = json.loads((layout / "index.json").read_text())
    (m_host, m_other) = index["manifests"]
    m_host["platform"] = {"os": "linux", "architecture": go_arch()}
    m_other["platform"] = {
        "os": "linux",
        "architecture": "s390x" if go_arch() != "s390x" else "arm64",
    }
    inner = json.dumps(
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
         "manifests": [m_other, m_host]}
    ).encode()  # fmt: skip
    (layout / "blobs/sha256" / sha(inner)[7:]).write_bytes(inner)
    outer = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": sha(inner),
                "size": len(inner),
                "annotations": {"io.containerd.image.name": "docker.io/library/multi:1"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(outer))
    (loaded,) = image_load.load(paths, layout)
    assert loaded.id == host.id
    assert loaded.lines() == ["Loaded image: multi:1"]


def test_load_corrupt_oci_blob(paths: EnginePaths, tmp_path: Path) -> None:
    img = make_image([base_layer()], ["c:1"])
    layout = tmp_path / "l"
    write_oci_layout(layout, [img], gzip_layers=False)
    blob = layout / "blobs/sha256" / img.diff_ids[0][7:]
    data = bytearray(blob.read_bytes())
    data[1000] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="digest mismatch"):
        image_load.load(paths, layout)
    assert images.stores(paths).images.list() == []


def test_store_lock_excludes_and_recovers(paths: EnginePaths) -> None:
    from overunder.engine.lock import store_lock
    from overunder.errors import FailedPrecondition

    s = images.stores(paths)
    dead = s.content.ingest / "anon-dead"
    dead.mkdir(parents=True)
    (dead / "data").write_bytes(b"half")
    with store_lock(paths):
        assert not dead.exists()  # the first writer cleans what a killed one left
        import multiprocessing

        def other(q: multiprocessing.Queue[str]) -> None:
            try:
                with store_lock(paths, blocking=False):
                    q.put("got it")
            except FailedPrecondition as err:
                q.put(err.message)

        q: multiprocessing.Queue[str] = multiprocessing.get_context("fork").Queue()
        p = multiprocessing.get_context("fork").Process(target=other, args=(q,))
        p.start()
        p.join(10)
        assert "locked by another overunder command" in q.get(timeout=5)


def test_load_symlink_member_pointing_outside(paths: EnginePaths, tmp_path: Path) -> None:
    """A layer.tar that is a symlink out of the archive is never followed on the host."""
    img = make_image([base_layer()], ["x:1"])
    tar = tmp_path / "sym.tar"
    with tarfile.open(tar, "w") as tf:
        for name, data in (
            ("cfg.json", img.config),
            (
                "manifest.json",
                json.dumps(
                    [{"Config": "cfg.json", "RepoTags": ["x:1"], "Layers": ["l/layer.tar"]}]
                ).encode(),
            ),
        ):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
        link = tarfile.TarInfo("l/layer.tar")
        link.type = tarfile.SYMTYPE
        link.linkname = "../../../../etc/passwd"
        tf.addfile(link)
    with pytest.raises(InvalidArgument, match="has no"):
        image_load.load(paths, tar)
    assert images.stores(paths).images.list() == []
