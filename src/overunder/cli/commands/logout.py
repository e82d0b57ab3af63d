"""``overunder logout``: Docker's ``logout``."""

from __future__ import annotations

import argparse
from typing import Any

from overunder.cli.context import Context


def register(sub: Any) -> None:
    p = sub.add_parser(
        "logout",
        help="log out from a registry",
        usage="overunder logout [SERVER]",
        description="Remove the stored credentials of SERVER (Docker Hub when not given) "
        "from ~/.docker/config.json or its credential helper.",
    )
    p.add_argument("server", nargs="?", metavar="SERVER")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.push import logout

    key, removed = logout(args.server)
    if removed:
        ctx.out(f"Removing login credentials for {key}")
    else:
        ctx.out(f"Not logged in to {key}")
    return 0
