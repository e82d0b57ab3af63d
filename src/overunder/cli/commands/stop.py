"""``overunder stop``: SIGTERM, a grace period, then SIGKILL (Docker's ``stop``)."""

from __future__ import annotations

import argparse
from typing import Any

from overunder.cli.commands._container_flags import for_each
from overunder.cli.context import Context


def register(sub: Any) -> None:
    p = sub.add_parser(
        "stop",
        help="stop one or more running containers",
        description="Send SIGTERM, wait up to --time seconds (default 10), then SIGKILL. "
        "Prints each argument as given; stopping a stopped container is not an error.",
    )
    p.add_argument(
        "-t", "--time", "--timeout", type=int, default=None, help="seconds to wait (default 10)"
    )
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.containers import stop_container

    def stop(name: str) -> None:
        stop_container(ctx.paths, name, timeout=args.time)

    return for_each(ctx, args.containers, stop)
