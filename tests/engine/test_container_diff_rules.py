"""Every ``docker diff`` rule of docker-compat.md §3 as a scenario on a real container.

Each scenario makes its mutation in a fresh container of the ``fixture`` image through the
container's mounted overlay (``overunder mount CONTAINER``: the kernel or FUSE overlay does the
copy-ups, whiteouts and opaque dirs), or with ``exec`` in a running container where the rule is
about the running container (bind mounts, tmpfs). The expected lines are docker-compat's; they
are checked against ``diff`` (from the upper dir) and against the naive double walk
(:func:`overunder.semantics.diff_trees` of the image+init tree and the merged tree), on both
storage drivers.
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import h_layer_helpers as h

from overunder.engine.container_mount import container_layers
from overunder.engine.containers import find_container
from overunder.engine.paths import EnginePaths
from overunder.layerfs.reader import read_layer
from overunder.semantics import changes_from_upper, diff_trees, flatten

_names = itertools.count()


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnginePaths]:
    root = h.build_engine(tmp_path_factory.mktemp("h-engine"))
    yield h.paths_of(root)
    h.cleanup_engine(root)


def _naive(paths: EnginePaths, name: str, merged: Path) -> list[str]:
    """diff_trees of (image layers + init layer) flattened vs the merged tree as mounted."""
    dirs = container_layers(paths, find_container(paths, name))
    old = flatten([read_layer(d, with_data=False) for d in dirs.lowers])
    new = read_layer(merged, with_data=False)
    return [str(c) for c in diff_trees(old, new)]


def _scenario(
    paths: EnginePaths, driver: str, mutate: Callable[[Path], None]
) -> tuple[list[str], list[str]]:
    """(diff from the upper dir, naive double walk) after ``mutate(merged)``."""
    name = f"h-rule-{next(_names)}"
    h.create(paths, h.FIXTURE, name, driver=driver)
    try:
        with h.mounted(paths, name) as m:
            mutate(m)
            naive = _naive(paths, name, m)
        fast = h.lines(paths, name)
        # the fast upper view and the full reader agree
        dirs = container_layers(paths, find_container(paths, name))
        lowers = [read_layer(d, with_data=False) for d in dirs.lowers]
        full = changes_from_upper(read_layer(dirs.upper, with_data=False), lowers)
        assert fast == [str(c) for c in full]
        return fast, naive
    finally:
        h.remove(paths, name)


def _append(p: Path, data: bytes) -> None:
    with open(p, "ab") as f:
        f.write(data)


def r2(m: Path) -> None:
    (m / "a/b/c").mkdir(parents=True)
    (m / "a/f1").write_text("\n")
    (m / "a/b/c/f3").write_text("\n")


def r3(m: Path) -> None:
    (m / "data/rdir/sub/y.txt").unlink()


def r3b(m: Path) -> None:
    _append(m / "data/rdir/sub/y.txt", b"more\n")


def r4(m: Path) -> None:
    os.chmod(m / "data/chmod.txt", 0o600)


def r4b(m: Path) -> None:
    os.chown(m / "data/touch.txt", 1, 1)
    os.utime(m / "data/chmod.txt")
    (m / "data/same.txt").write_bytes(b"same\n")
    os.unlink(m / "data/etclink")
    os.symlink("/tmp", m / "data/etclink")
    os.chmod(m / "data/keep", 0o700)


def r5(m: Path) -> None:
    (m / "data/keep/keep.txt").read_bytes()
    os.listdir(m / "data/rdir")
    os.utime(m / "data/keep")  # touch of a directory
    p = m / "data/opq/a.txt"
    st = os.stat(p)
    p.write_bytes(b"A\n")  # same size
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def r6(m: Path) -> None:
    shutil.rmtree(m / "data/rdir")


def r7(m: Path) -> None:
    for p in (m / "data/tmp.txt", m / "tmp-root.txt"):
        p.write_text("x")
        p.unlink()
    (m / "data/emptydir").mkdir()
    (m / "data/emptydir").rmdir()


def r7b(m: Path) -> None:
    (m / "brandnew/sub").mkdir(parents=True)
    (m / "brandnew/sub/f").write_text("x")
    (m / "brandnew/sub/f").unlink()


def r8(m: Path) -> None:
    (m / "data/file2dir").unlink()
    (m / "data/file2dir").mkdir()
    (m / "data/file2dir/inner.txt").write_text("in\n")


def r8b(m: Path) -> None:
    shutil.rmtree(m / "data/keep")
    (m / "data/keep").write_text("now a file\n")


def _recreate_opq(m: Path) -> Path:
    shutil.rmtree(m / "data/opq")
    (m / "data/opq").mkdir()
    return m / "data/opq"


def r9(m: Path) -> None:
    (_recreate_opq(m) / "new.txt").write_text("\n")


def r9b(m: Path) -> None:
    d = _recreate_opq(m)
    (d / "a.txt").write_text("a\n")
    (d / "sub").mkdir()
    (d / "sub/c.txt").write_text("c\n")


def r9c(m: Path) -> None:
    _recreate_opq(m)


def r10(m: Path) -> None:
    shutil.move(m / "data/rename-src.txt", m / "data/renamed.txt")


def r11(m: Path) -> None:
    shutil.move(m / "data/rdir", m / "data/rdir2")  # EXDEV (redirect_dir off): copy + delete


def r11b(m: Path) -> None:
    (m / "newdir/x").mkdir(parents=True)
    shutil.move(m / "newdir", m / "newdir2")


def r12(m: Path) -> None:
    os.link(m / "data/link-target.txt", m / "data/hardlink.txt")


def r12b(m: Path) -> None:
    (m / "hl1").write_text("x")
    os.link(m / "hl1", m / "hl2")


def r13(m: Path) -> None:
    os.symlink("/etc/passwd", m / "abs-link")
    os.symlink("/no/such/target", m / "dangling")


def r14b(m: Path) -> None:
    (m / ".dockerenv").unlink()
    (m / "etc/mtab").unlink()


def r15(m: Path) -> None:
    assert not (m / "data/gone.txt").exists()
    assert sorted(os.listdir(m / "data/opqimg")) == ["new.txt"]


RULES: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "1-fresh": (lambda m: None, []),
    "2-new-tree": (r2, ["A /a", "A /a/b", "A /a/b/c", "A /a/b/c/f3", "A /a/f1"]),
    "3-rm-deep": (
        r3,
        ["C /data", "C /data/rdir", "C /data/rdir/sub", "D /data/rdir/sub/y.txt"],
    ),
    "3b-append": (
        r3b,
        ["C /data", "C /data/rdir", "C /data/rdir/sub", "C /data/rdir/sub/y.txt"],
    ),
    "4-chmod": (r4, ["C /data", "C /data/chmod.txt"]),
    "4b-metadata": (
        r4b,
        [
            "C /data",
            "C /data/chmod.txt",
            "C /data/etclink",
            "C /data/keep",
            "C /data/same.txt",
            "C /data/touch.txt",
        ],
    ),
    "5-no-change": (r5, []),
    "6-rm-tree": (r6, ["C /data", "D /data/rdir"]),
    "7-add-then-delete": (r7, []),
    "7b-new-dir-child-deleted": (r7b, ["A /brandnew", "A /brandnew/sub"]),
    "8-file-to-dir": (r8, ["C /data", "C /data/file2dir", "A /data/file2dir/inner.txt"]),
    "8b-dir-to-file": (r8b, ["C /data", "C /data/keep"]),
    "9-opaque": (
        r9,
        [
            "C /data",
            "C /data/opq",
            "D /data/opq/a.txt",
            "D /data/opq/b.txt",
            "A /data/opq/new.txt",
            "D /data/opq/sub",
        ],
    ),
    "9b-opaque-same-names": (
        r9b,
        [
            "C /data",
            "C /data/opq",
            "C /data/opq/a.txt",
            "D /data/opq/b.txt",
            "C /data/opq/sub",
            "C /data/opq/sub/c.txt",
        ],
    ),
    "9c-opaque-empty": (
        r9c,
        ["C /data", "C /data/opq", "D /data/opq/a.txt", "D /data/opq/b.txt", "D /data/opq/sub"],
    ),
    "10-rename-file": (r10, ["C /data", "D /data/rename-src.txt", "A /data/renamed.txt"]),
    "11-rename-dir": (
        r11,
        [
            "C /data",
            "D /data/rdir",
            "A /data/rdir2",
            "A /data/rdir2/sub",
            "A /data/rdir2/sub/y.txt",
            "A /data/rdir2/x.txt",
        ],
    ),
    "11b-rename-new-dir": (r11b, ["A /newdir2", "A /newdir2/x"]),
    "12-hardlink": (r12, ["C /data", "A /data/hardlink.txt"]),
    "12b-new-hardlinks": (r12b, ["A /hl1", "A /hl2"]),
    "13-symlinks": (r13, ["A /abs-link", "A /dangling"]),
    "14b-init-files": (r14b, ["D /.dockerenv", "C /etc", "D /etc/mtab"]),
    "15-image-whiteouts": (r15, []),
}


@pytest.mark.parametrize("driver", h.DRIVERS)
@pytest.mark.parametrize("rule", list(RULES))
def test_docker_diff_rule(engine: EnginePaths, driver: str, rule: str) -> None:
    h.require_driver(driver)
    mutate, expected = RULES[rule]
    upper_diff, naive = _scenario(engine, driver, mutate)
    assert upper_diff == expected
    assert naive == expected


@pytest.mark.parametrize("driver", h.DRIVERS)
def test_rule_14_bind_mounts_and_tmpfs_leave_no_trace(engine: EnginePaths, driver: str) -> None:
    """Writes to the bind-mounted /etc files and to /dev (tmpfs) never reach the upper dir."""
    h.require_driver(driver)
    name = f"h-rule14-{driver}"
    h.create(engine, h.FIXTURE, name, driver=driver)
    try:
        h.start(engine, name)
        code = h.exec_sh(
            engine,
            name,
            "echo x >> /etc/hosts; echo y >> /etc/hostname; echo z >> /etc/resolv.conf; "
            "echo d > /dev/shm/x; echo e > /dev/foo",
        )
        assert code == 0
        assert h.lines(engine, name) == []
        up = container_layers(engine, find_container(engine, name)).upper
        assert os.listdir(up) == []
    finally:
        h.remove(engine, name)


def test_created_running_and_stopped_containers(engine: EnginePaths) -> None:
    """diff works in every state: never started (empty), running, stopped (same lines)."""
    name = "h-states"
    h.create(engine, h.FIXTURE, name)
    try:
        assert h.lines(engine, name) == []
        h.start(engine, name)
        assert h.exec_sh(engine, name, "rm /data/chmod.txt; echo n > /data/new.txt") == 0
        running = h.lines(engine, name)
        assert running == ["C /data", "D /data/chmod.txt", "A /data/new.txt"]
        from overunder.engine.containers import stop_container

        stop_container(engine, name, timeout=0)
        assert h.lines(engine, name) == running
    finally:
        h.remove(engine, name)


def test_unknown_container(engine: EnginePaths) -> None:
    from overunder.errors import NotFound

    with pytest.raises(NotFound, match=r"^No such container: nosuch$"):
        h.lines(engine, "nosuch")


def test_lazy_lower_view_reads_layers_like_the_reader(engine: EnginePaths) -> None:
    """LowerView (diff's on-demand reading of image layers) against read_layer, entry by entry,
    on every layer of the fixture image (whiteouts and an opaque dir included)."""
    from overunder.engine.container_diff import LowerView

    name = "h-lowerview"
    h.create(engine, h.FIXTURE, name)
    try:
        dirs = container_layers(engine, find_container(engine, name))
        for d in dirs.lowers:
            full = read_layer(d, with_data=False)
            lazy = LowerView(d)
            for path, e in full.items():
                got = lazy.get(path)
                assert got is not None, path
                assert (got.kind, got.opaque, got.size, got.target, got.rdev) == (
                    e.kind,
                    e.opaque,
                    e.size,
                    e.target,
                    e.rdev,
                ), path
                if e.kind.value != "whiteout":
                    assert got.meta.mode == e.meta.mode
                    assert got.meta.mtime_ns == e.meta.mtime_ns
                    assert (got.meta.uid, got.meta.gid) == (e.meta.uid, e.meta.gid)
                if e.kind.value == "dir":
                    assert lazy.children(path) == full.children(path), path
            assert lazy.get("no/such/path") is None
    finally:
        h.remove(engine, name)
