"""FUSE round trip: ``fstat`` N times with attr_timeout=0 (one GETATTR each) through our
pure-Python transport (a trivial filesystem) and through fuse-overlayfs, in the same run.

Usage (root, /dev/fuse, fuse-overlayfs installed)::

    .venv/bin/python bench/fuse_roundtrip.py [--calls 20000] [--runs 7]

Prints the median µs per call of each and our ratio to fuse-overlayfs. Reference
(performance-anchors.md B5): fuse-overlayfs ~8 µs, mfusepy -s ~13 µs, pyfuse3 ~20 µs.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from overunder.fuse.session import (
    ROOT_INODE,
    EntryAttributes,
    FileInfo,
    FuseError,
    Operations,
    RequestContext,
    Session,
)

FILE_INO = 2


class TrivialFS(Operations):
    """A root directory holding one empty file ``f``: the least a filesystem can do."""

    def __init__(self) -> None:
        now = time.time_ns()
        self.attrs = {
            ROOT_INODE: EntryAttributes(
                ROOT_INODE, st_mode=stat.S_IFDIR | 0o755, st_nlink=2, st_mtime_ns=now
            ),
            FILE_INO: EntryAttributes(FILE_INO, st_mode=stat.S_IFREG | 0o644, st_mtime_ns=now),
        }

    def lookup(self, parent: int, name: bytes) -> EntryAttributes:
        if parent == ROOT_INODE and name == b"f":
            return self.attrs[FILE_INO]
        raise FuseError(2)

    def getattr(self, ino: int, fh: int | None) -> EntryAttributes:
        return self.attrs[ino]

    def open(self, ino: int, flags: int, ctx: RequestContext) -> FileInfo:
        return FileInfo(fh=ino, keep_cache=True)

    def read(self, fh: int, off: int, size: int) -> bytes:
        return b""


def _is_mounted(path: Path) -> bool:
    target = os.fsencode(path)
    with open("/proc/self/mountinfo", "rb") as f:
        return any(line.split()[4] == target for line in f)


def time_fstat(path: Path, calls: int) -> float:
    """µs per fstat over ``calls`` calls."""
    fd = os.open(path, os.O_RDONLY)
    fstat = os.fstat
    try:
        start = time.perf_counter()
        for _ in range(calls):
            fstat(fd)
        return (time.perf_counter() - start) / calls * 1e6
    finally:
        os.close(fd)


def serve_ours(mnt: Path) -> int:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            session = Session(
                TrivialFS(), mnt, fsname="bench", attr_timeout=0.0, entry_timeout=0.0,
                options=["default_permissions"],
            )  # fmt: skip
            session.mount()
            session.run(ready_fd=w)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    ready, _, _ = select.select([r], [], [], 20)
    if not ready or os.read(r, 1) != b"\n":
        os.kill(pid, signal.SIGKILL)
        raise SystemExit("our FUSE daemon did not come up")
    os.close(r)
    return pid


@contextmanager
def mounted_ours(base: Path) -> Iterator[Path]:
    mnt = base / "ours"
    mnt.mkdir()
    pid = serve_ours(mnt)
    try:
        yield mnt / "f"
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        os.waitpid(pid, 0)


@contextmanager
def mounted_fuse_overlayfs(base: Path) -> Iterator[Path]:
    binary = shutil.which("fuse-overlayfs")
    if binary is None:
        raise SystemExit("fuse-overlayfs is not installed (apt-get install fuse-overlayfs)")
    lower, upper, work, mnt = (base / n for n in ("lower", "upper", "work", "fo"))
    for d in (lower, upper, work, mnt):
        d.mkdir()
    (lower / "f").write_bytes(b"")
    options = f"lowerdir={lower},upperdir={upper},workdir={work},timeout=0"
    subprocess.run([binary, "-o", options, str(mnt)], check=True, stderr=subprocess.DEVNULL)
    try:
        yield mnt / "f"
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        deadline = time.monotonic() + 5
        while _is_mounted(mnt) and time.monotonic() < deadline:
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("run as root (mounts fuse-overlayfs and our transport)", file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="fuse-roundtrip-"))
    names = ("overunder (pure Python)", "fuse-overlayfs 1.10 (C)")
    results: dict[str, list[float]] = {name: [] for name in names}
    try:
        with mounted_ours(base) as ours, mounted_fuse_overlayfs(base) as theirs:
            paths = dict(zip(names, (ours, theirs), strict=True))
            for name in names:  # warm-up: caches and the daemons' code paths
                time_fstat(paths[name], args.calls // 4)
            # Alternate the targets run by run, so background load hits both alike.
            for _ in range(args.runs):
                for name in names:
                    results[name].append(time_fstat(paths[name], args.calls))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"fstat x{args.calls}, attr_timeout=0, {args.runs} alternating runs, µs/call")
    medians = {name: statistics.median(values) for name, values in results.items()}
    for name, values in results.items():
        spread = f"{min(values):.1f}-{max(values):.1f}"
        print(f"  {name:26s} median {medians[name]:6.1f} µs  (runs {spread})")
    print(f"  ratio ours / fuse-overlayfs: {medians[names[0]] / medians[names[1]]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
