"""The store lock: commands that change the store hold an flock on ``<root>/lock``.

Writers take it exclusively (``load``, ``import``, ``rmi``, ``tag``, pull), so concurrent
commands on one root serialize; the kernel drops the lock when a process dies (SIGKILL too),
so a killed command never blocks the next one. The first writer after a crash cleans what the
dead one left (half-made ingests and layer dirs): :func:`recover`.

Readers (``images``, ``inspect``) do not take it: every file they read is replaced atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from overunder.engine.paths import EnginePaths
from overunder.errors import FailedPrecondition

__all__ = ["recover", "store_lock"]


@contextlib.contextmanager
def store_lock(
    paths: EnginePaths, *, shared: bool = False, blocking: bool = True, clean: bool = True
) -> Iterator[None]:
    """Hold the store lock for the ``with`` block. An exclusive holder first runs
    :func:`recover` (unless ``clean=False``). ``blocking=False`` raises FailedPrecondition
    when another command holds it."""
    paths.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(paths.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        flags = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, flags | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError as err:
            raise FailedPrecondition(
                f"the store {paths.root} is locked by another overunder command",
                hint="wait for it to finish",
            ) from err
        if not shared and clean:
            recover(paths)
        yield
    finally:
        os.close(fd)


def recover(paths: EnginePaths) -> list[Path]:
    """Remove the leftovers of killed commands: anonymous ingests nobody writes, unpacks
    nobody finishes, layer dirs no record names. Returns what was removed."""
    from overunder.content.store import ContentStore
    from overunder.snapshots.snapshotter import Snapshotter

    removed = ContentStore(paths.root / "content").cleanup_ingests()
    removed += Snapshotter(paths.root / "snapshots").cleanup()
    return removed
