"""Executing and undoing :class:`Mount` records: the kernel overlay, bind mounts and our FUSE
overlay (``fuse.overunder``, started by :mod:`overunder.mount.fuse`).

The API::

    mount(Mount("overlay", "overlay", ("lowerdir=/l2:/l1", "upperdir=/u", "workdir=/w")), target)
    unmount(target)                 # busy -> FailedPrecondition naming the holder processes
    mount_entry(target)             # the /proc/self/mountinfo line for target, or None
    find_holders(target)            # processes using something under target

Relative layer paths are resolved against the current directory before mounting (as mount(8)
does), so ``/proc/self/mountinfo`` always shows absolute paths and views like
``overunder overlay tree`` can find the layers again.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from overunder.errors import FailedPrecondition, InvalidArgument, NotFound, Unsupported
from overunder.mount.holders import find_holders
from overunder.mount.kernel import bind_mount, kernel_mount, kernel_umount
from overunder.mount.mountinfo import find_entry, read_mountinfo
from overunder.mount.options import (
    OverlayOptions,
    parse_overlay_options,
    validate_overlay,
)
from overunder.mount.types import Holder, Mount, MountEntry

__all__ = [
    "FUSE_TYPE",
    "Holder",
    "Mount",
    "MountEntry",
    "OverlayOptions",
    "find_holders",
    "mount",
    "mount_entry",
    "overlay_options_of",
    "parse_overlay_options",
    "unmount",
    "validate_overlay",
]

FUSE_TYPE = "fuse.overunder"


def mount(m: Mount, target: Path, *, trace: Path | None = None) -> None:
    """Mount ``m`` on ``target``. Overlays are validated first (:func:`validate_overlay`), so a
    refused mount leaves nothing mounted and says why. ``trace`` (FUSE only) records every
    filesystem request to a file."""
    target = Path(os.path.abspath(target))
    if m.type == "overlay":
        if trace is not None:
            raise InvalidArgument(
                "--trace works only with -t fuse.overunder (the kernel overlay cannot be traced "
                "from here)",
                hint="drop --trace, or mount with -t fuse.overunder",
            )
        opts = parse_overlay_options(m.options).resolved()
        validate_overlay(opts, target)
        kernel_mount(
            "overlay", m.source or "overlay", target, opts.to_options(), fsconfig_lowerdirs=True
        )
    elif m.type == FUSE_TYPE:
        try:
            from overunder.mount.fuse import (  # type: ignore[import-not-found,unused-ignore]
                mount_fuse,
            )
        except ImportError as err:
            raise Unsupported(
                "the fuse.overunder driver is not available in this build",
                hint="use -t overlay (the kernel overlay)",
            ) from err
        mount_fuse(parse_overlay_options(m.options).resolved(), target, trace=trace)
    elif m.type == "bind":
        source = Path(os.path.abspath(m.source))
        if not source.exists():
            raise NotFound(f"bind source {source} does not exist")
        if not target.exists():
            raise NotFound(f"mount point {target} does not exist")
        bind_mount(source, target, [o for o in m.options if o not in ("bind", "rbind")])
    else:
        raise Unsupported(
            f"unknown mount type {m.type!r}",
            hint="use -t overlay, -t fuse.overunder or --bind",
        )


def mount_entry(target: Path) -> MountEntry | None:
    """What is mounted on ``target`` (the topmost mount), from /proc/self/mountinfo."""
    return find_entry(target)


def overlay_options_of(entry: MountEntry) -> OverlayOptions:
    """The layers of a mounted overlay (kernel or fuse.overunder) from its mountinfo entry.

    Accepts both ``lowerdir=a:b`` and the ``lowerdir+=`` items the kernel shows for layers
    given one at a time."""
    return parse_overlay_options(list(entry.super_options))


def unmount(target: Path, *, lazy: bool = False) -> None:
    """Unmount ``target``; ``lazy`` detaches it now and lets the kernel finish when it is no
    longer in use (``umount -l``).

    A busy mount raises FailedPrecondition naming the processes that hold it (pid, command
    and how: cwd, open file, …), found by :func:`find_holders`.
    """
    target = Path(os.path.abspath(target))
    entry = find_entry(target)
    if entry is None:
        if not os.path.lexists(target):
            raise NotFound(f"{target}: no such file or directory")
        raise InvalidArgument(f"{target}: not mounted", hint="see 'grep overlay /proc/mounts'")
    if entry.fstype == FUSE_TYPE and not lazy:
        from overunder.mount.fuse import (  # type: ignore[import-not-found,unused-ignore]
            unmount_fuse,
        )

        unmount_fuse(target)
        return
    err_no = kernel_umount(target, lazy=lazy)
    if err_no == 0:
        return
    if err_no == errno.EBUSY:
        raise _busy(target)
    if err_no == errno.EPERM:
        raise FailedPrecondition(
            f"{target}: unmounting needs root ({os.strerror(err_no)})", hint="run as root"
        )
    raise FailedPrecondition(f"umount {target} failed: {os.strerror(err_no)}")


def _busy(target: Path) -> FailedPrecondition:
    holders = find_holders(target)
    real = os.path.realpath(target)
    submounts = [e.target for e in read_mountinfo() if e.target.startswith(real.rstrip("/") + "/")]
    by_pid: dict[int, list[Holder]] = {}
    for h in holders:
        by_pid.setdefault(h.pid, []).append(h)
    parts = [
        f"pid {pid} ({hs[0].command}: {', '.join(h.how for h in hs)})" for pid, hs in by_pid.items()
    ]
    if submounts:
        parts.append("mounts below it: " + ", ".join(submounts))
    held = "; held by " + "; ".join(parts) if parts else ""
    return FailedPrecondition(
        f"umount: {target}: target is busy{held}",
        hint="stop those processes or move them out of the mount (cd elsewhere, close files), "
        "then retry; or 'overunder umount -l' to detach it now and finish when unused",
    )
