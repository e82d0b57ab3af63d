"""``overunder save``: images to a ``docker save`` tarball (or an OCI layout tar)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from overunder.cli.context import Context


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument(
        "-o", "--output", metavar="FILE", help="write to FILE (mode 0600) instead of stdout"
    )
    p.add_argument(
        "--format",
        choices=["docker", "oci"],
        default="docker",
        help="docker: the 'docker save' layout (default); oci: an OCI image layout",
    )
    p.set_defaults(func=run)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "save",
        help="save images to a tar archive",
        description="Write images as 'docker save' does: sorted members, manifest.json, "
        "repositories, one dir per layer with VERSION, json and layer.tar (a layer shared by "
        "two images is stored once). Loadable by 'docker load', skopeo and 'overunder load'.",
    )
    add_arguments(p)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.image_save import save
    from overunder.errors import InvalidArgument

    if args.output:
        save(ctx.paths, args.images, Path(args.output), format=args.format)
        return 0
    if ctx.stdout.isatty():
        raise InvalidArgument(
            "cowardly refusing to save to a terminal",
            hint="use the -o flag or redirect: overunder save IMAGE > image.tar",
        )
    ctx.stdout.flush()
    save(ctx.paths, args.images, sys.stdout.buffer, format=args.format)
    sys.stdout.buffer.flush()
    return 0
