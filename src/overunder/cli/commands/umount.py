"""``overunder umount``: unmount like umount(8), naming the processes that keep it busy.

A later ``overunder umount CONTAINER`` (issue 7) will take a container name where a path is
given today: an argument that is an existing path is always a mount point, anything else will
be looked up as a container.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from overunder.cli.context import Context
from overunder.errors import NotFound


def register(sub: Any) -> None:
    p = sub.add_parser(
        "umount",
        help="unmount an overlay (or any mount); says which processes keep it busy",
        description="Unmount DIR (kernel overlay, fuse.overunder, bind). A busy mount is "
        "refused like umount(8) ('target is busy'), naming the processes that hold it (pid, "
        "command, and how: cwd, open file, mapped file). -l detaches it now and lets the "
        "kernel finish once it is no longer used. Prints nothing on success.",
    )
    p.add_argument(
        "-l", "--lazy", action="store_true", help="detach now, clean up when no longer busy"
    )
    p.add_argument("targets", nargs="+", metavar="DIR", help="mount point(s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.mount import mount_entry, unmount

    for target in args.targets:
        # A dead or broken FUSE mount point may fail stat, so ask mountinfo first.
        if mount_entry(Path(target)) is None and not os.path.lexists(target):
            # `overunder umount CONTAINER` (issue 7, engineer H): not a path, so a container.
            from overunder.engine.container_mount import umount_container

            try:
                umount_container(ctx.paths, target)
            except NotFound:
                raise NotFound(
                    f"{target}: no such file or directory (and no container of that name)"
                ) from None
            continue
        unmount(Path(target), lazy=args.lazy)
    return 0
