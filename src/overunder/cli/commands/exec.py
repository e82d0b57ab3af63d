"""``overunder exec``: run a command in a running container (Docker's ``exec``)."""

from __future__ import annotations

import argparse
from typing import Any

from overunder.cli.context import Context


def register(sub: Any) -> None:
    p = sub.add_parser(
        "exec",
        help="run a command in a running container",
        description="Run COMMAND in the container with its namespaces, capabilities, "
        "environment and user. Exit: the command's code; 126 when it cannot be started "
        "(Docker prints that message on stdout); 1 when the container is not running.",
    )
    p.add_argument("-d", "--detach", action="store_true", help="run in the background")
    p.add_argument("-i", "--interactive", action="store_true", help="keep STDIN open")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-TTY")
    p.add_argument(
        "-e", "--env", action="append", default=[], metavar="KEY=VALUE", help="set a variable"
    )
    p.add_argument("-w", "--workdir", help="working directory inside the container")
    p.add_argument("-u", "--user", help="user: name|uid[:group|gid]")
    p.add_argument("--privileged", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.containers import ExecOptions, exec_in_container
    from overunder.runtime import StartError

    if not args.command:
        ctx.stderr.write("Error: exec needs a COMMAND\nHint: see 'overunder exec --help'.\n")
        return 2
    opts = ExecOptions(
        command=list(args.command),
        env=list(args.env),
        workdir=args.workdir,
        user=args.user,
        interactive=args.interactive,
        tty=args.tty,
        detach=args.detach,
    )
    try:
        return exec_in_container(ctx.paths, args.container, opts)
    except StartError as err:
        ctx.out(err.message)  # Docker prints runc's failure on stdout
        return err.exit_code
