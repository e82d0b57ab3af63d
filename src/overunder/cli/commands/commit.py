"""``overunder commit``: create a new image from a container's changes."""

from __future__ import annotations

import argparse
from typing import Any

from overunder.cli.context import Context


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "t", "true", "yes", "on"):
        return True
    if value in ("0", "f", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value {text!r}")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "commit",
        help="create a new image from a container's changes",
        usage="overunder commit [OPTIONS] CONTAINER [REPOSITORY[:TAG]]",
        description="Write the container's upper dir as a new layer (OCI whiteouts for "
        "deletions and opaque dirs) on top of its image, with a new config and a history "
        "entry whose CREATED BY is the container's command. The container is paused while "
        "its layer is read unless --pause=false. Prints the new image id.",
    )
    p.add_argument("-a", "--author", default="", help='author (e.g. "Jane <jane@example.com>")')
    p.add_argument("-m", "--message", default="", help="commit message")
    p.add_argument(
        "-c",
        "--change",
        action="append",
        default=[],
        metavar="INSTRUCTION",
        help="apply a Dockerfile instruction to the image (CMD, ENTRYPOINT, ENV, EXPOSE, "
        "LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR); repeatable",
    )
    p.add_argument(
        "-p",
        "--pause",
        type=_bool,
        nargs="?",
        const=True,
        default=True,
        metavar="BOOL",
        help="pause the container during commit (default true; --pause=false to not)",
    )
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("reference", nargs="?", metavar="REPOSITORY[:TAG]")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.container_commit import commit_container

    image_id = commit_container(
        ctx.paths,
        args.container,
        args.reference,
        message=args.message,
        author=args.author,
        changes=args.change,
        pause=args.pause,
    )
    ctx.out(image_id)
    return 0
