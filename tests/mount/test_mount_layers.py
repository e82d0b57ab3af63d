"""Layer stacking, read-only mounts, long layer lists, and the pieces around them
(mountinfo parsing, holders, option parsing)."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from mount_helpers import cli, mounts_under, overlay_sandbox

from overunder.errors import InvalidArgument, Unsupported
from overunder.mount import (
    Mount,
    find_holders,
    mount,
    mount_entry,
    overlay_options_of,
    parse_overlay_options,
    unmount,
)
from overunder.mount.kernel import MOUNT_DATA_MAX
from overunder.mount.mountinfo import unescape_octal
from overunder.mount.options import format_overlay_options, split_options


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Path]:
    with overlay_sandbox(tmp_path) as d:
        yield d


def layers(base: Path, n: int, prefix: str = "l") -> list[Path]:
    dirs = []
    for i in range(n):
        p = base / f"{prefix}{i}"
        p.mkdir(parents=True)
        (p / "same").write_text(f"{i}\n")
        (p / f"only{i}").write_text(f"{i}\n")
        dirs.append(p)
    return dirs


def test_leftmost_lowerdir_is_on_top(sandbox: Path) -> None:
    layers(sandbox, 3)
    for name in ("u", "w", "m"):
        (sandbox / name).mkdir()
    (sandbox / "l2" / "d").mkdir()
    (sandbox / "l2" / "d" / "deep").write_text("2\n")
    (sandbox / "l0" / "d").write_text("a file hides the dir below\n")
    r = cli(
        "mount",
        "-t",
        "overlay",
        "-o",
        "lowerdir=./l0:./l1:./l2,upperdir=./u,workdir=./w",
        "overlay",
        "./m",
        cwd=sandbox,
    )
    assert r.returncode == 0, r.stderr
    m = sandbox / "m"
    assert (m / "same").read_text() == "0\n"
    assert sorted(os.listdir(m)) == ["d", "only0", "only1", "only2", "same"]
    assert (m / "d").is_file()
    entry = mount_entry(m)
    assert entry is not None
    assert entry.option("lowerdir") == f"{sandbox}/l0:{sandbox}/l1:{sandbox}/l2"
    assert [p.name for p in overlay_options_of(entry).lowerdirs] == ["l0", "l1", "l2"]


def test_lowerdir_only_is_read_only(sandbox: Path) -> None:
    layers(sandbox, 2)
    (sandbox / "m").mkdir()
    r = cli("mount", "-t", "overlay", "-o", "lowerdir=./l0:./l1", "overlay", "./m", cwd=sandbox)
    assert r.returncode == 0, r.stderr
    entry = mount_entry(sandbox / "m")
    assert entry is not None
    assert "ro" in entry.super_options
    assert (sandbox / "m" / "same").read_text() == "0\n"
    with pytest.raises(OSError, match="Read-only file system") as exc:
        (sandbox / "m" / "new").write_text("x")
    assert exc.value.errno == errno.EROFS
    touch = subprocess.run(
        ["touch", str(sandbox / "m" / "n")], capture_output=True, text=True, check=False
    )
    assert "Read-only file system" in touch.stderr


def test_150_lowerdirs(sandbox: Path) -> None:
    # Absolute paths of 150 layers are far more than the one page mount(2) takes.
    dirs = layers(sandbox / "a-rather-long-directory-name-for-layers", 150, "layer-")
    for name in ("u", "w", "m"):
        (sandbox / name).mkdir()
    lowerdir = ":".join(str(p) for p in dirs)
    assert len(lowerdir) > MOUNT_DATA_MAX
    r = cli(
        "mount",
        "-t",
        "overlay",
        "-o",
        f"lowerdir={lowerdir},upperdir=./u,workdir=./w",
        "overlay",
        "./m",
        cwd=sandbox,
    )
    assert r.returncode == 0, r.stderr
    m = sandbox / "m"
    assert (m / "same").read_text() == "0\n"
    assert len(os.listdir(m)) == 151
    (m / "same").write_text("written\n")
    assert (sandbox / "u" / "same").read_text() == "written\n"
    assert (dirs[0] / "same").read_text() == "0\n"
    entry = mount_entry(m)
    assert entry is not None
    assert overlay_options_of(entry).lowerdirs == dirs  # the kernel lists lowerdir+= items
    r = cli("umount", "./m", cwd=sandbox)
    assert r.returncode == 0, r.stderr
    assert mounts_under(sandbox) == []


def test_escaped_colon_and_space_in_paths(sandbox: Path) -> None:
    top = sandbox / "a:b c"
    bottom = sandbox / "plain"
    for p in (top, bottom):
        p.mkdir()
    (top / "x").write_text("top\n")
    (bottom / "x").write_text("bottom\n")
    (sandbox / "m m").mkdir()
    lowerdir = str(top).replace(":", "\\:") + ":" + str(bottom)
    mount(Mount("overlay", "overlay", (f"lowerdir={lowerdir}",)), sandbox / "m m")
    entry = mount_entry(sandbox / "m m")
    assert entry is not None
    assert entry.target == f"{sandbox}/m m"  # \040 in mountinfo, decoded
    assert (sandbox / "m m" / "x").read_text() == "top\n"
    assert overlay_options_of(entry).lowerdirs == [top, bottom]
    unmount(sandbox / "m m")
    assert mount_entry(sandbox / "m m") is None


def test_holders_and_lazy_unmount(sandbox: Path) -> None:
    layers(sandbox, 2)
    (sandbox / "m").mkdir()
    mount(Mount("overlay", "overlay", (f"lowerdir={sandbox}/l0:{sandbox}/l1",)), sandbox / "m")
    with open(sandbox / "m" / "same") as f:
        mine = [h for h in find_holders(sandbox / "m") if h.pid == os.getpid()]
        assert [h.how for h in mine] == [f"fd {f.fileno()}"]
        r = cli("umount", sandbox / "m")
        assert r.returncode == 1
        assert f"pid {os.getpid()} (" in r.stderr
        assert f"fd {f.fileno()})" in r.stderr
        r = cli("umount", "-l", sandbox / "m")
        assert r.returncode == 0, r.stderr
        assert mount_entry(sandbox / "m") is None
        assert f.read() == "0\n"  # a lazily detached mount stays usable for open files


def test_umount_not_mounted(sandbox: Path) -> None:
    r = cli("umount", sandbox)
    assert r.returncode == 1
    assert f"Error: {sandbox}: not mounted" in r.stderr
    r = cli("umount", sandbox / "nope")
    assert r.returncode == 1
    assert "no such file or directory" in r.stderr


def test_read_only_bind(sandbox: Path) -> None:
    (sandbox / "src").mkdir()
    (sandbox / "dst").mkdir()
    r = cli("mount", "--bind", "-o", "ro", "./src", "./dst", cwd=sandbox)
    assert r.returncode == 0, r.stderr
    with pytest.raises(OSError, match="Read-only file system") as exc:
        (sandbox / "dst" / "x").write_text("x")
    assert exc.value.errno == errno.EROFS


def test_list_mounts(sandbox: Path) -> None:
    layers(sandbox, 2)
    (sandbox / "m").mkdir()
    mount(Mount("overlay", "overlay", (f"lowerdir={sandbox}/l0:{sandbox}/l1",)), sandbox / "m")
    r = cli("mount", "-t", "overlay")
    assert f"overlay on {sandbox}/m type overlay (ro,lowerdir={sandbox}/l0:{sandbox}/l1" in r.stdout


def test_trace_needs_fuse(sandbox: Path) -> None:
    layers(sandbox, 2)
    (sandbox / "m").mkdir()
    r = cli(
        "mount",
        "-t",
        "overlay",
        "--trace",
        "t.log",
        "-o",
        "lowerdir=l0:l1",
        "overlay",
        "m",
        cwd=sandbox,
    )
    assert r.returncode == 1
    assert "--trace works only with -t fuse.overunder" in r.stderr
    assert mounts_under(sandbox) == []


# --- parsing (no root needed) ---------------------------------------------------------------


def test_parse_options() -> None:
    o = parse_overlay_options(r"lowerdir=/a\:b:/c:d,upperdir=/u,workdir=/w,volatile,index=off")
    assert o.lowerdirs == [Path("/a:b"), Path("/c"), Path("d")]
    assert (o.upperdir, o.workdir) == (Path("/u"), Path("/w"))
    assert o.extra == ["volatile", "index=off"]
    assert not o.readonly
    assert format_overlay_options(o) == [
        r"lowerdir=/a\:b:/c:d",
        "upperdir=/u",
        "workdir=/w",
        "volatile",
        "index=off",
    ]
    assert parse_overlay_options(format_overlay_options(o)) == o
    assert parse_overlay_options(["lowerdir=/a:/b"]).readonly
    plus = parse_overlay_options(["lowerdir+=/x", "lowerdir+=/y", "upperdir=/u"])
    assert plus.lowerdirs == [Path("/x"), Path("/y")]
    assert o.resolved(Path("/base")).lowerdirs[2] == Path("/base/d")


def test_parse_rejects() -> None:
    with pytest.raises(InvalidArgument, match="empty layer path"):
        parse_overlay_options("lowerdir=/a:")
    with pytest.raises(Unsupported, match="data-only"):
        parse_overlay_options("lowerdir=/a::/b")
    with pytest.raises(InvalidArgument, match="upperdir= needs a path"):
        parse_overlay_options("lowerdir=/a,upperdir=")


def test_split_and_unescape() -> None:
    assert split_options(r'a=1,b="x,y",c\,d,,e') == ["a=1", 'b="x,y"', r"c\,d", "e"]
    assert unescape_octal(r"/tmp/a\040b\011c\134d") == "/tmp/a b\tc\\d"
    assert unescape_octal(r"/tmp/\303\251") == "/tmp/é"
