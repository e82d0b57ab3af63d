"""Human output: Docker-style tables, sizes, durations, and progress on a terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TextIO

from overunder.engine.units import human_duration, human_size

__all__ = ["Progress", "ago", "human_duration", "human_size", "table"]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded like Go's tabwriter in the Docker CLI: every column but the last is
    as wide as max(10, its widest cell + 3). Trailing blanks are kept, as Docker does."""
    if not headers:
        return ""
    widths = [
        max(10, len(h) + 3, *(len(r[i]) + 3 for r in rows)) for i, h in enumerate(headers[:-1])
    ]
    lines = []
    for cells in [list(headers), *[list(r) for r in rows]]:
        head = "".join(c.ljust(w) for c, w in zip(cells[:-1], widths, strict=True))
        lines.append(head + cells[-1])
    return "\n".join(lines)


def ago(timestamp: float, now: float | None = None) -> str:
    return human_duration((now if now is not None else time.time()) - timestamp) + " ago"


class Progress:
    """A progress line per task, redrawn in place on a terminal; plain lines otherwise.

    ``quiet`` prints nothing. Tasks are identified by a short id (a layer's 12-hex digest).
    """

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.tty = self.stream.isatty()
        self._order: list[str] = []
        self._lines: dict[str, str] = {}
        self._last_draw = 0.0
        self._drawn = 0

    def update(self, key: str, status: str, done: int = 0, total: int = 0) -> None:
        if self.quiet:
            return
        line = f"{key}: {status}"
        if total > 0 and self.tty:
            width = 40
            filled = min(width, width * done // total)
            bar = "=" * max(0, filled - 1) + (">" if filled else "") + " " * (width - filled)
            line += f" [{bar}] {human_size(done)}/{human_size(total)}"
        if key not in self._lines:
            self._order.append(key)
        changed = self._lines.get(key) != line
        self._lines[key] = line
        if not self.tty:
            # Plain output: one line per state change, not per byte.
            if changed and total == 0:
                self.stream.write(line + "\n")
                self.stream.flush()
            return
        now = time.monotonic()
        if now - self._last_draw >= 0.1 or total == 0:
            self._draw()
            self._last_draw = now

    def _draw(self) -> None:
        n = len(self._order)
        if self._drawn:
            self.stream.write(f"\x1b[{self._drawn}F")
        for key in self._order:
            self.stream.write("\x1b[2K" + self._lines[key] + "\n")
        self._drawn = n
        self.stream.flush()

    def close(self) -> None:
        if self.tty and not self.quiet and self._order:
            self._draw()
