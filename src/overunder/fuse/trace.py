"""The FUSE overlay's trace: one JSON object per line for every copy-up, whiteout, opaque dir
and directory redirect, and a reader that follows it for a person (``overunder overlay watch``).

Events (all carry ``ts`` (Unix seconds, float) and ``event``):

- ``copy-up``: ``path`` (merged, absolute), ``bytes`` copied, ``layer`` (the source lower
  layer, counted from 1 = the leftmost lowerdir, as ``overlay tree`` names them "lower N")
  and ``kind`` (file, dir, symlink, ...); ``via-index`` when it joined a hard link already
  copied up (no data copied)
- ``whiteout``: ``path``, ``style`` (chardev | wh-file)
- ``opaque``: ``path``
- ``redirect``: ``path`` (new name), ``from`` (old name), ``redirect`` (the xattr value)
- ``mount`` / ``unmount``: ``lowerdirs``, ``upperdir``
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "Tracer",
    "follow_file",
    "format_event",
    "read_events",
    "trace_path_for",
    "watch",
]


class Tracer:
    """Writes events to a file (append, one flush per event so ``watch`` sees them live).

    A new file is made 0600 whatever the umask (the daemon runs with umask 0): the trace names
    every file copied up or deleted, which is nobody else's business. An existing file keeps
    its mode."""

    def __init__(self, path: Path | None) -> None:
        self._fh: IO[str] | None = None
        if path is not None:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._fh = os.fdopen(fd, "a", encoding="utf-8")

    @property
    def enabled(self) -> bool:
        return self._fh is not None

    def emit(self, event: str, **fields: Any) -> None:
        if self._fh is None:
            return
        record = {"ts": round(time.time(), 6), "event": event, **fields}
        self._fh.write(json.dumps(record, sort_keys=False) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def trace_path_for(mountpoint: Path) -> Path:
    """Where a mount's trace goes when the caller gave none: ``/run/overunder/fuse/<id>.trace``
    (or ``$XDG_RUNTIME_DIR`` / /tmp for an unprivileged user), keyed by the mountpoint."""
    base = (
        Path("/run/overunder/fuse")
        if os.geteuid() == 0
        else Path(os.environ.get("XDG_RUNTIME_DIR", "/tmp")) / "overunder-fuse"
    )
    # No resolve(): it would lstat the mountpoint, and the daemon calls this between mount(2)
    # and answering FUSE_INIT, when a stat of its own root blocks forever.
    key = os.path.abspath(mountpoint).strip("/").replace("/", "_") or "root"
    return base / f"{key}.trace"


def format_event(record: dict[str, Any]) -> str:
    """One event as a line for a person."""
    stamp = time.strftime("%H:%M:%S", time.localtime(float(record.get("ts", 0))))
    ev = record.get("event", "?")
    path = record.get("path", "")
    if ev == "copy-up":
        extra = " (joined hard-link index)" if record.get("via-index") else ""
        return (
            f"{stamp} copy-up   {path}  {record.get('kind', '')} {record.get('bytes', 0)} bytes "
            f"from lower {record.get('layer')}{extra}"
        )
    if ev == "whiteout":
        return f"{stamp} whiteout  {path}  ({record.get('style', '')})"
    if ev == "opaque":
        return f"{stamp} opaque    {path}  (lower contents hidden)"
    if ev == "redirect":
        return (
            f"{stamp} redirect  {record.get('from')} -> {path}  (redirect={record.get('redirect')})"
        )
    if ev in ("mount", "unmount"):
        return f"{stamp} {ev:<9} {record.get('mountpoint', '')}"
    return f"{stamp} {ev}  {json.dumps(record)}"


def follow_file(
    path: Path, *, from_start: bool = True, poll: float = 0.2
) -> Iterator[dict[str, Any]]:
    """Yield trace records as they are appended (forever; the caller stops iterating)."""
    with open(path, encoding="utf-8") as fh:
        if not from_start:
            fh.seek(0, os.SEEK_END)
        buf = ""
        while True:
            chunk = fh.readline()
            if not chunk:
                time.sleep(poll)
                continue
            buf += chunk
            if not buf.endswith("\n"):
                continue
            line, buf = buf.strip(), ""
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                yield record


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    """The records already in a trace file (no waiting)."""
    with open(path, encoding="utf-8") as fh:
        for raw in fh:
            line = raw.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict):
                yield record


def watch(
    path: Path, *, follow: bool = True, as_json: bool = False, out: Callable[[str], None]
) -> int:
    """Show a trace for a person (``overunder overlay watch``): every event so far, then new
    ones as they come while ``follow``. Returns the number of events shown."""
    shown = 0
    events = follow_file(path) if follow else read_events(path)
    for record in events:
        out(json.dumps(record) if as_json else format_event(record))
        shown += 1
    return shown
