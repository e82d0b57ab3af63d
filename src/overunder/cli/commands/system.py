"""``overunder system df``: disk usage of images, containers, volumes, build cache."""

from __future__ import annotations

import argparse
from typing import Any

from overunder.cli.context import Context


def register(sub: Any) -> None:
    p = sub.add_parser(
        "system",
        help="manage the engine's store",
        description="Commands about the store as a whole.",
    )
    ssub = p.add_subparsers(dest="system_verb", metavar="COMMAND", required=True)
    df = ssub.add_parser(
        "df",
        help="show disk usage",
        description="TYPE TOTAL ACTIVE SIZE RECLAIMABLE, like 'docker system df'. "
        "Layers shared by images are counted once.",
    )
    df.add_argument(
        "--format", metavar="FORMAT", help="json (one object per line) or a Go template"
    )
    df.add_argument("-v", "--verbose", action="store_true", help="accepted for compatibility")
    df.set_defaults(func=run_df)


def run_df(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.cli.render import table
    from overunder.engine.images import df

    rows = df(ctx.paths)
    if args.format == "json":
        ctx.json_lines([r.to_json() for r in rows])
        return 0
    if args.format:
        from overunder.cli.commands._gotemplate import render

        for r in rows:
            ctx.out(render(args.format, r.to_json()))
        return 0
    ctx.out(table(["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"], [r.cells() for r in rows]))
    return 0
