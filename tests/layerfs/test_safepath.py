"""Container paths resolved and opened inside a root: Docker's FollowSymlinkInScope rule, the
fd walk (openat2 and the Python fallback), and the CVE-2018-15664 swap race."""

from __future__ import annotations

import ctypes
import errno
import io
import os
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import require
from overunder.errors import InvalidArgument, NotFound
from overunder.layerfs import safepath
from overunder.layerfs.safepath import (
    open_dir_in_root,
    open_dir_nofollow,
    open_in_root,
    open_root,
    resolve_in_root,
)
from overunder.layerfs.tar_apply import apply_layer


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "etc").mkdir(parents=True)
    (r / "etc" / "passwd").write_text("container passwd")
    (r / "data").mkdir()
    os.symlink("/etc", r / "data" / "etclink")
    os.symlink("/etc/passwd", r / "data" / "pwlink")
    os.symlink("../../../../../../../etc", r / "data" / "rel")
    os.symlink("/", r / "data" / "rootlink")
    os.symlink("loop2", r / "data" / "loop1")
    os.symlink("loop1", r / "data" / "loop2")
    os.symlink("etclink", r / "data" / "chain")
    return r


@pytest.fixture(params=["openat2", "fallback"])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "fallback":
        monkeypatch.setattr(safepath, "_openat2_ok", False)
    else:
        require(safepath.have_openat2(), "a kernel with openat2 (5.6+)")
    return str(request.param)


def test_absolute_link_resolves_inside_the_root(root: Path) -> None:
    assert resolve_in_root(root, "/data/etclink/passwd", follow_last=True) == root / "etc/passwd"
    assert resolve_in_root(root, "/data/etclink", follow_last=True) == root / "etc"


def test_relative_dotdot_link_is_clamped_at_the_root(root: Path) -> None:
    assert resolve_in_root(root, "/data/rel/passwd", follow_last=False) == root / "etc/passwd"
    assert resolve_in_root(root, "../../../etc", follow_last=True) == root / "etc"


def test_link_to_slash_is_the_root(root: Path) -> None:
    assert resolve_in_root(root, "data/rootlink", follow_last=True) == root
    assert resolve_in_root(root, "data/rootlink/etc", follow_last=True) == root / "etc"


def test_chained_links(root: Path) -> None:
    assert resolve_in_root(root, "/data/chain/passwd", follow_last=True) == root / "etc/passwd"


def test_last_component_followed_only_when_asked(root: Path) -> None:
    assert resolve_in_root(root, "/data/etclink", follow_last=False) == root / "data/etclink"
    # a trailing slash follows, like docker cp c:/data/etclink/
    assert resolve_in_root(root, "/data/etclink/", follow_last=False) == root / "etc"


def test_missing_components_are_kept_literally(root: Path) -> None:
    assert resolve_in_root(root, "/data/etclink/new/file", follow_last=True) == (
        root / "etc/new/file"
    )


def test_loop_is_an_error(root: Path) -> None:
    with pytest.raises(InvalidArgument, match="too many levels of symbolic links"):
        resolve_in_root(root, "/data/loop1/x", follow_last=True)


def test_open_in_root_follows_links_inside_the_root(root: Path, mode: str) -> None:
    rfd = open_root(root)
    try:
        for path in ["/data/pwlink", "data/etclink/passwd", "/data/rel/passwd", "../../etc/passwd"]:
            fd = open_in_root(rfd, path, os.O_RDONLY)
            with os.fdopen(fd, "rb") as fh:
                assert fh.read() == b"container passwd", (mode, path)
        with pytest.raises(OSError, match="symbolic links") as info:
            open_in_root(rfd, "/data/loop1", os.O_RDONLY)
        assert info.value.errno == errno.ELOOP
    finally:
        os.close(rfd)


def test_open_in_root_creates_through_an_absolute_link_inside_the_root(
    root: Path, mode: str
) -> None:
    rfd = open_root(root)
    try:
        fd = open_in_root(rfd, "/data/etclink/hello.txt", os.O_WRONLY | os.O_CREAT, 0o644)
        os.close(fd)
    finally:
        os.close(rfd)
    assert (root / "etc/hello.txt").exists()


