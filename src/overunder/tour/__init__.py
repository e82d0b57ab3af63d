"""``overunder tour``: the "Over Under" tutorial replayed for real, step by step.

The tutorial has two halves. :data:`PARTS` maps a part's name to a :class:`Part`: its heading,
an intro line, and the function that builds its steps. The default tour plays the
Docker-level walkthrough (``docker``), then the Linux-level one on the kernel overlay
(``linux``), then the Linux-level one again on overunder's FUSE overlay (``linux-fuse``), with
the copy-ups and whiteouts it traced shown after each step. All parts are built from the same
:class:`~overunder.tour.framework.Step` records and run in the same
:class:`~overunder.tour.framework.Tour` (same output, pausing and cleanup).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from overunder.tour.docker import docker_steps
from overunder.tour.framework import Aside, CommandResult, Step, StepResult, Tour, TourEnv
from overunder.tour.linux import FUSE_INTRO, fuse_linux_steps, linux_steps

__all__ = [
    "PARTS",
    "Aside",
    "CommandResult",
    "Part",
    "Step",
    "StepResult",
    "Tour",
    "TourEnv",
    "steps_for",
]


@dataclass(frozen=True)
class Part:
    heading: str
    build: Callable[[TourEnv], list[Step]]
    intro: str = ""  # printed under the heading: what is different in this part


# Part name -> part, in the order the tour plays them.
PARTS: dict[str, Part] = {
    "docker": Part("At the Docker Level", docker_steps),
    "linux": Part("At the Linux File System Level", linux_steps),
    "linux-fuse": Part(
        "At the Linux File System Level, again on the FUSE overlay", fuse_linux_steps, FUSE_INTRO
    ),
}


def steps_for(parts: list[str], env: TourEnv) -> list[tuple[str, Part, list[Step]]]:
    """The (name, part, steps) of each requested part, in tour order."""
    return [(name, part, part.build(env)) for name, part in PARTS.items() if name in parts]
