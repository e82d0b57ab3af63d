"""``overunder images``: list images (``docker images``)."""

from __future__ import annotations

import argparse
from typing import Any

from overunder.cli.context import Context

_HEADERS = {
    "Repository": "REPOSITORY",
    "Tag": "TAG",
    "Digest": "DIGEST",
    "ID": "IMAGE ID",
    "CreatedSince": "CREATED",
    "CreatedAt": "CREATED AT",
    "Size": "SIZE",
    "VirtualSize": "SIZE",
    "Containers": "CONTAINERS",
    "SharedSize": "SHARED SIZE",
    "UniqueSize": "UNIQUE SIZE",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repository", nargs="?", metavar="REPOSITORY[:TAG]")
    p.add_argument("-a", "--all", action="store_true", help="show all images (same as default)")
    p.add_argument("-q", "--quiet", action="store_true", help="only show image IDs")
    p.add_argument("--no-trunc", action="store_true", help="show full image IDs")
    p.add_argument("--digests", action="store_true", help="show digests")
    p.add_argument(
        "-f",
        "--filter",
        action="append",
        default=[],
        metavar="FILTER",
        help="dangling=true|false, reference=NAME[:TAG]",
    )
    p.add_argument(
        "--format",
        metavar="FORMAT",
        help="json (one object per line), table, or a Go template like '{{.Repository}}:{{.Tag}}'",
    )
    p.set_defaults(func=run)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "images",
        help="list images",
        description="List images, newest first, one row per tag.",
    )
    add_arguments(p)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.cli.render import table
    from overunder.engine.images import list_images
    from overunder.errors import InvalidArgument

    dangling: bool | None = None
    repository = args.repository
    for f in args.filter:
        key, _, value = f.partition("=")
        if key == "dangling" and value in ("true", "false", "1", "0"):
            dangling = value in ("true", "1")
        elif key == "reference" and value:
            repository = value
        else:
            raise InvalidArgument(
                f"invalid filter {f!r}", hint="supported: dangling=true|false, reference=NAME"
            )
    rows = list_images(ctx.paths, repository=repository, dangling=dangling)
    if args.quiet:
        for r in rows:
            ctx.out(r.id if args.no_trunc else r.id.removeprefix("sha256:")[:12])
        return 0
    fmt = args.format
    if fmt == "json":
        ctx.json_lines([r.to_json() for r in rows])
        return 0
    objs = []
    for r in rows:
        o = r.to_json()
        if args.no_trunc:
            o["ID"] = r.id
        objs.append(o)
    if fmt and fmt != "table":
        from overunder.cli.commands._gotemplate import render, table_headers

        header = table_headers(fmt, _HEADERS)
        lines = [render(fmt, o) for o in objs]
        if header is not None:
            cells = [line.split("\t") for line in [header, *lines]]
            ctx.out(table(cells[0], cells[1:]))
        else:
            for line in lines:
                ctx.out(line)
        return 0
    cols = [
        "Repository",
        "Tag",
        *(["Digest"] if args.digests else []),
        "ID",
        "CreatedSince",
        "Size",
    ]
    ctx.out(table([_HEADERS[c] for c in cols], [[o[c] for c in cols] for o in objs]))
    return 0
