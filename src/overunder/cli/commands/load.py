"""``overunder load``: images from a ``docker save`` tarball or an OCI layout."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from overunder.cli.context import Context


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-i",
        "--input",
        metavar="FILE",
        help="read from FILE (a tar, or an OCI layout directory) instead of stdin",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="suppress the progress output")
    p.add_argument(
        "--format",
        choices=["text", "json"],
        default="text",
        help="json: one {Id, RepoTags} object per image",
    )
    p.set_defaults(func=run)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "load",
        help="load images from a tar archive or an OCI layout",
        description="Load images written by 'save' or 'docker save' (manifest.json), or an OCI "
        "image layout (index.json) as a directory or tar, plain or gzip/zstd compressed. "
        "Each layer is unpacked once into the layer store and shared between images.",
    )
    add_arguments(p)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.image_load import load
    from overunder.errors import InvalidArgument

    progress = None
    if not args.quiet and ctx.stderr.isatty():
        from overunder.cli.render import Progress

        progress = Progress(ctx.stderr)
    on_layer = progress.update if progress is not None else None
    if args.input:
        loaded = load(ctx.paths, Path(args.input), on_layer=on_layer)
    else:
        if sys.stdin.isatty():
            raise InvalidArgument(
                "requested load from stdin, but stdin is empty",
                hint="use -i FILE, or redirect a file: overunder load < image.tar",
            )
        loaded = load(ctx.paths, sys.stdin.buffer, on_layer=on_layer, source_name="stdin")
    if progress is not None:
        progress.close()
    if args.format == "json":
        ctx.json_lines([{"Id": li.id, "RepoTags": li.names} for li in loaded])
        return 0
    for li in loaded:
        for line in li.lines():
            ctx.out(line)
    return 0
