"""``overunder mount``: mount(8)'s overlay form, executed by :mod:`overunder.mount`.

    overunder mount -t overlay -o lowerdir=./lower,upperdir=./upper,workdir=./work overlay ./merged
    overunder mount -t fuse.overunder -o lowerdir=…,upperdir=…,workdir=… overlay ./merged
    overunder mount --bind SRC DIR
    overunder mount                     # list overlay mounts, like mount(8) -t overlay

A single positional argument without ``-t`` is kept free for ``overunder mount CONTAINER``
(issue 7), so the two forms never collide: mount(8)'s form always has ``-t`` (or ``--bind``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from overunder.cli.context import Context
from overunder.errors import InvalidArgument

USAGE = (
    "overunder mount -t TYPE [-o OPTIONS] [--trace FILE] SOURCE DIR\n"
    "       overunder mount --bind [-o OPTIONS] SOURCE DIR\n"
    "       overunder mount [-t TYPE]            (list mounts)"
)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "mount",
        help="mount an overlay (mount(8) form: -t overlay -o lowerdir=…,upperdir=…,workdir=…)",
        usage=USAGE,
        description="Mount an overlay like mount(8): the kernel overlay (-t overlay) or "
        "overunder's FUSE overlay (-t fuse.overunder). Options are checked first, with the "
        "kernel's rules, and a refused mount says why in plain words and mounts nothing. "
        "Relative paths are resolved against the current directory. Several lowerdirs stack "
        "with the leftmost on top; lowerdir only (2 or more) gives a read-only mount; more than "
        "a page of options (about 120 layers) is passed layer by layer (fsconfig lowerdir+). "
        "Prints nothing on success. Without arguments, lists overlay mounts.",
    )
    p.add_argument(
        "-t",
        "--types",
        dest="type",
        metavar="TYPE",
        help="filesystem type: overlay (kernel) or fuse.overunder (FUSE)",
    )
    p.add_argument(
        "-o",
        "--options",
        dest="options",
        action="append",
        default=[],
        metavar="OPTIONS",
        help="comma-separated options: lowerdir=TOP:…:BOTTOM,upperdir=DIR,workdir=DIR[,ro,…]; "
        "may be repeated",
    )
    p.add_argument("--bind", action="store_true", help="bind-mount SOURCE on DIR")
    p.add_argument(
        "--trace",
        type=Path,
        metavar="FILE",
        help="fuse.overunder only: record every filesystem request to FILE",
    )
    p.add_argument(
        "args", nargs="*", metavar="SOURCE DIR", help="source (e.g. 'overlay') and mount point"
    )
    p.set_defaults(func=run)


def _items(options: list[str]) -> tuple[str, ...]:
    from overunder.mount.options import split_options

    items: list[str] = []
    for opt in options:
        items.extend(split_options(opt))
    return tuple(items)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.mount import Mount, mount

    positional: list[str] = args.args
    if not positional:
        return _list(args, ctx)
    if len(positional) > 2:
        raise InvalidArgument(
            f"too many arguments: {' '.join(positional)}", hint=f"usage: {USAGE.splitlines()[0]}"
        )
    if args.type is None and not args.bind:
        if len(positional) == 1:
            # `overunder mount CONTAINER` (issue 7, engineer H): print the container's merged dir.
            from overunder.engine.container_mount import mount_container

            ctx.out(str(mount_container(ctx.paths, positional[0])))
            return 0
        raise InvalidArgument(
            "missing -t TYPE", hint="use -t overlay (kernel) or -t fuse.overunder (FUSE)"
        )
    if len(positional) == 1:
        source, target = (args.type or "none"), positional[0]
    else:
        source, target = positional
    mtype = "bind" if args.bind else args.type
    m = Mount(type=mtype, source=source, options=_items(args.options))
    mount(m, Path(target), trace=args.trace)
    return 0


def _list(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.mount.mountinfo import read_mountinfo

    types = {args.type} if args.type else {"overlay", "fuse.overunder"}
    for e in read_mountinfo():
        if e.fstype in types:
            ctx.out(f"{e.source} on {e.target} type {e.fstype} ({','.join(e.super_options)})")
    return 0
