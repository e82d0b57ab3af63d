"""``overunder logs``: a container's output from its json-file log (Docker's ``logs``)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from overunder.cli.context import Context


def register(sub: Any) -> None:
    p = sub.add_parser(
        "logs",
        help="fetch the logs of a container",
        description="Print what the container wrote: its stdout to stdout, its stderr to "
        "stderr, byte for byte (a last line without newline stays without one).",
    )
    p.add_argument("-f", "--follow", action="store_true", help="follow until the container stops")
    p.add_argument("--tail", default="all", help="number of lines from the end (default all)")
    p.add_argument("-t", "--timestamps", action="store_true", help="show RFC3339Nano timestamps")
    p.add_argument("container", metavar="CONTAINER")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.containers import find_container, log_path, reconcile
    from overunder.errors import InvalidArgument, NotFound
    from overunder.runtime.logs import LogEntry, read_log, tail_entries

    rec = find_container(ctx.paths, args.container)
    tail: int | None = None
    if args.tail != "all":
        if not args.tail.lstrip("-").isdigit():
            raise InvalidArgument(
                f"--tail {args.tail}: not a number", hint="give a count of lines, or 'all'"
            )
        tail = int(args.tail)
    path = log_path(ctx.paths, rec)
    out = sys.stdout.buffer
    err = sys.stderr.buffer

    def emit(entries: list[LogEntry]) -> None:
        for e in entries:
            stream = err if e.stream == "stderr" else out
            text = e.text.encode()
            if args.timestamps:
                text = e.time.encode() + b" " + text
            stream.write(text)
        out.flush()
        err.flush()

    entries, offset = read_log(path)
    emit(tail_entries(entries, tail))
    if not args.follow:
        return 0
    while True:
        try:
            running = reconcile(ctx.paths, rec).state.status in ("running", "paused")
        except NotFound:
            running = False  # a --rm container, removed by its shim on exit
        entries, offset = read_log(path, offset=offset)
        emit(entries)
        if not running and not entries:
            return 0
        if not entries:
            time.sleep(0.05)
