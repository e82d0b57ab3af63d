"""``overunder run``: create a container from an image and start it (Docker's ``run``)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

from overunder.cli.commands._container_flags import (
    add_create_flags,
    attached_terminal,
    ensure_image,
    proxy_signals,
    run_options,
)
from overunder.cli.context import Context
from overunder.errors import NotFound, OverunderError

ENGINE_ERROR = 125


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        add_help=False,
        help="create and start a container",
        description="Create a container from IMAGE and start COMMAND in it (default: the "
        "image's ENTRYPOINT and CMD). In the foreground the container's output goes to this "
        "terminal and its exit code is ours; with -d the container id is printed and the "
        "container runs on under its shim. Exit 125: the engine failed; 126: the command "
        "cannot be executed; 127: the command was not found.",
    )
    p.add_argument("--help", action="help", help="show this help message and exit")
    p.add_argument("-d", "--detach", action="store_true", help="run in the background")
    add_create_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.containers import (
        Attach,
        create_container,
        find_container,
        kill_container,
        reconcile,
        remove_container,
        start_container,
    )
    from overunder.runtime import StartError
    from overunder.runtime.console import raw_terminal

    try:
        opts = run_options(args, attach=not args.detach)
        ensure_image(ctx, args.image, args.pull)
        rec = create_container(ctx.paths, opts)
    except OverunderError as err:
        ctx.error(err)
        return ENGINE_ERROR
    attach = None
    if not args.detach:
        sys.stdout.flush()
        sys.stderr.flush()
        attach = Attach(stdin=0 if args.interactive else None, stdout=1, stderr=2)
    # Raw before the process starts, so its first output is not cooked by our terminal.
    raw = contextlib.ExitStack()
    if attach is not None and args.tty and args.interactive:
        raw.enter_context(raw_terminal(0))
    try:
        rec, handle = start_container(ctx.paths, rec.id, attach=attach)
    except StartError as err:
        raw.close()
        ctx.error(err)
        if args.rm:
            remove_container(ctx.paths, rec.id, force=True)
        return err.exit_code
    except BaseException as err:
        raw.close()
        if not isinstance(err, OverunderError):
            raise
        ctx.error(err)
        if args.rm:
            remove_container(ctx.paths, rec.id, force=True)
        return ENGINE_ERROR
    assert handle is not None
    if args.detach:
        handle.close()
        ctx.out(rec.id)
        return 0
    try:

        def send(sig: int) -> None:
            kill_container(ctx.paths, rec.id, signal=str(sig))

        with (
            raw,
            attached_terminal(handle.master_fd, stdin=False),
            proxy_signals(send) if not args.tty else contextlib.nullcontext(),
        ):
            code = handle.wait_exit()
    except BaseException:
        handle.close()
        raise
    finally:
        raw.close()
    # The shim's connection stays open until the container is removed: hanging up tells a
    # --rm shim that its exit hook is not needed (see runtime.shim).
    try:
        reconcile(ctx.paths, find_container(ctx.paths, rec.id))
        if args.rm:
            remove_container(ctx.paths, rec.id, force=True)
    except NotFound:
        pass  # --rm: reconcile already removed it
    except OverunderError as err:
        ctx.error(err)
    finally:
        handle.close()
    return code
