"""``overunder explain IMAGE|CONTAINER PATH``: one path through every layer, in plain words."""

from __future__ import annotations

import argparse
from typing import Any

from overunder.cli.context import Context


def register(sub: Any) -> None:
    p = sub.add_parser(
        "explain",
        help="say which layers hold or hide a path, top to bottom, and what the merged view shows",
        description="Follow PATH through every layer of an image or container, top first: "
        "each layer that holds it, deletes it (a whiteout), or hides it (a whiteout or a "
        "non-directory at a parent, an opaque parent dir) gets a line, and the verdict says "
        "which layer the merged view shows and why. Symlinks are shown, not followed. A name "
        "is looked up as a container first, then as an image.",
    )
    p.add_argument("name", metavar="IMAGE|CONTAINER")
    p.add_argument("path", metavar="PATH")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.explore import explain

    report = explain(ctx.paths, args.name, args.path)
    if args.format == "json":
        ctx.json(report.to_dict())
        return 0
    ctx.out(f"{report.path} in {report.stack.kind} {report.stack.name}, top layer first:")
    if not report.findings:
        ctx.out("  (no layer holds it)")
    width = max((len(f.layer.name) for f in report.findings), default=0) + 2
    for f in report.findings:
        mark = "=>" if f.role == "shown" else "  "
        what = f.what + (f" ({f.form})" if f.form else "")
        ctx.out(f"{mark} {f.layer.name.ljust(width)}{what}")
        ctx.out(f"   {' ' * width}{f.why or f.role}")
    ctx.out()
    ctx.out(report.verdict)
    return 0
