"""``overunder create``: create a container without starting it (Docker's ``create``)."""

from __future__ import annotations

import argparse
from typing import Any

from overunder.cli.commands._container_flags import add_create_flags, ensure_image, run_options
from overunder.cli.context import Context
from overunder.errors import OverunderError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "create",
        add_help=False,
        help="create a container",
        description="Create a container from IMAGE (its init layer and its own upper dir) and "
        "print its id; 'overunder start' runs it. Takes run's flags. Exit 125 on failure.",
    )
    p.add_argument("--help", action="help", help="show this help message and exit")
    add_create_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.containers import create_container

    try:
        opts = run_options(args, attach=False)
        ensure_image(ctx, args.image, args.pull)
        rec = create_container(ctx.paths, opts)
    except OverunderError as err:
        ctx.error(err)
        return 125
    ctx.out(rec.id)
    return 0
