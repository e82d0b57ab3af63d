"""What the container verbs share: ``run``/``create`` flags, attaching to a container's
terminal, and printing per-container results the way Docker does."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

from overunder.cli.context import Context
from overunder.errors import InvalidArgument, NotFound, OverunderError

__all__ = [
    "add_create_flags",
    "attached_terminal",
    "for_each",
    "parse_bytes",
    "run_options",
]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_bytes(text: str, flag: str) -> int:
    """``512m``, ``1g``, ``1048576`` → bytes (Docker's RAMInBytes: binary units)."""
    m = _SIZE.match(text)
    if not m:
        raise InvalidArgument(
            f"invalid size: '{text}' for {flag}", hint="use a number with b, k, m or g (512m)"
        )
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def add_create_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", help="assign a name to the container")
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    p.add_argument(
        "--restart",
        default="no",
        metavar="POLICY",
        help="no (default), on-failure[:MAX-RETRIES], always or unless-stopped",
    )
    p.add_argument(
        "-e", "--env", action="append", default=[], metavar="KEY=VALUE", help="set a variable"
    )
    p.add_argument("--env-file", action="append", default=[], help="read variables from a file")
    p.add_argument("-w", "--workdir", help="working directory inside the container")
    p.add_argument("-u", "--user", help="user: name|uid[:group|gid]")
    p.add_argument("--entrypoint", help="override the image's ENTRYPOINT")
    p.add_argument("-h", "--hostname", help="container host name")
    p.add_argument(
        "-v", "--volume", action="append", default=[], metavar="HOST:CTR[:ro]", help="bind mount"
    )
    p.add_argument(
        "-p",
        "--publish",
        action="append",
        default=[],
        metavar="[IP:]HOST:CTR",
        help="publish a container's TCP port on the host (127.0.0.1 unless IP is given)",
    )
    p.add_argument(
        "--network",
        "--net",
        default="private",
        help="private (default: a network namespace with loopback only), none, or host",
    )
    p.add_argument("-i", "--interactive", action="store_true", help="keep STDIN open")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-TTY")
    p.add_argument("-m", "--memory", help="memory limit (e.g. 512m)")
    p.add_argument("--pids-limit", type=int, help="limit on the number of processes")
    p.add_argument("--cpus", type=float, help="number of CPUs (e.g. 0.5)")
    p.add_argument("--read-only", action="store_true", help="mount the root filesystem read-only")
    p.add_argument(
        "--storage-driver",
        default=os.environ.get("OVERUNDER_STORAGE_DRIVER", "overlay"),
        choices=["overlay", "fuse"],
        help="overlay (the kernel's, default) or fuse (overunder's FUSE overlay)",
    )
    p.add_argument("--runtime", default="runc", help="OCI runtime: runc (default) or crun")
    p.add_argument(
        "--pull",
        default="missing",
        choices=["missing", "never"],
        help="pull the image when it is missing (default) or never",
    )
    p.add_argument(
        "--security-opt",
        action="append",
        default=[],
        metavar="OPT",
        help="no-new-privileges, seccomp=unconfined or seccomp=PROFILE.json (Docker's format)",
    )
    p.add_argument(
        "--privileged",
        action="store_true",
        help="every capability we hold, no seccomp, no masked paths (host devices not added)",
    )
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARG...]")


def run_options(args: argparse.Namespace, *, attach: bool) -> Any:
    from overunder.engine.containers import RunOptions

    return RunOptions(
        image=args.image,
        command=list(args.command),
        name=args.name,
        env=list(args.env),
        env_files=list(args.env_file),
        workdir=args.workdir,
        user=args.user,
        entrypoint=args.entrypoint,
        hostname=args.hostname,
        volumes=list(args.volume),
        publish=list(args.publish),
        network=args.network,
        interactive=args.interactive,
        tty=args.tty,
        memory=parse_bytes(args.memory, "--memory") if args.memory else None,
        pids_limit=args.pids_limit,
        cpus=args.cpus,
        read_only=args.read_only,
        storage_driver=args.storage_driver,
        runtime=args.runtime,
        auto_remove=args.rm,
        security_opt=list(args.security_opt),
        privileged=args.privileged,
        restart=args.restart,
        attach=attach,
    )


def ensure_image(ctx: Context, image: str, pull: str) -> None:
    """Docker's ``Unable to find image 'X' locally`` then a pull (when allowed)."""
    from overunder.engine.images import stores

    try:
        stores(ctx.paths).images.resolve(image)
        return
    except NotFound:
        if pull == "never":
            raise
    ctx.stderr.write(f"Unable to find image '{image}' locally\n")
    ctx.stderr.flush()
    try:
        from overunder.engine.pull import pull as do_pull
    except ImportError:
        raise NotFound(f"No such image: {image}", hint="load or import the image first") from None
    do_pull(ctx.paths, image)


@contextlib.contextmanager
def attached_terminal(master: int | None, *, stdin: bool) -> Iterator[None]:
    """While a foreground container with a terminal runs: our terminal raw (with ``-i``) and
    its size copied to the container's pty now and on every SIGWINCH."""
    from overunder.runtime.console import copy_winsize, raw_terminal

    if master is None:
        yield
        return
    src = 0 if os.isatty(0) else 1
    copy_winsize(src, master)
    previous: Any = None

    def on_winch(_s: int, _f: FrameType | None) -> None:
        copy_winsize(src, master)

    previous = signal.signal(signal.SIGWINCH, on_winch)
    try:
        with raw_terminal(0) if stdin else contextlib.nullcontext():
            yield
    finally:
        signal.signal(signal.SIGWINCH, previous)


@contextlib.contextmanager
def proxy_signals(send: Callable[[int], None]) -> Iterator[None]:
    """Docker's sig-proxy: SIGINT/SIGTERM/SIGHUP to the CLI go to the container."""
    saved: dict[int, Any] = {}

    def handler(sig: int, _f: FrameType | None) -> None:
        with contextlib.suppress(OverunderError):
            send(sig)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        saved[int(sig)] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for num, old in saved.items():
            signal.signal(num, old)


def for_each(
    ctx: Context,
    names: list[str],
    fn: Callable[[str], None],
    *,
    missing_ok: bool = False,
) -> int:
    """Apply ``fn`` to each name, printing the name as given on success and the error on
    failure; exit 1 if any failed (0 for missing ones with ``missing_ok``, as ``rm -f``)."""
    code = 0
    for name in names:
        try:
            fn(name)
        except NotFound as err:
            ctx.error(err)
            if not missing_ok:
                code = 1
            continue
        except OverunderError as err:
            ctx.error(err)
            code = 1
            continue
        ctx.out(name)
        sys.stdout.flush()
    return code
