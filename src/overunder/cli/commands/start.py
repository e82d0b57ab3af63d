"""``overunder start``: start created or stopped containers (Docker's ``start``)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from overunder.cli.commands._container_flags import attached_terminal, for_each, proxy_signals
from overunder.cli.context import Context
from overunder.errors import NotFound, OverunderError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "start",
        help="start one or more stopped containers",
        description="Start containers; prints each name as given. With -a, attach to the "
        "(single) container's output and exit with its exit code.",
    )
    p.add_argument("-a", "--attach", action="store_true", help="attach STDOUT/STDERR")
    p.add_argument("-i", "--interactive", action="store_true", help="attach STDIN")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.containers import (
        Attach,
        find_container,
        kill_container,
        reconcile,
        remove_container,
        start_container,
    )
    from overunder.runtime import StartError

    if not args.attach:

        def start(name: str) -> None:
            _, handle = start_container(ctx.paths, name)
            if handle is not None:
                handle.close()

        return for_each(ctx, args.containers, start)
    if len(args.containers) != 1:
        ctx.stderr.write("Error: you cannot start and attach multiple containers at once\n")
        return 1
    name = args.containers[0]
    sys.stdout.flush()
    try:
        rec, handle = start_container(
            ctx.paths,
            name,
            attach=Attach(stdin=0 if args.interactive else None, stdout=1, stderr=2),
        )
    except StartError as err:
        ctx.error(err)
        return err.exit_code
    except OverunderError as err:
        ctx.error(err)
        return 1
    if handle is None:
        return 0
    tty = bool(rec.config.get("Tty"))

    def send(sig: int) -> None:
        kill_container(ctx.paths, rec.id, signal=str(sig))

    import contextlib

    try:
        with (
            attached_terminal(handle.master_fd, stdin=args.interactive),
            proxy_signals(send) if not tty else contextlib.nullcontext(),
        ):
            code = handle.wait_exit()
    finally:
        handle.close()
    try:
        rec = reconcile(ctx.paths, find_container(ctx.paths, rec.id))
    except NotFound:
        return code  # a --rm container: its shim removed it already
    if rec.host_config.get("AutoRemove"):
        with contextlib.suppress(OverunderError):
            remove_container(ctx.paths, rec.id, force=True)
    return code
