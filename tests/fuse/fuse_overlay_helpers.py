"""Helpers for the FUSE overlay tests: build layers, mount the kernel overlay and ours on the
same layers, and snapshot trees (merged or upper) in a form two implementations can be
compared on.

(A module, not a conftest.py, so ``from conftest import require_…`` keeps meaning
``tests/conftest.py``.)
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from overunder.mount.fuse import mount_fuse, unmount_fuse
from overunder.mount.options import parse_overlay_options

PAST_NS = 978307200 * 10**9  # 2001-01-01: every lower object's mtime
# Overlay xattrs the kernel writes for its own bookkeeping; the layout of the tree does not
# depend on them (overlay-semantics §3), so comparisons ignore them.
UNSTABLE_XATTRS = frozenset(
    {
        "trusted.overlay.origin",
        "trusted.overlay.impure",
        "trusted.overlay.nlink",
        "trusted.overlay.uuid",
        "trusted.overlay.metacopy",
    }
)

_libc = ctypes.CDLL(None, use_errno=True)


def world_dir(prefix: str) -> Path:
    """A temp dir other users can traverse (pytest's tmp dirs are 0700)."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    d.chmod(0o755)
    return d


def whiteout(path: Path) -> None:
    os.mknod(path, stat.S_IFCHR | 0o000, 0)


def set_past(root: Path) -> None:
    """Give everything under ``root`` the fixed lower mtime (children before parents)."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in [*filenames, *dirnames]:
            os.utime(os.path.join(dirpath, name), ns=(PAST_NS, PAST_NS), follow_symlinks=False)
    os.utime(root, ns=(PAST_NS, PAST_NS))


def write(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)


def errname(err: OSError) -> str:
    return errno.errorcode.get(err.errno or 0, str(err.errno))


def snapshot(root: Path, *, upper: bool = False) -> dict[str, tuple[object, ...]]:
    """Every object under ``root``: type, permission bits, owner, size and content hash
    (files), target (symlinks), rdev (devices), nlink (non-dirs, not whiteouts), whether the
    mtime is still the lower one, and xattrs (minus the kernel's bookkeeping ones)."""
    out: dict[str, tuple[object, ...]] = {}

    def visit(path: str, rel: str) -> None:
        st = os.lstat(path)
        fmt = stat.S_IFMT(st.st_mode)
        try:
            names = sorted(os.listxattr(path, follow_symlinks=False))
        except OSError:
            names = []
        xattrs = tuple(
            (n, os.getxattr(path, n, follow_symlinks=False))
            for n in names
            if n not in UNSTABLE_XATTRS
        )
        item: tuple[object, ...] = (fmt, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, xattrs)
        if fmt == stat.S_IFREG:
            with open(path, "rb") as fh:
                digest = hashlib.sha256(fh.read()).hexdigest()[:16]
            item += (st.st_size, digest, st.st_nlink, st.st_mtime_ns == PAST_NS)
        elif fmt == stat.S_IFLNK:
            item += (os.readlink(path), st.st_mtime_ns == PAST_NS)
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            item += (st.st_rdev,) if st.st_rdev == 0 else (st.st_rdev, st.st_nlink)
        elif fmt != stat.S_IFDIR:
            item += (st.st_nlink,)
        out[rel] = item
        if fmt == stat.S_IFDIR:
            for name in sorted(os.listdir(path)):
                visit(os.path.join(path, name), f"{rel}/{name}" if rel else name)

    if os.path.lexists(root):
        visit(str(root), "")
    if upper:
        out.pop("", None)  # the upper subtree root is made by copy-up of its parent merge
    return out


def describe_diff(a: dict[str, tuple[object, ...]], b: dict[str, tuple[object, ...]]) -> str:
    lines = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            lines.append(f"  {key!r}: {a.get(key)} != {b.get(key)}")
    return "\n".join(lines[:20])


def kernel_mount(
    lowers: Sequence[Path], upper: Path | None, work: Path | None, target: Path,
    extra: Sequence[str] = (),
) -> None:  # fmt: skip
    opts = ["lowerdir=" + ":".join(map(str, lowers))]
    if upper is not None and work is not None:
        opts += [f"upperdir={upper}", f"workdir={work}"]
    opts += list(extra)
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", ",".join(opts), str(target)],
        check=True,
        capture_output=True,
    )


def kernel_umount(target: Path) -> None:
    subprocess.run(["umount", str(target)], check=False, capture_output=True)
    if os.path.ismount(target):
        subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)


def ours_mount(
    lowers: Sequence[Path], upper: Path | None, work: Path | None, target: Path,
    trace: Path | None = None,
) -> int:  # fmt: skip
    items = ["lowerdir=" + ":".join(map(str, lowers))]
    if upper is not None and work is not None:
        items += [f"upperdir={upper}", f"workdir={work}"]
    return mount_fuse(parse_overlay_options(items), target, trace=trace)


def ours_umount(target: Path) -> None:
    with contextlib.suppress(Exception):
        unmount_fuse(target)
    if _is_mounted(target):
        subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)


def _is_mounted(target: Path) -> bool:
    real = os.path.realpath(target)
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        return any(line.split()[4] == real for line in fh)


@contextlib.contextmanager
def mounted_ours(
    lowers: Sequence[Path], upper: Path | None, work: Path | None, target: Path
) -> Iterator[Path]:
    ours_mount(lowers, upper, work, target)
    try:
        yield target
    finally:
        ours_umount(target)


@contextlib.contextmanager
def mounted_kernel(
    lowers: Sequence[Path], upper: Path | None, work: Path | None, target: Path,
    extra: Sequence[str] = (),
) -> Iterator[Path]:  # fmt: skip
    kernel_mount(lowers, upper, work, target, extra)
    try:
        yield target
    finally:
        kernel_umount(target)


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(-100, os.fsencode(old), -100, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(old))


def remove_tree(path: Path) -> None:
    """Remove a test's tree, never walking into something still mounted below it (a failed
    unmount must not turn cleanup into ``rm -rf`` through the mount)."""
    real = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        targets = [line.split()[4] for line in fh]
    for target in sorted(targets, key=len, reverse=True):
        if target.startswith(real.rstrip("/") + "/"):
            subprocess.run(["umount", "-l", target], check=False, capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


def cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``overunder ARGS`` as a user runs it (a separate process, real exit code)."""
    import sys

    return subprocess.run(
        [sys.executable, "-m", "overunder", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
