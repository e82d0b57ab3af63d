"""Container logs in Docker's ``json-file`` format.

One JSON object per line: ``{"log":"text\\n","stream":"stdout","time":"<RFC3339Nano>"}``.
Output is cut at newlines (a line longer than 16 KiB is cut into 16 KiB pieces, as Docker's
copier does); a last piece without a newline is written without one when the stream ends, so
``logs`` can print it back exactly.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["LogEntry", "LogWriter", "format_timestamp", "read_log", "tail_entries"]

MAX_LINE = 16 * 1024


def format_timestamp(ns: int | None = None) -> str:
    """RFC3339 with 9 fraction digits, UTC: ``2026-11-27T02:16:10.211025170Z``."""
    if ns is None:
        ns = time.time_ns()
    secs, frac = divmod(ns, 1_000_000_000)
    base = datetime.fromtimestamp(secs, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{frac:09d}Z"


@dataclass(frozen=True, slots=True)
class LogEntry:
    stream: str  # "stdout" | "stderr"
    text: str
    time: str


class LogWriter:
    """Appends entries; safe to share between the stdout and stderr copier threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self._fd = fd
        self._lock = threading.Lock()
        self._partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    def write(self, stream: str, data: bytes) -> None:
        """Add raw output of ``stream``; complete lines are written at once."""
        buf = self._partial.get(stream, b"") + data
        out: list[bytes] = []
        while True:
            nl = buf.find(b"\n")
            if nl < 0 or nl >= MAX_LINE:
                if len(buf) >= MAX_LINE:
                    out.append(buf[:MAX_LINE])
                    buf = buf[MAX_LINE:]
                    continue
                break
            out.append(buf[: nl + 1])
            buf = buf[nl + 1 :]
        self._partial[stream] = buf
        if out:
            self._emit(stream, out)

    def flush(self, stream: str) -> None:
        """The stream ended: write what is left of its last line."""
        rest = self._partial.get(stream, b"")
        self._partial[stream] = b""
        if rest:
            self._emit(stream, [rest])

    def _emit(self, stream: str, pieces: list[bytes]) -> None:
        lines = []
        for piece in pieces:
            entry = {
                "log": piece.decode("utf-8", errors="replace"),
                "stream": stream,
                "time": format_timestamp(),
            }
            lines.append(json.dumps(entry, separators=(",", ":")) + "\n")
        data = "".join(lines).encode()
        with self._lock:
            os.write(self._fd, data)

    def close(self) -> None:
        for stream in list(self._partial):
            self.flush(stream)
        os.close(self._fd)


def _parse(line: bytes) -> LogEntry | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    return LogEntry(
        stream=str(obj.get("stream", "stdout")),
        text=str(obj.get("log", "")),
        time=str(obj.get("time", "")),
    )


def read_log(path: Path, *, offset: int = 0) -> tuple[list[LogEntry], int]:
    """Complete entries from byte ``offset``; returns them and the offset to continue from."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    end = data.rfind(b"\n")
    if end < 0:
        return [], offset
    entries = []
    for line in data[: end + 1].splitlines():
        entry = _parse(line)
        if entry is not None:
            entries.append(entry)
    return entries, offset + end + 1


def tail_entries(entries: list[LogEntry], tail: int | None) -> list[LogEntry]:
    if tail is None or tail < 0:
        return entries
    if tail == 0:
        return []
    return entries[-tail:]


def iter_follow(
    path: Path, *, offset: int, done: threading.Event | None = None, poll: float = 0.05
) -> Iterator[LogEntry]:
    """Entries appended after ``offset`` until ``done`` is set and the file is drained."""
    while True:
        finished = done is not None and done.is_set()
        entries, offset = read_log(path, offset=offset)
        yield from entries
        if finished and not entries:
            return
        if not entries:
            time.sleep(poll)
