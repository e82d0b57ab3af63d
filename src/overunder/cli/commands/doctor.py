"""``overunder doctor``: what this host offers and what is missing."""

from __future__ import annotations

import argparse
from typing import Any

from overunder.cli.context import Context


def register(sub: Any) -> None:
    p = sub.add_parser(
        "doctor",
        help="check what this host offers (overlay, FUSE, runtime)",
        description="Check the kernel overlay, xattrs on the store's filesystem, "
        "/dev/fuse, the OCI runtime and cgroups; say what each missing piece "
        "breaks and how to get it. Exits 1 when a required piece is missing.",
    )
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.doctor import run_checks

    checks = run_checks(ctx.paths)
    if args.format == "json":
        ctx.json([c.to_dict() for c in checks])
    else:
        for c in checks:
            mark = "ok" if c.ok else ("MISSING" if c.required else "missing")
            ctx.out(f"{mark:8} {c.name}: {c.detail}")
            if not c.ok:
                if c.breaks:
                    ctx.out(f"{'':8}   breaks: {c.breaks}")
                if c.fix:
                    ctx.out(f"{'':8}   fix:    {c.fix}")
    return 0 if all(c.ok or not c.required for c in checks) else 1
