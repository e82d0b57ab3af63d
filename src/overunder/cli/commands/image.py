"""``overunder image COMMAND``: the image verbs under one name (``docker image ls`` …) and
``image prune``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from overunder.cli.context import Context


def register(sub: Any) -> None:
    from overunder.cli.commands import history, images, import_, inspect, load, rmi, save, tag

    p = sub.add_parser(
        "image",
        help="manage images",
        description="Image commands: ls, rm, inspect, history, tag, save, load, import, prune.",
    )
    isub = p.add_subparsers(dest="image_verb", metavar="COMMAND", required=True)
    for names, mod, helptext in (
        (("ls", "list"), images, "list images"),
        (("rm", "remove"), rmi, "remove one or more images"),
        (("history",), history, "show the history of an image"),
        (("tag",), tag, "create a tag that refers to an image"),
        (("save",), save, "save images to a tar archive"),
        (("load",), load, "load images from a tar archive or OCI layout"),
        (("import",), import_, "import a rootfs tarball as an image"),
    ):
        sp = isub.add_parser(names[0], aliases=list(names[1:]), help=helptext, description=helptext)
        mod.add_arguments(sp)
    ip = isub.add_parser(
        "inspect", help="show details of images", description="show details of images"
    )
    inspect.add_arguments(ip, with_type=False)
    ip.set_defaults(func=_inspect_images)
    pp = isub.add_parser(
        "prune",
        help="remove unused images",
        description="Remove dangling images (-a: every image no container uses).",
    )
    pp.add_argument(
        "-a", "--all", action="store_true", help="remove all unused images, not just dangling ones"
    )
    pp.add_argument("-f", "--force", action="store_true", help="do not prompt for confirmation")
    pp.set_defaults(func=_prune)


def _inspect_images(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.cli.commands import inspect

    args.type = "image"
    return inspect.run(args, ctx)


def _prune(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.cli.render import human_size
    from overunder.engine.images import prune

    if not args.force:
        what = (
            "all images without at least one container associated to them"
            if args.all
            else "all dangling images"
        )
        ctx.stdout.write(
            f"WARNING! This will remove {what}.\nAre you sure you want to continue? [y/N] "
        )
        ctx.stdout.flush()
        answer = sys.stdin.readline().strip().lower()
        if answer not in ("y", "yes"):
            return 0
    result = prune(ctx.paths, all_images=args.all)
    if result.events:
        ctx.out("Deleted Images:")
        for ev in result.events:
            ctx.out(str(ev))
        ctx.out()
    ctx.out(f"Total reclaimed space: {human_size(result.reclaimed)}")
    return 0
