"""``overunder export``: a container's filesystem as a tar archive."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any

from overunder.cli.context import Context
from overunder.errors import FailedPrecondition, InvalidArgument


def register(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="export a container's filesystem as a tar archive",
        usage="overunder export [-o FILE] CONTAINER",
        description="Write the container's merged tree (image layers, init layer and its own "
        "changes, flattened) as a tar to STDOUT or to FILE. Works on running, stopped and "
        "never-started containers.",
    )
    p.add_argument("-o", "--output", metavar="FILE", help="write to a file, instead of STDOUT")
    p.add_argument("container", metavar="CONTAINER")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.container_export import export_container

    if args.output is None:
        if sys.stdout.isatty():
            raise InvalidArgument(
                "cowardly refusing to save to a terminal. Use the -o flag or redirect",
                hint="overunder export -o FILE CONTAINER, or overunder export CONTAINER > FILE",
            )
        ctx.stdout.flush()
        try:
            export_container(ctx.paths, args.container, sys.stdout.buffer)
        except FailedPrecondition as err:
            if isinstance(err.__cause__, BrokenPipeError):
                raise err.__cause__ from None  # the reader went away: main exits quietly
            raise
        sys.stdout.buffer.flush()
        return 0
    # Written next to the target and renamed into place: a failed export leaves no half file.
    target = os.path.abspath(args.output)
    tmp = f"{target}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            export_container(ctx.paths, args.container, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as err:
        raise FailedPrecondition(f"cannot write {target}: {err.strerror}") from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return 0
