"""``overunder tag SOURCE TARGET``."""

from __future__ import annotations

import argparse
from typing import Any

from overunder.cli.context import Context


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SOURCE_IMAGE[:TAG]")
    p.add_argument("target", metavar="TARGET_IMAGE[:TAG]")
    p.set_defaults(func=run)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "tag",
        help="create a tag TARGET_IMAGE that refers to SOURCE_IMAGE",
        description="Point a name:tag at an image (taking it from another image if needed).",
    )
    add_arguments(p)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.images import tag

    tag(ctx.paths, args.source, args.target)
    return 0
