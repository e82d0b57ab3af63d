"""``overunder push``: Docker's ``push``."""

from __future__ import annotations

import argparse
from typing import Any

from overunder.cli.commands.pull import LayerObserver, add_insecure_flag
from overunder.cli.context import Context


def register(sub: Any) -> None:
    p = sub.add_parser(
        "push",
        help="upload an image to a registry",
        usage="overunder push [OPTIONS] NAME[:TAG]",
        description="Upload an image to a registry. Blobs the repository has are skipped, "
        "blobs in another repository of the same registry are mounted, the rest uploaded; "
        "then the manifest, byte for byte as stored, so the image keeps its digest. The image "
        "must be tagged NAME[:TAG] locally (see 'overunder tag').",
    )
    p.add_argument("name", metavar="NAME[:TAG]")
    p.add_argument(
        "-a", "--all-tags", action="store_true", help="push every local tag of the repository"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image name")
    p.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        metavar="BYTES",
        help="upload blobs in chunks of this size (PATCH requests) instead of one PUT",
    )
    add_insecure_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.push import local_tags, push

    names = [args.name]
    if args.all_tags:
        names = [str(r) for r in local_tags(ctx.paths, args.name)]
    for name in names:
        observer = LayerObserver(ctx, quiet=args.quiet)
        try:
            result = push(
                ctx.paths,
                name,
                insecure=args.insecure,
                observer=observer,
                chunk_size=args.chunk_size,
            )
        finally:
            observer.finish()
        if args.quiet:
            ctx.out(str(result.reference))
    return 0
