from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import require_overlay
from overunder.errors import AlreadyExists, FailedPrecondition, IntegrityError, NotFound
from overunder.snapshots import Kind, Snapshotter

L1 = "sha256:" + "1" * 64
L2 = "sha256:" + "2" * 64


@dataclass
class Res:
    diff_id: str
    size: int = 0


def _writer(name: str, content: bytes, diff_id: str = L1):  # type: ignore[no-untyped-def]
    def apply(fs: Path) -> Res:
        (fs / name).write_bytes(content)
        return Res(diff_id)

    return apply


def test_layer_unpacked_once_and_recorded(tmp_path: Path) -> None:
    s = Snapshotter(tmp_path / "snapshots")
    calls = []

    def apply(fs: Path) -> Res:
        calls.append(fs)
        (fs / "a").write_bytes(b"12345")
        return Res(L1)

    d = s.ensure_layer(L1, None, apply, diff_id=L1)
    assert d == s.layer_dir(L1)
    assert s.ensure_layer(L1, None, apply) == d
    assert len(calls) == 1
    info = s.info(L1)
    assert info.kind == Kind.COMMITTED
    assert info.size == 5
    assert info.diff_id == L1
    assert len(d.parent.name) == 10  # short ids keep lowerdir lists short


def test_diff_id_mismatch_leaves_nothing(tmp_path: Path) -> None:
    s = Snapshotter(tmp_path)
    with pytest.raises(IntegrityError, match="diff ID mismatch"):
        s.ensure_layer(L1, None, _writer("a", b"x", diff_id=L2), diff_id=L1)
    assert not s.exists(L1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["locks", "metadata.json", "metadata.lock"]


def test_failed_apply_leaves_nothing(tmp_path: Path) -> None:
    s = Snapshotter(tmp_path)

    def boom(fs: Path) -> Res:
        (fs / "half").write_bytes(b"x")
        raise ValueError("bad tar")

    with pytest.raises(ValueError, match="bad tar"):
        s.ensure_layer(L1, None, boom)
    assert not s.exists(L1)
    with pytest.raises(NotFound):
        s.layer_dir(L1)


def _slow_apply_then_hang(root: str, ready: str) -> None:
    s = Snapshotter(Path(root))

    def apply(fs: Path) -> Res:
        (fs / "partial").write_bytes(b"x")
        Path(ready).touch()
        time.sleep(60)
        return Res(L1)

    s.ensure_layer(L1, None, apply)


def test_killed_unpack_is_not_complete_and_is_cleaned(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    ready = tmp_path / "ready"
    proc = multiprocessing.get_context("fork").Process(
        target=_slow_apply_then_hang, args=(str(root), str(ready))
    )
    proc.start()
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        s = Snapshotter(root)
        assert not s.exists(L1)
        assert s.cleanup() == []  # the unpack is alive: not touched
    finally:
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
    assert not s.exists(L1)
    removed = s.cleanup()
    assert len(removed) == 1
    assert not removed[0].exists()
    # The next ensure_layer unpacks it properly.
    d = s.ensure_layer(L1, None, _writer("a", b"ok"))
    assert (d / "a").read_bytes() == b"ok"


def _concurrent(root: str, counter: str) -> None:
    s = Snapshotter(Path(root))

    def apply(fs: Path) -> Res:
        with open(counter, "a") as f:
            f.write("x")
        time.sleep(0.2)
        (fs / "a").write_bytes(b"1")
        return Res(L1)

    s.ensure_layer(L1, None, apply)


def test_concurrent_processes_unpack_once(tmp_path: Path) -> None:
    root = tmp_path / "snap"
    counter = tmp_path / "count"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_concurrent, args=(str(root), str(counter))) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert counter.read_text() == "x"
    assert Snapshotter(root).exists(L1)


def test_prepare_mounts_and_remove(tmp_path: Path) -> None:
    s = Snapshotter(tmp_path)
    d1 = s.ensure_layer(L1, None, _writer("a", b"1"))
    d2 = s.ensure_layer(L2, L1, _writer("b", b"2", L2))
    assert s.lower_dirs(L2) == [d2, d1]
    (m,) = s.prepare("c1", L2)
    assert m.type == "overlay"
    assert m.options[0] == f"lowerdir={d2}:{d1}"
    assert m.options[1] == f"upperdir={s.upper_dir('c1')}"
    assert m.options[2] == f"workdir={s.work_dir('c1')}"
    (f,) = s.mounts("c1", driver="fuse.overunder")
    assert f.type == "fuse.overunder"
    assert f.options == m.options
    with pytest.raises(AlreadyExists):
        s.prepare("c1", L2)
    with pytest.raises(FailedPrecondition, match="parent"):
        s.remove(L2)
    (bare,) = s.prepare("c2", None)
    assert bare.type == "bind"
    s.remove("c1")
    s.remove("c2")
    s.remove(L2)
    assert not d2.exists()
    assert s.exists(L1)
    (ro,) = s.view("v", L1)
    assert ro.type == "bind"
    assert "ro" in ro.options


def test_kernel_overlay_mounts_prepared_snapshot(tmp_path: Path) -> None:
    require_overlay()
    s = Snapshotter(tmp_path / "s")
    s.ensure_layer(L1, None, _writer("a", b"low"))
    s.ensure_layer(L2, L1, _writer("b", b"top", L2))
    (m,) = s.prepare("c", L2)
    target = tmp_path / "merged"
    target.mkdir()
    subprocess.run(
        ["mount", "-t", "overlay", m.source, "-o", ",".join(m.options), str(target)], check=True
    )
    try:
        assert (target / "a").read_bytes() == b"low"
        (target / "c").write_bytes(b"new")
    finally:
        subprocess.run(["umount", str(target)], check=True)
    assert (s.upper_dir("c") / "c").read_bytes() == b"new"
