"""``overunder tour``: the "Over Under" tutorial replayed for real, step by step.

The tutorial has two halves. :data:`PARTS` maps a part's name to the function that builds its
steps: the Docker-level walkthrough (``docker``, engineer I) and then the Linux-level one
(``linux``), both built from the same :class:`~overunder.tour.framework.Step` records,
and runs in the same :class:`~overunder.tour.framework.Tour` (same output, pausing and
cleanup).
"""

from __future__ import annotations

from collections.abc import Callable

from overunder.tour.docker import docker_steps
from overunder.tour.framework import CommandResult, Step, StepResult, Tour, TourEnv
from overunder.tour.linux import linux_steps

__all__ = ["PARTS", "CommandResult", "Step", "StepResult", "Tour", "TourEnv", "steps_for"]

# Part name -> (heading, step builder), in the order the tour plays them.
PARTS: dict[str, tuple[str, Callable[[TourEnv], list[Step]]]] = {
    "docker": ("At the Docker Level", docker_steps),  # engineer I (issue 8)
    "linux": ("At the Linux File System Level", linux_steps),
}


def steps_for(parts: list[str], env: TourEnv) -> list[tuple[str, list[Step]]]:
    """The (heading, steps) of each requested part, in tour order."""
    return [(PARTS[name][0], PARTS[name][1](env)) for name in PARTS if name in parts]
