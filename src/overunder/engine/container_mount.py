"""A container's tree for the layer verbs (diff, cp, export, commit, ``mount CONTAINER``).

* :func:`container_layers` - the container's upper dir and its lowers (init layer, then the
  image layers), top first, straight from the snapshotter: ``diff`` and ``commit`` read these
  without mounting anything, so they work on created, running and stopped containers and on
  both storage drivers (both keep the same on-disk upper dir).
* :func:`container_root` - a mounted merged tree to copy into or out of: a running container's
  live merged dir, or, for a stopped one, the container's own ``overunder mount`` if there is
  one, else a private mount made for the duration of the ``with`` block, under the container's
  record lock so that no ``start`` can mount the same upper dir at the same time.
* :func:`mount_container` / :func:`umount_container` - ``overunder mount CONTAINER`` (like
  ``podman mount``): the container's merged dir, mounted when the container is stopped,
  with a use count so that ``umount`` never takes away a running container's own mount.

Gap: the files a running container gets bind-mounted (``/etc/hostname``, ``/etc/hosts``,
``/etc/resolv.conf``) are the init layer's empty files in these trees; ``cp`` handles them
itself (see :mod:`overunder.engine.container_cp`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from overunder import atomic
from overunder.engine.container_record import (
    ContainerRecord,
    State,
    ensure_private,
    load_record,
    record_lock,
    run_dir,
)
from overunder.engine.container_rootfs import merged_dir, mount_rootfs, unmount_rootfs
from overunder.engine.containers import find_container
from overunder.engine.images import stores
from overunder.engine.paths import EnginePaths
from overunder.errors import FailedPrecondition
from overunder.mount import mount_entry

__all__ = [
    "ContainerLayers",
    "container_layers",
    "container_root",
    "is_live",
    "mount_container",
    "umount_container",
]

_COUNT_FILE = "user-mounts"


@dataclass(frozen=True, slots=True)
class ContainerLayers:
    """The dirs of a container's tree: ``upper`` (its own changes), ``lowers`` top first
    (``lowers[0]`` is the init layer), and how many of the lowers are the image's."""

    upper: Path
    lowers: list[Path]
    init_layers: int


def is_live(rec: ContainerRecord) -> bool:
    return rec.state.status in (State.RUNNING, State.PAUSED)


def container_layers(paths: EnginePaths, rec: ContainerRecord) -> ContainerLayers:
    """The upper dir and lower dirs of ``rec`` (no mount needed)."""
    snaps = stores(paths).snapshots
    lowers = snaps.lower_dirs(rec.snapshot_key)
    init = 1 if rec.init_key and lowers else 0
    return ContainerLayers(snaps.upper_dir(rec.snapshot_key), lowers, init)


def _mounted(target: Path) -> bool:
    return mount_entry(target) is not None and os.path.ismount(target)


@contextlib.contextmanager
def container_root(paths: EnginePaths, name_or_id: str) -> Iterator[tuple[ContainerRecord, Path]]:
    """The container's merged tree, mounted, for the ``with`` block (module docstring).

    NotFound ``No such container: X`` for an unknown container."""
    rec = find_container(paths, name_or_id)
    live_dir = merged_dir(run_dir(paths, rec.id))
    if is_live(rec):
        if not _mounted(live_dir):
            raise FailedPrecondition(
                f"container {rec.name} is running but its root {live_dir} is not mounted",
                hint="the container's mount was removed under it; restart the container",
            )
        yield rec, live_dir
        return
    with record_lock(paths, rec.id):
        rec = load_record(paths, rec.id)
        if is_live(rec):  # started while we waited for the lock
            yield rec, live_dir
            return
        if _mounted(live_dir):  # `overunder mount CONTAINER` holds it
            yield rec, live_dir
            return
        rd = ensure_private(run_dir(paths, rec.id))
        for stale in rd.glob("tmp-*"):  # left by a copy that was killed: nobody holds them
            unmount_rootfs(stale)
        target = rd / f"tmp-{secrets.token_hex(4)}"
        snaps = stores(paths).snapshots
        try:
            mount_rootfs(snaps, rec.snapshot_key, rec.driver, target)
            yield rec, target
        finally:
            unmount_rootfs(target)


def _read_count(rd: Path) -> int:
    try:
        return int((rd / _COUNT_FILE).read_text().strip() or "0")
    except (FileNotFoundError, ValueError):
        return 0


def _write_count(rd: Path, n: int) -> None:
    path = rd / _COUNT_FILE
    if n <= 0:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    atomic.write_bytes(path, f"{n}\n".encode())


def mount_container(paths: EnginePaths, name_or_id: str) -> Path:
    """Mount a stopped container's tree on its merged dir (a running one's is already there)
    and return that dir; each call adds one use that :func:`umount_container` takes away."""
    rec = find_container(paths, name_or_id)
    with record_lock(paths, rec.id):
        rec = load_record(paths, rec.id)
        rd = ensure_private(run_dir(paths, rec.id))
        target = merged_dir(rd)
        mounted = _mounted(target)
        count = _read_count(rd) if mounted else 0
        if not mounted:
            if is_live(rec):
                raise FailedPrecondition(
                    f"container {rec.name} is running but its root {target} is not mounted",
                    hint="restart the container",
                )
            mount_rootfs(stores(paths).snapshots, rec.snapshot_key, rec.driver, target)
        _write_count(rd, count + 1)
        return target


def umount_container(paths: EnginePaths, name_or_id: str) -> ContainerRecord:
    """Take away one use of ``overunder mount CONTAINER``; the last one unmounts, unless the
    container is running (its own mount stays until it stops). Unmounted already: no-op."""
    rec = find_container(paths, name_or_id)
    with record_lock(paths, rec.id):
        rec = load_record(paths, rec.id)
        rd = run_dir(paths, rec.id)
        target = merged_dir(rd)
        if not _mounted(target):
            if rd.is_dir():
                _write_count(rd, 0)
            return rec
        count = max(0, _read_count(rd) - 1)
        _write_count(rd, count)
        if count == 0 and not is_live(rec):
            unmount_rootfs(target)
        return rec
