"""Reading ``/proc/self/mountinfo`` (proc(5)): which mounts exist and with what options."""

from __future__ import annotations

import os
import re
from pathlib import Path

from overunder.mount.types import MountEntry

__all__ = ["find_entry", "read_mountinfo", "unescape_octal"]

_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape_octal(field: str) -> str:
    """The kernel writes space, tab, newline and backslash in paths as ``\\040`` etc."""
    raw = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)
    # The escapes are bytes of the (usually UTF-8) path; re-decode them as such.
    try:
        return raw.encode("latin-1").decode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return raw


def _parse_line(line: str) -> MountEntry:
    fields = line.rstrip("\n").split(" ")
    sep = fields.index("-", 6)
    major, minor = fields[2].split(":")
    return MountEntry(
        mount_id=int(fields[0]),
        parent_id=int(fields[1]),
        major=int(major),
        minor=int(minor),
        root=unescape_octal(fields[3]),
        target=unescape_octal(fields[4]),
        mount_options=tuple(fields[5].split(",")),
        optional_fields=tuple(fields[6:sep]),
        fstype=fields[sep + 1],
        source=unescape_octal(fields[sep + 2]),
        # Super options are split on commas; a comma inside a path arrives as "\," (overlay
        # escapes it), which we keep joined.
        super_options=tuple(
            unescape_octal(o) for o in re.split(r"(?<!\\),", " ".join(fields[sep + 3 :])) if o
        ),
    )


def read_mountinfo(pid: int | str = "self") -> list[MountEntry]:
    """Every mount visible to ``pid`` (default: this process), in mount order."""
    text = Path(f"/proc/{pid}/mountinfo").read_text(errors="surrogateescape")
    return [_parse_line(line) for line in text.splitlines() if line]


def find_entry(target: Path | str) -> MountEntry | None:
    """The topmost mount whose mount point is ``target`` (symlinks and ``..`` resolved), or
    None if nothing is mounted there."""
    real = os.path.realpath(target)
    found: MountEntry | None = None
    for entry in read_mountinfo():
        if entry.target == real:
            found = entry  # later lines are mounted on top of earlier ones
    return found
