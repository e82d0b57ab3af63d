"""``overunder cp``: copy files/folders between a container and the host (Docker's rules)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from overunder.cli.context import Context
from overunder.errors import InvalidArgument


def register(sub: Any) -> None:
    p = sub.add_parser(
        "cp",
        help="copy files/folders between a container and the host",
        usage="overunder cp [-a] [-L] CONTAINER:SRC_PATH DEST_PATH|-\n"
        "       overunder cp [-a] [-L] SRC_PATH|- CONTAINER:DEST_PATH",
        description="Copy files or directories into or out of a container, running, stopped "
        "or never started. Container paths are resolved inside the container's root, "
        "symlinks included (a relative path is relative to /). '-' as SRC reads a tar from "
        "stdin and extracts it into the existing directory DEST; '-' as DEST writes a tar of "
        "SRC to stdout. SRC/. copies the contents of SRC.",
    )
    p.add_argument(
        "-a",
        "--archive",
        action="store_true",
        help="archive mode (copy all uid/gid information; copies in always keep them)",
    )
    p.add_argument(
        "-L", "--follow-link", action="store_true", help="always follow symbol link in SRC_PATH"
    )
    p.add_argument("src", metavar="SRC")
    p.add_argument("dest", metavar="DEST")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.container_cp import (
        copy_from_container,
        copy_to_container,
        split_cp_arg,
    )

    src_c, src = split_cp_arg(args.src)
    dest_c, dest = split_cp_arg(args.dest)
    if src_c is None and dest_c is None:
        raise InvalidArgument(
            "must specify at least one container source",
            hint="name the container side as CONTAINER:PATH",
        )
    if src_c is not None and dest_c is not None:
        raise InvalidArgument(
            "copying between containers is not supported",
            hint="copy out to the host, then in to the other container",
        )
    if src_c is not None:
        if dest == "-":
            ctx.stdout.flush()
        # -- engineer I (issue 8): IMAGE:PATH as the source, tried only when no container has
        # that name; the files come straight from the image's layers, no container needed.
        from overunder.engine.explore import copy_from_image, image_source

        from_image = image_source(ctx.paths, args.src)
        if from_image is not None:
            copy_from_image(
                ctx.paths,
                from_image[0],
                from_image[1],
                dest,
                stdout=sys.stdout.buffer if dest == "-" else None,
                follow=args.follow_link,
            )
            if dest == "-":
                sys.stdout.buffer.flush()
            return 0
        # -- end of engineer I's edit
        copy_from_container(
            ctx.paths,
            src_c,
            src,
            dest,
            stdout=sys.stdout.buffer if dest == "-" else None,
            follow=args.follow_link,
        )
        if dest == "-":
            sys.stdout.buffer.flush()
        return 0
    assert dest_c is not None
    copy_to_container(
        ctx.paths,
        dest_c,
        src,
        dest,
        stdin=sys.stdin.buffer if src == "-" else None,
        follow=args.follow_link,
    )
    return 0
