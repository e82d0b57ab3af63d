"""``overunder rm``: remove containers (Docker's ``rm``)."""

from __future__ import annotations

import argparse
from typing import Any

from overunder.cli.commands._container_flags import for_each
from overunder.cli.context import Context


def register(sub: Any) -> None:
    p = sub.add_parser(
        "rm",
        help="remove one or more containers",
        description="Remove containers: their upper dir, init layer, mount, logs and records. "
        "A running container needs -f (it is killed first). Prints each argument as given.",
    )
    p.add_argument("-f", "--force", action="store_true", help="kill a running container first")
    p.add_argument(
        "-v",
        "--volumes",
        action="store_true",
        help="remove anonymous volumes (accepted; overunder has none)",
    )
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.containers import remove_container

    def rm(name: str) -> None:
        remove_container(ctx.paths, name, force=args.force)

    return for_each(ctx, args.containers, rm, missing_ok=args.force)
