"""``overunder login``: Docker's ``login``; credentials in ~/.docker/config.json."""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import Any

from overunder.cli.commands.pull import add_insecure_flag
from overunder.cli.context import Context
from overunder.errors import InvalidArgument


def register(sub: Any) -> None:
    p = sub.add_parser(
        "login",
        help="log in to a registry",
        usage="overunder login [OPTIONS] [SERVER]",
        description="Check a username and password against a registry (Docker Hub when "
        "SERVER is not given) and store them in Docker's format in "
        "$DOCKER_CONFIG/config.json or ~/.docker/config.json (mode 0600), or in the "
        "credential helper named by credsStore/credHelpers there. pull and push use them.",
    )
    p.add_argument("server", nargs="?", metavar="SERVER")
    p.add_argument("-u", "--username", help="username")
    p.add_argument("-p", "--password", help="password (prefer --password-stdin)")
    p.add_argument("--password-stdin", action="store_true", help="take the password from stdin")
    add_insecure_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.push import login, stored_credentials
    from overunder.registry.config import Credentials

    password = args.password
    if args.password_stdin:
        if args.password:
            raise InvalidArgument(
                "--password and --password-stdin are mutually exclusive",
                hint="give the password one way",
            )
        if not args.username:
            raise InvalidArgument(
                "must provide --username with --password-stdin", hint="add -u USERNAME"
            )
        password = sys.stdin.read().rstrip("\r\n")
    elif args.password:
        ctx.stderr.write(
            "WARNING! Using --password via the CLI is insecure. Use --password-stdin.\n"
        )
    username = args.username
    if not username and not password:
        existing = stored_credentials(args.server)
        if not existing.empty and not sys.stdin.isatty():
            ctx.out("Authenticating with existing credentials...")
            login(args.server, existing, insecure=args.insecure)
            ctx.out("Login Succeeded")
            return 0
    if not username:
        if not sys.stdin.isatty():
            raise InvalidArgument(
                "cannot prompt for a username: stdin is not a terminal",
                hint="give -u USERNAME and --password-stdin",
            )
        username = input("Username: ").strip()
    if password is None:
        if not sys.stdin.isatty():
            raise InvalidArgument(
                "cannot prompt for a password: stdin is not a terminal",
                hint="pipe it with --password-stdin",
            )
        password = getpass.getpass("Password: ")
    if not username or not password:
        raise InvalidArgument("username and password are required", hint="give -u and -p")
    where = login(args.server, Credentials(username, password), insecure=args.insecure)
    if not where.startswith("credential helper"):
        ctx.stderr.write(
            f"WARNING! Your credentials are stored unencrypted in '{where}'.\n"
            "Configure a credential helper (credsStore) to remove this warning.\n"
        )
    ctx.out("Login Succeeded")
    return 0
