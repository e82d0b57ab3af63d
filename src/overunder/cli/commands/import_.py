"""``overunder import``: a rootfs tar becomes a one-layer image (``docker import``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from overunder.cli.context import Context


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "file", metavar="FILE|-", help="a rootfs tar (plain, gzip or zstd); - reads stdin"
    )
    p.add_argument("reference", nargs="?", metavar="REPOSITORY[:TAG]")
    p.add_argument(
        "-c",
        "--change",
        action="append",
        default=[],
        metavar="INSTRUCTION",
        help="apply a Dockerfile instruction: CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, "
        "ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR (repeatable)",
    )
    p.add_argument("-m", "--message", default="", help="commit message (the history comment)")
    p.add_argument("--platform", help="accepted for compatibility; the host's platform is used")
    p.set_defaults(func=run)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "import",
        help="import a rootfs tarball as a one-layer image",
        description="Create an image whose only layer is the given tar, kept byte for byte "
        "(like 'docker import'). Prints the new image id.",
    )
    add_arguments(p)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.image_import import import_

    source = sys.stdin.buffer if args.file == "-" else Path(args.file)
    image_id = import_(
        ctx.paths, source, reference=args.reference, changes=args.change, message=args.message
    )
    ctx.out(image_id)
    return 0
