"""``overunder diff``: what a container changed (Docker's A/C/D lines), or what changed from
one container or image to another."""

from __future__ import annotations

import argparse
from typing import Any

from overunder.cli.context import Context
from overunder.errors import InvalidArgument


def register(sub: Any) -> None:
    p = sub.add_parser(
        "diff",
        help="show a container's filesystem changes (A added, C changed, D deleted)",
        usage="overunder diff [--stat | --patch] [--format json] CONTAINER\n"
        "       overunder diff [--format json] CONTAINER|IMAGE CONTAINER|IMAGE",
        description="With one CONTAINER: Docker's lines 'A /path', 'C /path', 'D /path' for "
        "what the container added, changed and deleted relative to its image, read from the "
        "container's upper dir without mounting (created, running or stopped containers), "
        "sorted by path. --stat adds the bytes of each entry and totals; --patch prints a "
        "unified diff of the regular files that changed. With two names: the changes from the "
        "first tree to the second (each a container, looked up first, or an image), with "
        "sizes and the layer of the second that made each change.",
    )
    p.add_argument("--stat", action="store_true", help="bytes added/changed per entry, and totals")
    p.add_argument("--patch", "-p", action="store_true", help="unified diff of changed text files")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.add_argument("names", nargs="+", metavar="NAME", help="container (or two trees to compare)")
    p.set_defaults(func=run)


def _size(n: int | None) -> str:
    from overunder.cli.render import human_size

    return "-" if n is None else human_size(n)


def run(args: argparse.Namespace, ctx: Context) -> int:
    names: list[str] = args.names
    if len(names) > 2:
        raise InvalidArgument(
            f"diff takes one container or two trees, got {len(names)} names",
            hint="overunder diff CONTAINER, or overunder diff A B",
        )
    if args.stat and args.patch:
        raise InvalidArgument("--stat and --patch cannot be combined", hint="pick one")
    if len(names) == 2:
        return _two(args, ctx, names[0], names[1])
    from overunder.engine import container_diff as cd

    if args.patch:
        for line in cd.diff_patch(ctx.paths, names[0]):
            ctx.stdout.write(line)
        return 0
    if args.stat:
        st = cd.diff_stat(ctx.paths, names[0])
        if args.format == "json":
            ctx.json({"Changes": [e.to_json() for e in st.entries], "Totals": st.totals_json()})
            return 0
        rows = [(f"{e.kind.value} {e.path}", _stat_cell(e)) for e in st.entries]
        width = max((len(r[0]) for r in rows), default=0)
        for left, right in rows:
            ctx.out(f"{left.ljust(width)}  {right}".rstrip())
        ctx.out(
            f"{st.count(cd.ChangeKind.ADD)} added ({_size(st.added_bytes)}), "
            f"{st.count(cd.ChangeKind.MODIFY)} changed ({_size(st.changed_bytes)}), "
            f"{st.count(cd.ChangeKind.DELETE)} deleted ({_size(st.deleted_bytes)})"
        )
        return 0
    changes = cd.container_changes(ctx.paths, names[0])
    if args.format == "json":
        ctx.json([{"Kind": c.kind.value, "Path": c.path} for c in changes])
    else:
        for c in changes:
            ctx.out(str(c))
    return 0


def _stat_cell(e: Any) -> str:
    if e.kind.value == "A":
        return "" if e.size is None or e.type == "dir" else f"+{_size(e.size)}"
    if e.kind.value == "D":
        return f"-{_size(e.old_size)}" if e.old_size else ""
    if e.type == "dir":
        return ""
    if e.size == e.old_size:
        return f"{_size(e.size)} (same size)"
    return f"{_size(e.size)} (was {_size(e.old_size)})"


def _two(args: argparse.Namespace, ctx: Context, a: str, b: str) -> int:
    from overunder.cli.render import table
    from overunder.engine.image_diff import diff_objects

    if args.patch:
        raise InvalidArgument("--patch compares a container with its image", hint="give one name")
    ta, tb, changes = diff_objects(ctx.paths, a, b)
    if args.format == "json":
        ctx.json(
            {
                "From": {"Name": ta.name, "Type": ta.kind, "Id": ta.ident},
                "To": {"Name": tb.name, "Type": tb.kind, "Id": tb.ident},
                "Changes": [c.to_json() for c in changes],
            }
        )
        return 0
    rows = []
    for c in changes:
        st = c.stat
        size = _stat_cell(st)
        rows.append([f"{st.kind.value} {st.path}", size, str(c.layer) if c.layer else "-"])
    if rows:
        ctx.out(table(["CHANGE", "SIZE", "LAYER"], rows))
    return 0
