"""``overunder pause``: Docker's ``pause`` (the cgroup freezer, through ``runc pause``)."""

from __future__ import annotations

import argparse
from typing import Any

from overunder.cli.commands._container_flags import for_each
from overunder.cli.context import Context


def register(sub: Any) -> None:
    p = sub.add_parser(
        "pause",
        help="suspend all processes in one or more containers",
        description="Freeze every process of each running container (the cgroup freezer). "
        "A paused container shows as 'Up … (Paused)' in ps and State.Paused true in inspect; "
        "exec into it is refused; stop, kill -s KILL and rm -f thaw it. Prints each argument "
        "as given.",
    )
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.containers import pause_container

    def one(name: str) -> None:
        pause_container(ctx.paths, name)

    return for_each(ctx, args.containers, one)
