"""``overunder wait``: block until containers stop; print their exit codes."""

from __future__ import annotations

import argparse
from typing import Any

from overunder.cli.context import Context
from overunder.errors import OverunderError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "wait",
        help="block until containers stop, then print their exit codes",
        description="Wait for each container to stop and print its exit code, one per line.",
    )
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.containers import wait_container

    code = 0
    for name in args.containers:
        try:
            ctx.out(str(wait_container(ctx.paths, name)))
        except OverunderError as err:
            ctx.error(err)
            code = 1
    return code
