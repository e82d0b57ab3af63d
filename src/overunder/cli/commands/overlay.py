"""``overunder overlay tree``: the merged tree of an overlay, and where each entry comes from."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overunder.cli.context import Context
from overunder.errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from overunder.mount.view import HiddenRef, OverlayTree, TreeEntry


def register(sub: Any) -> None:
    p = sub.add_parser(
        "overlay",
        help="teaching views over an overlay (tree)",
        description="Views that show how an overlay is put together.",
    )
    verbs = p.add_subparsers(dest="overlay_verb", metavar="COMMAND", required=True)
    t = verbs.add_parser(
        "tree",
        help="the merged tree, marking which layer each entry comes from and what each "
        "whiteout and opaque dir hides",
        description="Print the merged tree of an overlay. Each entry says which layer it comes "
        "from (upper, or lower N counting lowerdir= from the left, i.e. from the top); merged "
        "dirs list every layer they merge; whiteouts (char 0/0 in an upper) and opaque dirs "
        "are shown with what they hide and in which layer. Give the merged dir of a mounted "
        "overlay (its layers are found from the mount), or the layers themselves. The layer "
        "dirs are read directly, so this works on an unmounted overlay too.",
    )
    t.add_argument("merged", nargs="?", type=Path, metavar="MERGED", help="a mounted overlay")
    t.add_argument(
        "--lowerdir",
        action="append",
        default=[],
        metavar="DIRS",
        help="lower layers, top first, colon-separated like lowerdir= (may be repeated)",
    )
    t.add_argument("--upperdir", type=Path, metavar="DIR", help="the upper layer")
    t.add_argument("--workdir", type=Path, metavar="DIR", help="the workdir (shown, not read)")
    t.add_argument("--format", choices=["text", "json"], default="text")
    t.set_defaults(func=run_tree)
    # `watch` (engineer C2): the live view of a fuse.overunder mount's trace.
    w = verbs.add_parser(
        "watch",
        help="show copy-ups, whiteouts, opaque dirs and dir renames of a fuse.overunder mount "
        "as they happen",
        description="Follow the trace of a fuse.overunder mount (mounted with --trace FILE): "
        "every copy-up (path, bytes, source layer), whiteout, opaque dir and directory "
        "redirect, one line each, as they happen. Ctrl-C stops. Give the mount point, or the "
        "trace file itself with --trace-file.",
    )
    w.add_argument("merged", nargs="?", type=Path, metavar="MERGED", help="a fuse.overunder mount")
    w.add_argument("--trace-file", type=Path, metavar="FILE", help="read this trace file")
    w.add_argument("--no-follow", action="store_true", help="print what is there and exit")
    w.add_argument("--format", choices=["text", "json"], default="text")
    w.set_defaults(func=run_watch)


def run_watch(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.fuse.trace import watch
    from overunder.mount.fuse import trace_file_of

    if (args.merged is None) == (args.trace_file is None):
        raise InvalidArgument(
            "give either MERGED or --trace-file", hint="overunder overlay watch ./merged"
        )
    path = args.trace_file if args.trace_file is not None else trace_file_of(args.merged)
    if not path.exists():
        raise NotFound(f"trace file {path} does not exist", hint="check the --trace path")
    import contextlib

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a person stops watching
        watch(path, follow=not args.no_follow, as_json=args.format == "json", out=ctx.out)
    return 0


def run_tree(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.mount import mount_entry
    from overunder.mount.options import OverlayOptions, parse_overlay_options
    from overunder.mount.view import options_of_mount, overlay_tree

    given = bool(args.lowerdir or args.upperdir)
    if args.merged is not None and given:
        raise InvalidArgument(
            "give either MERGED or --lowerdir/--upperdir, not both",
            hint="overunder overlay tree ./merged",
        )
    if args.merged is not None:
        entry = mount_entry(args.merged)
        if entry is None:
            raise NotFound(
                f"nothing is mounted on {args.merged}",
                hint="mount it first, or give the layers: --lowerdir L1:L2 --upperdir U",
            )
        opts = options_of_mount(entry)
        tree = overlay_tree(opts, merged=Path(entry.target), fstype=entry.fstype)
    elif given:
        lowers: list[Path] = []
        for item in args.lowerdir:
            lowers.extend(parse_overlay_options([f"lowerdir={item}"]).lowerdirs)
        opts = OverlayOptions(lowerdirs=lowers, upperdir=args.upperdir, workdir=args.workdir)
        tree = overlay_tree(opts.resolved())
    else:
        raise InvalidArgument(
            "overlay tree needs MERGED or --lowerdir", hint="overunder overlay tree ./merged"
        )
    if args.format == "json":
        ctx.json(tree.to_dict())
    else:
        ctx.out(render_tree(tree))
    return 0


def _hides(hidden: Sequence[HiddenRef]) -> str:
    """``hides /d/x, /d/y (lower 2)``, grouped by layer in stack order."""
    by_layer: dict[str, list[str]] = {}
    for h in hidden:
        by_layer.setdefault(h.layer.name, []).append(h.path)
    if not by_layer:
        return "hides nothing below"
    return "hides " + "; ".join(f"{', '.join(ps)} ({name})" for name, ps in by_layer.items())


def _describe(e: TreeEntry) -> str:
    notes: list[str] = []
    if e.layer is not None:
        if len(e.merged_from) > 1:
            notes.append("merged: " + " + ".join(layer.name for layer in e.merged_from))
        else:
            notes.append(e.layer.name)
        if e.hides and e.opaque is None:  # an opaque dir's own note says what it hides
            notes.append(_hides(e.hides))
    if e.opaque is not None:
        layer, hidden = e.opaque
        notes.append(f"opaque dir in {layer.name}, {_hides(hidden)}")
    for layer, form, hidden in e.whiteouts:
        notes.append(f"whiteout ({form}) in {layer.name}, {_hides(hidden)}")
    return "; ".join(notes)


def render_tree(tree: OverlayTree) -> str:
    """tree(1)-style drawing with each entry's origin in a second column."""
    by_path = {e.path: e for e in tree.entries}
    rows: list[tuple[str, str]] = []

    def label(e: TreeEntry) -> str:
        if e.kind == "whiteout":
            return f"{e.name} (whiteout)"
        if e.kind == "dir":
            return e.name + "/"
        if e.kind == "symlink":
            return f"{e.name} -> {e.target}"
        return e.name

    def walk(path: str, prefix: str) -> None:
        kids = tree.children.get(path, [])
        for i, child in enumerate(kids):
            last = i == len(kids) - 1
            e = by_path[child]
            rows.append((prefix + ("└── " if last else "├── ") + label(e), _describe(e)))
            walk(child, prefix + ("    " if last else "│   "))

    root = by_path.get("/")
    rows.append((".", _describe(root) if root else ""))
    walk("/", "")
    width = min(48, max(len(left) for left, _ in rows)) + 2
    lines = ["Layers (top first):"]
    name_width = max(len(layer.name) for layer in tree.layers) + 2
    for layer in tree.layers:
        lines.append(f"  {layer.name.ljust(name_width)}{layer.dir}")
    if tree.workdir is not None:
        lines.append(f"  {'work'.ljust(name_width)}{tree.workdir}  (scratch dir, not a layer)")
    if tree.merged is not None:
        lines.append(f"  {'merged'.ljust(name_width)}{tree.merged}  ({tree.fstype})")
    lines.append("")
    for left, right in rows:
        lines.append((left.ljust(width) + right).rstrip() if right else left)
    return "\n".join(lines)
