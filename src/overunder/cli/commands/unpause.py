"""``overunder unpause``: Docker's ``unpause`` (the cgroup freezer, through ``runc resume``)."""

from __future__ import annotations

import argparse
from typing import Any

from overunder.cli.commands._container_flags import for_each
from overunder.cli.context import Context


def register(sub: Any) -> None:
    p = sub.add_parser(
        "unpause",
        help="resume all processes in one or more paused containers",
        description="Thaw each paused container. Prints each argument as given.",
    )
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.containers import unpause_container

    def one(name: str) -> None:
        unpause_container(ctx.paths, name)

    return for_each(ctx, args.containers, one)
