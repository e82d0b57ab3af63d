"""``commit`` round trips: container -> image -> container, the layer tar's OCI whiteouts, the
config and history (docker-compat §9-§11), pausing, and ``save`` read back by skopeo + umoci."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import h_layer_helpers as h

from conftest import require_binary
from overunder.engine.container_commit import commit_container
from overunder.engine.container_mount import container_root
from overunder.engine.images import load_config, stores
from overunder.engine.paths import EnginePaths
from overunder.layerfs.reader import read_layer
from overunder.semantics import Kind, Layer


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnginePaths]:
    root = h.build_engine(tmp_path_factory.mktemp("h-engine"))
    yield h.paths_of(root)
    h.cleanup_engine(root)


def _mutate(m: Path) -> None:
    """The walkthrough's changes plus a deleted tree and an opaque dir."""
    (m / "hello.txt").write_text("hi there\nhello again\n")
    (m / "root/.ash_history").write_text("cat /hello.txt\n")
    (m / "etc/goodbye.txt").write_text("I am getting ready to go\n")
    (m / "etc/localtime").unlink()
    for p in sorted((m / "data/rdir").rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    (m / "data/rdir").rmdir()
    for p in sorted((m / "data/opq").rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    (m / "data/opq").rmdir()
    (m / "data/opq").mkdir()
    (m / "data/opq/new.txt").write_text("new\n")


def _view(tree: Layer) -> dict[str, tuple[str, int, int, int, str | None, str | None]]:
    """What a container sees, minus mtimes (a copy-up keeps them, a new dir has its own)."""
    return {
        p: (e.kind.value, e.meta.mode, e.meta.uid, e.meta.gid, e.data, e.target)
        for p, e in tree.items()
        if p
    }


@pytest.mark.parametrize("driver", h.DRIVERS)
def test_commit_run_diff_round_trip(engine: EnginePaths, driver: str) -> None:
    h.require_driver(driver)
    src, dst = f"h-commit-src-{driver}", f"h-commit-dst-{driver}"
    h.create(engine, h.FIXTURE, src, driver=driver)
    try:
        with h.mounted(engine, src) as m:
            _mutate(m)
        before = h.lines(engine, src)
        assert "D /etc/localtime" in before
        assert "D /data/rdir" in before
        image = commit_container(engine, src, f"h/commit-{driver}:1")
        h.create(engine, f"h/commit-{driver}:1", dst, driver=driver)
        assert h.lines(engine, dst) == []  # everything is in the image now
        with container_root(engine, src) as (_r, a_root):
            a = _view(read_layer(a_root))
        with container_root(engine, dst) as (_r, b_root):
            b = _view(read_layer(b_root))
            # the committed whiteouts hide the lower files on top of the base layers
            assert not (b_root / "etc/localtime").exists()
            assert not (b_root / "data/rdir").exists()
            assert sorted(os.listdir(b_root / "data/opq")) == ["new.txt"]
        assert a == b
        h.start(engine, dst)
        assert h.exec_sh(engine, dst, 'test "$(cat /hello.txt)" = "hi there\nhello again"') == 0
        assert h.exec_sh(engine, dst, "rm /hello.txt") == 0
        assert h.lines(engine, dst) == ["D /hello.txt"]
        cfg = load_config(stores(engine), image)
        assert len(cfg.diff_ids) == len(load_config(stores(engine), _image_id(engine)).diff_ids) + 1
    finally:
        h.remove(engine, dst)
        h.remove(engine, src)


def _image_id(engine: EnginePaths, name: str = h.FIXTURE) -> str:
    return stores(engine).images.resolve(name).id


def test_committed_layer_is_docker_shaped(engine: EnginePaths) -> None:
    from overunder.engine.containers import find_container

    name = "h-commit-tar"
    h.create(engine, h.FIXTURE, name)
    try:
        with h.mounted(engine, name) as m:
            _mutate(m)
        image = commit_container(
            engine,
            name,
            "h/commit-tar:1",
            message="a message",
            author="H <h@example.com>",
            changes=['CMD ["cat", "/hello.txt"]', "LABEL a=b"],
            pause=False,
        )
        s = stores(engine)
        raw = load_config(s, image).raw
        top = raw["rootfs"]["diff_ids"][-1]
        with tarfile.open(s.content.path(top)) as tf:
            members = {m.name: m for m in tf.getmembers()}
            names = tf.getnames()
        assert names[:3] == ["data", "data/opq", "data/opq/.wh..wh..opq"]
        assert s.content.read(top)[:6] == b"data/\0"  # dirs end in "/" (tarfile strips it)
        assert "data/.wh.rdir" in names
        assert "etc/.wh.localtime" in names
        assert not any(n.startswith("data/rdir/") for n in names)
        assert members["data/opq"].isdir()
        assert names[names.index("data/opq") + 2] == "data/opq/new.txt"
        wh = members["etc/.wh.localtime"]
        assert (wh.size, wh.mode, wh.uid, wh.gid) == (0, 0o600, 0, 0)
        assert members["data/opq/.wh..wh..opq"].mtime == 0
        assert names.index("etc/goodbye.txt") < names.index("etc/.wh.localtime")
        assert raw["config"]["Cmd"] == ["cat", "/hello.txt"]
        assert raw["config"]["Labels"] == {"a": "b"}
        assert raw["config"]["WorkingDir"] == "/data"
        assert raw["author"] == "H <h@example.com>"
        assert raw["comment"] == "a message"
        assert raw["container"] == find_container(engine, name).id
        assert raw["config"]["Image"] == h.FIXTURE
        assert raw["history"][-1]["created_by"] == "sleep 100000"
        assert raw["history"][-1]["comment"] == "a message"
        assert len(raw["history"]) == len(load_config(s, _image_id(engine)).history) + 1
        assert s.images.get(image).parent == _image_id(engine)
    finally:
        h.remove(engine, name)


def test_commit_pauses_a_running_container(
    engine: EnginePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    from overunder.runtime.runc import RuntimeBinary

    calls: list[str] = []
    real_pause, real_resume = RuntimeBinary.pause, RuntimeBinary.resume

    def pause(self: RuntimeBinary, cid: str) -> None:
        real_pause(self, cid)
        state = self.state(cid)
        calls.append(f"pause:{state.get('status') if state else None}")

    def resume(self: RuntimeBinary, cid: str) -> None:
        calls.append("resume")
        real_resume(self, cid)

    monkeypatch.setattr(RuntimeBinary, "pause", pause)
    monkeypatch.setattr(RuntimeBinary, "resume", resume)
    name = "h-commit-pause"
    h.create(engine, h.FIXTURE, name)
    try:
        h.start(engine, name)
        assert h.exec_sh(engine, name, "echo x > /x") == 0
        commit_container(engine, name, "h/paused:1")
        assert calls == ["pause:paused", "resume"]
        assert h.exec_sh(engine, name, "echo still running") == 0
        calls.clear()
        commit_container(engine, name, "h/paused:2", pause=False)
        assert calls == []
    finally:
        h.remove(engine, name)


def test_saved_commit_reads_back_with_skopeo_and_umoci(engine: EnginePaths, tmp_path: Path) -> None:
    require_binary("skopeo")
    require_binary("umoci")
    name = "h-commit-save"
    h.create(engine, h.FIXTURE, name)
    try:
        with h.mounted(engine, name) as m:
            _mutate(m)
        commit_container(engine, name, "h/saved:1")
        archive = tmp_path / "saved.tar"
        r = subprocess.run(
            [sys.executable, "-m", "overunder", "save", "-o", str(archive), "h/saved:1"],
            env={**os.environ, "OVERUNDER_ROOT": str(engine.root)},
            capture_output=True,
            text=True,
            check=False,
        )
        assert r.returncode == 0, r.stderr
        layout = tmp_path / "oci"
        subprocess.run(
            ["skopeo", "copy", f"docker-archive:{archive}", f"oci:{layout}:saved"],
            check=True,
            capture_output=True,
        )
        bundle = tmp_path / "bundle"
        subprocess.run(
            ["umoci", "unpack", "--image", f"{layout}:saved", str(bundle)],
            check=True,
            capture_output=True,
        )
        rootfs = bundle / "rootfs"
        assert not (rootfs / "etc/localtime").exists()  # whiteout hides the lower file
        assert not (rootfs / "data/rdir").exists()
        assert not (rootfs / "data/gone.txt").exists()
        assert sorted(os.listdir(rootfs / "data/opq")) == ["new.txt"]
        assert sorted(os.listdir(rootfs / "data/opqimg")) == ["new.txt"]
        assert (rootfs / "hello.txt").read_text() == "hi there\nhello again\n"
        with container_root(engine, name) as (_r, root):
            ours = {p for p, e in read_layer(root, with_data=False).items() if p}
            theirs = {p for p, e in read_layer(rootfs, with_data=False).items() if p}
            # the init layer's files are the container's, not the image's
            init = {".dockerenv", "etc/hostname", "etc/hosts", "etc/resolv.conf", "etc/mtab"}
            init |= {"dev/console", "dev/pts", "dev/shm"}
            assert ours - init == theirs - init
            for p in ("hello.txt", "etc/goodbye.txt", "data/opq/new.txt", "data/same.txt"):
                assert (root / p).read_bytes() == (rootfs / p).read_bytes()
        assert json.loads((bundle / "config.json").read_text())["process"]["args"]
        kinds = read_layer(rootfs, with_data=False)
        assert kinds["data/etclink"].kind is Kind.SYMLINK
    finally:
        h.remove(engine, name)


def test_diff_is_not_the_committed_layer(engine: EnginePaths) -> None:
    """docker-compat §3 (end): commit writes the upper dir as it is, copy-ups diff hides too."""
    name = "h-commit-copyups"
    h.create(engine, h.FIXTURE, name)
    try:
        with h.mounted(engine, name) as m:
            (m / "data/tmp.txt").write_text("x")
            (m / "data/tmp.txt").unlink()
            os.utime(m / "data/keep")
            os.link(m / "data/link-target.txt", m / "data/hardlink.txt")
            os.chown(m / "data/touch.txt", 1, 1)
        assert h.lines(engine, name) == ["C /data", "A /data/hardlink.txt", "C /data/touch.txt"]
        image = commit_container(engine, name, "h/copyups:1")
        s = stores(engine)
        top = load_config(s, image).diff_ids[-1]
        with tarfile.open(s.content.path(top)) as tf:
            members = tf.getmembers()
        got = [(m.name, m.type) for m in members]
        assert got == [
            ("data", tarfile.DIRTYPE),
            ("data/hardlink.txt", tarfile.REGTYPE),
            ("data/keep", tarfile.DIRTYPE),
            ("data/link-target.txt", tarfile.LNKTYPE),
            ("data/touch.txt", tarfile.REGTYPE),
        ]
        assert members[3].linkname == "data/hardlink.txt"
        assert members[4].uid == 1
    finally:
        h.remove(engine, name)
