"""The FUSE overlay's trace, shown step by step in the tour.

``overunder mount -t fuse.overunder --trace FILE`` makes the filesystem process log a JSON line
for every copy-up, whiteout, opaque dir and redirect (:mod:`overunder.fuse.trace`). A
:class:`TraceWatch` remembers how much of that file the tour has shown; after each step of the
FUSE pass it returns the events logged since the previous step, drawn for a person with
:func:`~overunder.fuse.trace.format_event`, and a note on what they mean for the tutorial's
files (how many bytes a copy-up took from which lower layer, which whiteout was made).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from overunder.fuse.trace import format_event, read_events
from overunder.tour.framework import Aside, CommandResult

__all__ = ["TraceWatch", "explain_event"]


def explain_event(record: dict[str, Any]) -> str:
    """One sentence on what a trace event did to the layers (paths as the tour's project
    names them: ./upper, lower 1 = ./lower)."""
    ev = record.get("event")
    path = str(record.get("path", ""))
    if ev == "copy-up":
        if record.get("via-index"):
            return f"the copy-up of {path} joined a hard link already in ./upper (no data copied)."
        return (
            f"the copy-up wrote {record.get('bytes', 0)} bytes of {path} from lower "
            f"{record.get('layer')} into ./upper{path} before the write went there; the "
            "lower file is untouched."
        )
    if ev == "whiteout":
        if record.get("style") == "chardev":
            return (
                f"the whiteout ./upper{path}, a char device 0/0, was created: it hides "
                f"the lower {path} in merged."
            )
        return f"the whiteout for {path} was created as a .wh. file ({record.get('style')})."
    if ev == "opaque":
        return f"{path} was made opaque in ./upper: the lower layers' contents are hidden."
    if ev == "redirect":
        return f"{record.get('from')} was renamed to {path} with a redirect xattr."
    if ev == "mount":
        return "the mount comes first: lower 1 is ./lower, the upper layer ./upper."
    if ev == "unmount":
        return "the filesystem process logged the unmount and ended."
    return f"{ev} event."


class TraceWatch:
    """The part of a trace file not shown yet. ``observe`` fits :attr:`Step.observe`."""

    def __init__(self, path: Path, *, shown_as: str, merged: str = "./merged") -> None:
        self.path = path
        self.shown_as = shown_as  # how the tour's commands name the file (../fuse-trace.jsonl)
        self.merged = merged
        self._seen = 0

    def new_events(self) -> list[dict[str, Any]]:
        """Events logged since the last call (none while the file does not exist yet)."""
        try:
            events = list(read_events(self.path))
        except FileNotFoundError:
            return []
        new = events[self._seen :]
        self._seen = len(events)
        return new

    def observe(self, results: tuple[CommandResult, ...]) -> Aside | None:
        new = self.new_events()
        if not new:
            return None
        notes = [explain_event(r) for r in new]
        return Aside(
            heading=f"-- trace: what the fuse.overunder process logged to {self.shown_as} "
            f"during this step ('overunder overlay watch {self.merged}' follows it live):",
            lines=tuple(format_event(r) for r in new),
            notice="In the trace: " + " ".join(dict.fromkeys(notes)),
            records=tuple(new),
        )
