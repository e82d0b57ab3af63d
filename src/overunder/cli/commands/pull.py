"""``overunder pull``: Docker's ``pull``, with its progress lines."""

from __future__ import annotations

import argparse
from typing import Any

from overunder.cli.context import Context
from overunder.cli.render import Progress


def add_insecure_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--insecure-registry",
        dest="insecure",
        action="append",
        default=[],
        metavar="HOST[:PORT]",
        help="reach this registry without TLS certificate checks, or over plain HTTP when it "
        "has no HTTPS (repeatable; env OVERUNDER_INSECURE_REGISTRIES=h1,h2). Loopback "
        "registries (localhost, 127.0.0.0/8, ::1) always use plain HTTP, as in Docker",
    )


def register(sub: Any) -> None:
    p = sub.add_parser(
        "pull",
        help="download an image from a registry",
        usage="overunder pull [OPTIONS] NAME[:TAG|@DIGEST]",
        description="Download an image from a registry (Docker Hub by default) into the "
        "store: manifest and every blob verified, layers unpacked once, the image tagged. "
        "A multi-platform image gives the host's platform unless --platform says otherwise. "
        "Credentials come from ~/.docker/config.json (see 'overunder login').",
    )
    p.add_argument("name", metavar="NAME[:TAG|@DIGEST]")
    p.add_argument(
        "--platform",
        metavar="OS/ARCH[/VARIANT]",
        help="platform to pick from a multi-platform image (default: this host's)",
    )
    p.add_argument(
        "-a", "--all-tags", action="store_true", help="pull every tagged image of the repository"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image name")
    add_insecure_flag(p)
    p.set_defaults(func=run)


class LayerObserver:
    """Draws ``docker pull``/``push`` output: whole lines go straight out until the first
    layer line; later ones (``Digest:``, ``Status:``) wait for :meth:`finish`, so a redraw of
    the progress block on a terminal never overwrites them."""

    def __init__(self, ctx: Context, *, quiet: bool) -> None:
        self.ctx = ctx
        self.quiet = quiet
        self.progress = Progress(ctx.stdout, quiet=quiet)
        self.started = False
        self.later: list[str] = []

    def message(self, text: str) -> None:
        if self.quiet:
            return
        if self.started:
            self.later.append(text)
        else:
            self.ctx.out(text)

    def layer(self, short: str, status: str, done: int = 0, total: int = 0) -> None:
        self.started = True
        self.progress.update(short, status, done, total)

    def finish(self) -> None:
        self.progress.close()
        for line in self.later:
            self.ctx.out(line)
        self.later = []


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.pull import pull, remote_tags

    names = [args.name]
    if args.all_tags:
        names = [str(r) for r in remote_tags(args.name, insecure=args.insecure)]
    for name in names:
        observer = LayerObserver(ctx, quiet=args.quiet)
        try:
            result = pull(
                ctx.paths,
                name,
                platform=args.platform,
                insecure=args.insecure,
                observer=observer,
            )
        finally:
            observer.finish()
        ctx.out(str(result.reference))
    return 0