def test_open_in_root_without_following_the_last_link(root: Path, mode: str) -> None:
    rfd = open_root(root)
    try:
        with pytest.raises(OSError, match="symbolic links") as info:
            open_in_root(rfd, "/data/pwlink", os.O_RDONLY, follow_last=False)
        assert info.value.errno == errno.ELOOP
    finally:
        os.close(rfd)


def test_parent_dirs_are_created_inside_the_root(root: Path, tmp_path: Path) -> None:
    """CVE-2021-41089: mkdir -p of a path through an absolute link stays in the root."""
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(str(outside), root / "evil")
    rfd = open_root(root)
    try:
        fd = open_dir_in_root(rfd, "evil/new/sub", create=True)
        os.close(fd)
        with pytest.raises(NotFound):
            open_dir_in_root(rfd, "nothere/x")
    finally:
        os.close(rfd)
    assert list(outside.iterdir()) == []
    assert (root / str(outside).lstrip("/") / "new/sub").is_dir()


def test_open_dir_nofollow_refuses_symlinks(root: Path) -> None:
    rfd = open_root(root)
    try:
        with pytest.raises(InvalidArgument, match="data/etclink is a symlink"):
            open_dir_nofollow(rfd, ["data", "etclink"], create=True)
        with pytest.raises(InvalidArgument, match="etc/passwd is not a directory"):
            open_dir_nofollow(rfd, ["etc", "passwd", "x"], create=True)
        created: list[str] = []
        os.close(open_dir_nofollow(rfd, ["data", "a", "b"], create=True, created=created))
        assert created == ["data/a", "data/a/b"]
    finally:
        os.close(rfd)


# -- the swap race ---------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> None:
    if _libc.renameat2(_AT_FDCWD, bytes(a), _AT_FDCWD, bytes(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@pytest.fixture
def swapper(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """root/d flips between a real dir and a symlink to an outside dir, as fast as it can.
    Yields the root and an fd of the real dir (whatever its name at the moment)."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "d").mkdir()
    os.symlink(str(outside), root / "evil")
    real = os.open(root / "d", os.O_RDONLY | os.O_DIRECTORY)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            _exchange(root / "d", root / "evil")

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        yield root, real
    finally:
        stop.set()
        t.join()
        os.close(real)
    assert list(outside.iterdir()) == [], "a write escaped the root"


def test_race_open_in_root_never_escapes(swapper: tuple[Path, int], mode: str) -> None:
    root, real = swapper
    rfd = open_root(root)
    landed = 0
    try:
        for i in range(200):
            try:
                fd = open_in_root(rfd, f"d/f{i}", os.O_WRONLY | os.O_CREAT, 0o644)
            except OSError:
                continue  # the symlink resolved inside the root to a missing dir: fine
            os.write(fd, b"x")
            os.close(fd)
            landed += 1
    finally:
        os.close(rfd)
    # every create that succeeded landed in the real dir (named d or evil at this instant)
    assert len(os.listdir(real)) == landed


def test_race_open_dir_nofollow_never_escapes(swapper: tuple[Path, int]) -> None:
    root, _ = swapper
    rfd = open_root(root)
    try:
        for i in range(200):
            try:
                fd = open_dir_nofollow(rfd, ["d"], create=False)
            except InvalidArgument:
                continue  # caught the symlink: refused
            try:
                os.close(os.open(f"f{i}", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
            finally:
                os.close(fd)
    finally:
        os.close(rfd)


def test_race_apply_layer_never_escapes(swapper: tuple[Path, int]) -> None:
    root, _ = swapper
    for i in range(200):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tf:
            ti = tarfile.TarInfo(f"d/sub{i}/f")
            ti.size = 1
            tf.addfile(ti, io.BytesIO(b"x"))
        buf.seek(0)
        try:
            apply_layer(buf, root, name="race")
        except InvalidArgument:
            continue


def test_nul_in_a_path_is_invalid(root: Path) -> None:
    with pytest.raises(InvalidArgument, match="NUL"):
        resolve_in_root(root, "/etc/\0passwd", follow_last=True)
    rfd = open_root(root)
    try:
        with pytest.raises(InvalidArgument, match="NUL"):
            open_in_root(rfd, "etc\0", os.O_RDONLY)
        with pytest.raises(InvalidArgument, match="NUL"):
            open_dir_in_root(rfd, "etc\0")
    finally:
        os.close(rfd)
