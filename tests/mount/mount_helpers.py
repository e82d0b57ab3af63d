"""Helpers for the mount and tour tests: run the real CLI, look at /proc/self/mountinfo, and
make sure nothing stays mounted under a test's tmp dir, whatever happens.

(A module, not a conftest.py: a second ``conftest`` module would shadow ``tests/conftest.py``
for the ``from conftest import require_…`` imports.)"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from conftest import require_overlay
from overunder.mount import unmount
from overunder.mount.mountinfo import read_mountinfo


def cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``overunder ARGS`` as a user runs it (a separate process, real exit code)."""
    return subprocess.run(
        [sys.executable, "-m", "overunder", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (from /proc/self/mountinfo)."""
    root = os.path.realpath(path)
    return [
        e.target
        for e in read_mountinfo()
        if e.target == root or e.target.startswith(root.rstrip("/") + "/")
    ]


def unmount_all(path: Path) -> None:
    for _ in range(3):
        targets = sorted(mounts_under(path), key=len, reverse=True)
        if not targets:
            return
        for t in targets:
            try:
                unmount(Path(t), lazy=True)
            except Exception:
                continue


@contextlib.contextmanager
def overlay_sandbox(tmp_path: Path) -> Iterator[Path]:
    """``tmp_path`` for an overlay test (root + kernel overlay required); anything mounted
    below it is unmounted on exit, even when the test failed. Use it in a fixture."""
    require_overlay()
    tmp_path.chmod(0o755)
    try:
        yield tmp_path
    finally:
        unmount_all(tmp_path)
