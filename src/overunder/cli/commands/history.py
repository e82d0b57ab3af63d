"""``overunder history IMAGE``: the image's layers and the steps that made them."""

from __future__ import annotations

import argparse
import time
from typing import Any

from overunder.cli.context import Context


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--no-trunc", action="store_true", help="don't truncate output")
    p.add_argument("-q", "--quiet", action="store_true", help="only show image IDs")
    p.add_argument(
        "-H",
        "--human",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sizes and dates in human form (default)",
    )
    p.add_argument("--format", metavar="FORMAT", help="json (one object per line) or a Go template")
    p.set_defaults(func=run)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "history",
        help="show the history of an image",
        description="Newest first: each step of the image's config history with the size of "
        "the layer it made (0B for steps that made none) and <missing> where the step's image "
        "is not in the store.",
    )
    add_arguments(p)


def _ellipsis(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.cli.render import table
    from overunder.engine.images import history

    rows = history(ctx.paths, args.image)
    now = time.time()
    trunc = not args.no_trunc
    if args.quiet:
        for r in rows:
            ctx.out(r.id.removeprefix("sha256:")[:12] if trunc and r.id != "<missing>" else r.id)
        return 0
    objs = [r.to_json(now=now, trunc=trunc) for r in rows]
    if not args.human:
        for o, r in zip(objs, rows, strict=True):
            o["CreatedSince"] = o["CreatedAt"]
            o["Size"] = str(r.size)
    if args.format == "json":
        ctx.json_lines(objs)
        return 0
    if args.format:
        from overunder.cli.commands._gotemplate import render

        for o in objs:
            ctx.out(render(args.format, o))
        return 0
    body = [
        [
            o["ID"],
            o["CreatedSince"],
            _ellipsis(o["CreatedBy"], 45) if trunc else o["CreatedBy"],
            o["Size"],
            o["Comment"],
        ]
        for o in objs
    ]
    ctx.out(table(["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"], body))
    return 0
