"""``overunder inspect``: containers and images as Docker's JSON."""

from __future__ import annotations

import argparse
from typing import Any

from overunder.cli.context import Context


def add_arguments(p: argparse.ArgumentParser, *, with_type: bool = True) -> None:
    p.add_argument("names", nargs="+", metavar="NAME|ID")
    p.add_argument(
        "-f",
        "--format",
        metavar="TEMPLATE",
        help="a Go template, e.g. '{{.GraphDriver.Data.UpperDir}}' or '{{json .Config}}'",
    )
    if with_type:
        p.add_argument("--type", choices=["container", "image"], help="only this kind of object")
    p.add_argument("-s", "--size", action="store_true", help="accepted for compatibility")
    p.set_defaults(func=run)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "inspect",
        help="show low-level information on containers and images",
        description="Print a JSON array with one object per NAME (containers are looked up "
        "first, then images), in Docker's shape; GraphDriver.Data names the real layer dirs.",
    )
    add_arguments(p)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.inspect import inspect_objects

    kind = getattr(args, "type", None)
    found, missing = inspect_objects(ctx.paths, args.names, type=kind)
    if args.format:
        from overunder.cli.commands._gotemplate import render

        for obj in found:
            ctx.out(render(args.format, obj))
    else:
        ctx.json(found)
    what = {"image": "image", "container": "container"}.get(kind or "", "object")
    for name in missing:
        ctx.stderr.write(f"Error: No such {what}: {name}\n")
    return 1 if missing else 0
