"""Round trips through the real kernel overlay: changes made in a mounted overlay, the upper
dir written with write_layer, then applied with apply_layer

* onto a copy of the lower (``flatten=True``): the tree must equal the merged view, and
* into a fresh layer dir mounted by the kernel above the lower: the merged view must match.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import require_overlay
from overunder.layerfs.tar_apply import apply_layer
from overunder.layerfs.tar_write import write_layer

Snap = dict[str, tuple[object, ...]]


def snapshot(root: Path) -> Snap:
    out: Snap = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in sorted(dirnames + filenames):
            p = Path(dirpath, n)
            rel = str(p.relative_to(root))
            st = p.lstat()
            fmt = stat.S_IFMT(st.st_mode)
            extra: object = None
            if fmt == stat.S_IFREG:
                extra = hashlib.sha256(p.read_bytes()).hexdigest()
                if st.st_nlink > 1:
                    inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            elif fmt == stat.S_IFLNK:
                extra = os.readlink(p)
            elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
                extra = st.st_rdev
            xattrs = ()
            if fmt != stat.S_IFLNK:
                xattrs = tuple(
                    sorted((x, os.getxattr(p, x)) for x in os.listxattr(p) if x.startswith("user."))
                )
            mtime = None if fmt == stat.S_IFDIR else int(st.st_mtime)
            out[rel] = (fmt, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, extra, xattrs, mtime)
    for group in inodes.values():
        for rel in group:
            out[rel] = (*out[rel], tuple(sorted(group)))
    return out


def mount_overlay(target: Path, lowers: list[Path], upper: Path | None = None) -> None:
    opts = "lowerdir=" + ":".join(map(str, lowers))
    if upper is not None:
        work = upper.parent / (upper.name + "-work")
        work.mkdir()
        opts += f",upperdir={upper},workdir={work}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, target], check=True)


def umount(target: Path) -> None:
    if os.path.ismount(target):
        subprocess.run(["umount", target], check=True)


def build_lower(lower: Path) -> None:
    for p, text in {
        "etc/localtime": "UTC",
        "etc/hosts": "127.0.0.1 localhost",
        "etc/passwd": "root:x:0:0",
        "bin/hostname": "#!busybox",
        "bin/su": "#!setuid",
        "data/chmod.txt": "chmod me",
        "data/own.txt": "chown me",
        "data/modify.txt": "before",
        "data/rename-me.txt": "moving",
        "data/opq/old1": "old",
        "data/opq/olddir/deep": "deeper",
        "data/rdir/sub/x": "x",
        "data/rdir/x.txt": "stays",
        "data/dir2file/child": "c",
        "data/file2dir": "f",
        "data/hl-a": "hard",
    }.items():
        (lower / p).parent.mkdir(parents=True, exist_ok=True)
        (lower / p).write_text(text)
    os.chmod(lower / "bin/su", 0o4755)
    os.link(lower / "data/hl-a", lower / "data/hl-b")
    os.symlink("/etc/passwd", lower / "data/pwlink")
    os.symlink("../etc", lower / "data/etclink")
    os.setxattr(lower / "etc/hosts", "user.origin", b"lower")
    os.mkfifo(lower / "data/fifo")
    (lower / "empty").mkdir()
    for dirpath, _dirs, files in os.walk(lower):
        for n in files:
            os.utime(Path(dirpath, n), (1_600_000_000, 1_600_000_000), follow_symlinks=False)


def change_merged(m: Path) -> None:
    (m / "hello.txt").write_text("hello")
    (m / "etc/goodbye.txt").write_text("bye")
    os.unlink(m / "etc/localtime")
    os.unlink(m / "bin/hostname")
    shutil.rmtree(m / "data/rdir/sub")
    shutil.rmtree(m / "data/opq")
    (m / "data/opq").mkdir()
    (m / "data/opq/new.txt").write_text("new")
    with (m / "data/modify.txt").open("a") as fh:
        fh.write(" after")
    os.chmod(m / "data/chmod.txt", 0o751)
    os.chown(m / "data/own.txt", 1234, 2345)
    os.rename(m / "data/rename-me.txt", m / "data/renamed.txt")
    shutil.rmtree(m / "data/dir2file")
    (m / "data/dir2file").write_text("now a file")
    os.unlink(m / "data/file2dir")
    (m / "data/file2dir").mkdir()
    (m / "data/file2dir/inside").write_text("i")
    os.symlink("/data/random.bin", m / "data/random.link")
    (m / "new/deep/dir").mkdir(parents=True)
    (m / "new/deep/dir/f").write_text("deep")
    os.link(m / "new/deep/dir/f", m / "new/hard")
    os.setxattr(m / "etc/hosts", "user.changed", b"yes")
    os.chmod(m / "new/deep", 0o700)
    os.mkfifo(m / "new/fifo")


@pytest.fixture(scope="module")
def committed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Snap, bytes]:
    """(lower, merged snapshot, layer tar) from one real overlay session."""
    require_overlay()
    top = tmp_path_factory.mktemp("roundtrip")
    lower, upper, merged = top / "lower", top / "upper", top / "merged"
    for p in (lower, upper, merged):
        p.mkdir()
    build_lower(lower)
    mount_overlay(merged, [lower], upper)
    try:
        change_merged(merged)
        snap = snapshot(merged)
    finally:
        umount(merged)
    out = io.BytesIO()
    write_layer(upper, out, whiteout_mtime=1_700_000_000)
    return lower, snap, out.getvalue()


def test_layer_applied_onto_a_copy_of_the_lower_equals_the_merged_view(
    committed: tuple[Path, Snap, bytes], tmp_path: Path
) -> None:
    lower, snap, tar = committed
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", lower, copy], check=True)
    apply_layer(io.BytesIO(tar), copy, flatten=True)
    assert snapshot(copy) == snap


def test_layer_dir_mounted_by_the_kernel_equals_the_merged_view(
    committed: tuple[Path, Snap, bytes], tmp_path: Path
) -> None:
    lower, snap, tar = committed
    layer = tmp_path / "layer"
    layer.mkdir()
    apply_layer(io.BytesIO(tar), layer)
    merged = tmp_path / "merged"
    merged.mkdir()
    mount_overlay(merged, [layer, lower])
    try:
        assert snapshot(merged) == snap
    finally:
        umount(merged)


def test_rewriting_the_applied_layer_gives_the_same_tar(
    committed: tuple[Path, Snap, bytes], tmp_path: Path
) -> None:
    """apply -> write is a fixed point: the diff ID of a re-exported layer does not drift."""
    _, _, tar = committed
    layer = tmp_path / "layer"
    layer.mkdir()
    apply_layer(io.BytesIO(tar), layer)
    out = io.BytesIO()
    write_layer(layer, out, whiteout_mtime=1_700_000_000)
    assert out.getvalue() == tar
