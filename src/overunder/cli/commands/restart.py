"""``overunder restart``: stop (with a grace period) and start again (Docker's ``restart``)."""

from __future__ import annotations

import argparse
from typing import Any

from overunder.cli.commands._container_flags import for_each
from overunder.cli.context import Context


def register(sub: Any) -> None:
    p = sub.add_parser(
        "restart",
        help="restart one or more containers",
        description="Stop (SIGTERM, --time seconds, SIGKILL) and start each container; "
        "prints each argument as given.",
    )
    p.add_argument(
        "-t", "--time", "--timeout", type=int, default=None, help="seconds to wait (default 10)"
    )
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.containers import restart_container

    def restart(name: str) -> None:
        restart_container(ctx.paths, name, timeout=args.time)

    return for_each(ctx, args.containers, restart)
