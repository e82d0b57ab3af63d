"""``overunder cat IMAGE PATH``: a file of an image, without running a container."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from overunder.cli.context import Context


def register(sub: Any) -> None:
    p = sub.add_parser(
        "cat",
        help="print a file of an image without running a container",
        description="Print the file PATH of IMAGE to stdout, read straight from the layer "
        "that the merged view shows it from. Symlinks are followed inside the image (an "
        "absolute target means the image's /), across layers; whiteouts and opaque dirs hide "
        "what they hide. To copy files or directories out, use 'overunder cp IMAGE:PATH DEST'.",
    )
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.explore import cat

    ctx.stdout.flush()
    out = sys.stdout.buffer if ctx.stdout is sys.stdout else None
    for path in args.paths:
        if out is not None:
            cat(ctx.paths, args.image, path, out)
            out.flush()
        else:  # a test's text stream
            import io

            buf = io.BytesIO()
            cat(ctx.paths, args.image, path, buf)
            ctx.out(buf.getvalue().decode("utf-8", "replace"), end="")
    return 0
