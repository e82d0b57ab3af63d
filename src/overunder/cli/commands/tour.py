"""``overunder tour``: replay the tutorial with real commands and real output."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from overunder.cli.context import Context
from overunder.errors import FailedPrecondition

# The tour's parts, in playing order; a test checks this against overunder.tour.PARTS, which
# is not imported here because every CLI start registers every verb.
PART_NAMES = ("docker", "linux", "linux-fuse")


def register(sub: Any) -> None:

    p = sub.add_parser(
        "tour",
        help="replay the Over Under tutorial for real, step by step",
        description="Replay the tutorial: each step prints the command a person would type "
        "($ cmd), its real output, and what to notice. The Docker-level part runs the pinger "
        "container; the Linux-level part mounts a real overlay in a scratch project directory "
        "(under /tmp unless --dir), first the kernel's, then overunder's FUSE overlay with its "
        "copy-up and whiteout trace shown after each step. Everything the tour made is removed "
        "when it ends, even on Ctrl-C or an error.",
    )
    p.add_argument(
        "--step", action="store_true", help="pause before each step (on a terminal only)"
    )
    p.add_argument(
        "--dir",
        type=Path,
        metavar="DIR",
        help="scratch directory to create and work in (must be new or empty; removed at the end)",
    )
    p.add_argument(
        "--driver",
        choices=["kernel", "fuse"],
        default="kernel",
        help="the Docker part's container: kernel overlay (default) or fuse (run with "
        "--storage-driver fuse). The Linux part plays on both drivers: see --part",
    )
    # --keep: engineer I (issue 8), the Docker part's container is left for exploring.
    p.add_argument(
        "--keep",
        action="store_true",
        help="leave the Docker part's pinger container (in the normal engine store) for "
        "exploring; the tour prints how to remove it",
    )
    p.add_argument(
        "--part",
        action="append",
        choices=list(PART_NAMES),
        metavar="PART",
        help=f"play only this part ({', '.join(PART_NAMES)}: linux mounts -t overlay, linux-fuse "
        "-t fuse.overunder with --trace); may be repeated; default all, in that order",
    )
    p.add_argument(
        "--format",
        choices=["text", "json"],
        default="text",
        help="json: print the steps with their commands and outputs as one JSON document",
    )
    p.set_defaults(func=run)


class _Quit(Exception):
    """The person typed q at a --step pause."""


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.tour import PARTS, Step, StepResult, Tour, steps_for
    from overunder.tour.framework import CommandResult

    mount_type = "overlay" if args.driver == "kernel" else "fuse.overunder"
    parts = [name for name in PARTS if not args.part or name in args.part]  # tour order
    if os.geteuid() != 0 and ("linux" in parts or ("docker" in parts and args.driver == "kernel")):
        raise FailedPrecondition(
            "the tour mounts kernel overlays (--part linux, and the Docker part's container), "
            "which needs root",
            hint="run it as root (sudo .venv/bin/overunder tour), or try --part linux-fuse",
        )
    text = args.format == "text"
    interactive = args.step and text and sys.stdin.isatty() and ctx.stdout.isatty()
    env = Tour.make_env(args.dir, mount_type=mount_type)
    if args.keep:
        import dataclasses

        env = dataclasses.replace(env, keep=True)
    plan = steps_for(parts, env)
    first = {id(steps[0]): part for _, part, steps in plan if steps}
    part_of = {id(step): name for name, _, steps in plan for step in steps}

    def on_step(step: Step) -> None:
        if not text:
            return
        if id(step) in first:
            part = first[id(step)]
            ctx.out(f"=== {part.heading} ===")
            ctx.out()
            if part.intro:
                ctx.out(part.intro)
                ctx.out()
        if interactive:
            ctx.stdout.flush()
            try:
                answer = input(f"[Enter: step {step.number}, q: quit] ")
            except EOFError:  # Ctrl-D at the pause
                answer = "q"
            if answer.strip().lower() in ("q", "quit"):
                raise _Quit(step.number)
        ctx.out(f"Step {step.number}: {step.title}")

    def on_command(step: Step, res: CommandResult) -> None:
        if not text:
            return
        ctx.out(f"$ {res.command}")
        if res.output:
            ctx.out(res.output, end="" if res.output.endswith("\n") else "\n")

    def on_done(result: StepResult) -> None:
        if text:
            aside = result.aside
            if aside is not None and aside.lines:
                ctx.out(aside.heading)
                for line in aside.lines:
                    ctx.out(f"   {line}")
            for line in result.notice.splitlines():
                ctx.out(f"  >> {line}")
            ctx.out()
            ctx.stdout.flush()

    tour = Tour(env, on_step=on_step, on_command=on_command, on_done=on_done)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        results = tour.run([s for _, _, steps in plan for s in steps])
    except _Quit as stop:
        ctx.out(f"Stopped before step {stop}; {env.base} has been removed.")
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        for problem in tour.leftovers:
            ctx.warn(problem)
    if text:
        ctx.out(f"Done: {len(results)} steps replayed; {env.base} has been removed.")
    else:
        ctx.json(
            {
                "Dir": str(env.base),
                "Driver": mount_type,
                "Parts": parts,
                "Steps": [{"Part": part_of[id(r.step)], **r.to_dict()} for r in results],
            }
        )
    return 0
