"""``overunder rmi``: untag and remove images."""

from __future__ import annotations

import argparse
from typing import Any

from overunder.cli.context import Context


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument(
        "-f",
        "--force",
        action="store_true",
        help="remove even when containers use it or it has several names",
    )
    p.add_argument("--no-prune", action="store_true", help="accepted for compatibility")
    p.set_defaults(func=run)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "rmi",
        help="remove one or more images",
        description="Untag images; an image left without names is deleted with the layers no "
        "other image or container uses. Refuses an image a container uses unless -f.",
    )
    add_arguments(p)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.images import rmi

    result = rmi(ctx.paths, args.images, force=args.force)
    for ev in result.events:
        ctx.out(str(ev))
    for err in result.errors:
        ctx.error(err)
    return 1 if result.errors else 0
