"""``overunder kill``: send a signal to a container's main process (Docker's ``kill``)."""

from __future__ import annotations

import argparse
from typing import Any

from overunder.cli.commands._container_flags import for_each
from overunder.cli.context import Context


def register(sub: Any) -> None:
    p = sub.add_parser(
        "kill",
        help="kill one or more running containers",
        description="Send SIGKILL (or --signal) to each container's main process; prints "
        "each argument as given.",
    )
    p.add_argument("-s", "--signal", default="KILL", help="signal name or number (default KILL)")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.containers import kill_container

    def kill(name: str) -> None:
        kill_container(ctx.paths, name, signal=args.signal)

    return for_each(ctx, args.containers, kill)
