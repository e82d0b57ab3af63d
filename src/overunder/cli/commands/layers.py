"""``overunder layers IMAGE|CONTAINER``: what each layer did, and the space wasted, once."""

from __future__ import annotations

import argparse
from typing import Any

from overunder.cli.context import Context
from overunder.cli.render import human_size, table


def register(sub: Any) -> None:
    p = sub.add_parser(
        "layers",
        help="show each layer of an image or container: size, entries added/changed/deleted, "
        "bytes hidden by later layers, and the wasted space with its reasons",
        description="One row per layer, top first: its digest, the build step that made it, "
        "its size, how many entries it added, changed and deleted relative to the layers "
        "below, and how many of its bytes later layers hide. Then the wasted space: bytes "
        "stored in some layer that the merged view never shows (each hidden copy counted "
        "once, the shown copy never), with the reason for each (a chmod or chown re-copy, a "
        "replacement, a deletion, an opaque dir). A name is looked up as a container first "
        "(its upper dir and init layer count as layers), then as an image.",
    )
    p.add_argument("name", metavar="IMAGE|CONTAINER")
    p.add_argument(
        "--top",
        type=int,
        default=10,
        metavar="N",
        help="list the N biggest wasted copies (default 10; 0 lists all)",
    )
    p.add_argument("--no-trunc", action="store_true", help="do not shorten CREATED BY")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=run)


def _trunc(text: str, width: int, on: bool) -> str:
    text = " ".join(text.split())
    return text if not on or len(text) <= width else text[: width - 1] + "…"


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.explore import layers
    from overunder.explain.layers import KIND_WORDS

    report = layers(ctx.paths, args.name)
    top = None if args.top <= 0 else args.top
    if args.format == "json":
        ctx.json(report.to_dict(top=top))
        return 0
    rows = []
    for r in report.rows:
        rows.append(
            [
                r.info.name,
                r.info.short if r.info.role == "image" else "-",
                human_size(r.size),
                str(r.added),
                str(r.changed),
                str(r.deleted),
                human_size(r.hidden),
                _trunc(r.info.created_by or r.info.comment, 60, not args.no_trunc),
            ]
        )
    ctx.out(
        table(
            ["LAYER", "DIGEST", "SIZE", "ADDED", "CHANGED", "DELETED", "HIDDEN", "CREATED BY"],
            rows,
        )
    )
    ctx.out()
    ctx.out(
        f"Total size: {human_size(report.total)}   "
        f"Wasted: {human_size(report.wasted)} in {len(report.waste)} hidden "
        f"cop{'y' if len(report.waste) == 1 else 'ies'} (each counted once)   "
        f"Efficiency: {report.efficiency * 100:.1f}%"
    )
    if not report.waste:
        ctx.out("Nothing wasted: every stored byte shows in the merged view.")
        return 0
    ctx.out()
    ctx.out("Wasted space by cause:")
    for cause, kind, n, size in report.by_cause():
        copies = f"{n} cop{'y' if n == 1 else 'ies'}"
        ctx.out(
            f"  {human_size(size):>8}  {copies:<11} {KIND_WORDS.get(kind, kind):<20} "
            f"caused by {cause.name}"
        )
    items = report.waste if top is None else report.waste[:top]
    ctx.out()
    ctx.out(f"Biggest wasted copies ({len(items)} of {len(report.waste)}):")
    for w in items:
        ctx.out(f"  {human_size(w.size):>8}  {w.reason()}  [bytes in {w.layer.name}]")
    return 0
