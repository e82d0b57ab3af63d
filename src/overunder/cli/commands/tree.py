"""``overunder tree IMAGE|CONTAINER [PATH]``: the merged tree with each entry's source layer."""

from __future__ import annotations

import argparse
from typing import Any

from overunder.cli.context import Context


def register(sub: Any) -> None:
    p = sub.add_parser(
        "tree",
        help="the merged tree of an image or container, each entry with the layer it comes "
        "from, whiteouts and opaque dirs shown",
        description="Draw the merged tree of an image or container (below PATH, default /), "
        "marking the layer each entry comes from (layer N counts image layers from the "
        "bottom; a container adds its init layer and its upper dir), the layers merged into "
        "each dir, and every whiteout and opaque dir with what it hides. Nothing is mounted: "
        "the layer dirs are read directly. Same drawing as 'overunder overlay tree'.",
    )
    p.add_argument("name", metavar="IMAGE|CONTAINER")
    p.add_argument("path", nargs="?", default="/", metavar="PATH")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.cli.commands.overlay import render_tree
    from overunder.engine.explore import tree

    view = tree(ctx.paths, args.name, args.path)
    if args.format == "json":
        ctx.json(view.to_dict())
    else:
        ctx.out(render_tree(view))
    return 0
