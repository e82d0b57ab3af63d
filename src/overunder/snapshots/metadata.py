"""The snapshotter's metadata file: ``<root>/metadata.json`` rewritten atomically under an
flock on ``<root>/metadata.lock`` (held only for the read-modify-write, never during an unpack).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from overunder import atomic

__all__ = ["Kind", "MetadataFile", "SnapshotInfo"]


class Kind(StrEnum):
    """States of a snapshot. UNPACKING → COMMITTED for layers; ACTIVE → COMMITTED on commit."""

    UNPACKING = "unpacking"
    COMMITTED = "committed"
    ACTIVE = "active"
    VIEW = "view"


@dataclass(slots=True)
class SnapshotInfo:
    key: str
    id: str  # directory name under <root>
    kind: Kind
    parent: str | None = None
    diff_id: str | None = None
    size: int = 0
    created: float = 0.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SnapshotInfo:
        return cls(
            key=d["key"],
            id=d["id"],
            kind=Kind(d["kind"]),
            parent=d.get("parent"),
            diff_id=d.get("diff_id"),
            size=int(d.get("size") or 0),
            created=float(d.get("created") or 0.0),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = str(self.kind)
        return d


def ensure_private_dir(root: Path) -> None:
    """Make ``root`` (mode 0700). Layers keep setuid files and device nodes as data; no other
    user may reach them through the store (only containers see them)."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    if root.stat().st_mode & 0o077:
        os.chmod(root, 0o700)


class MetadataFile:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "metadata.json"
        self.lock_path = root / "metadata.lock"

    def read(self) -> dict[str, SnapshotInfo]:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        doc = json.loads(data)
        return {k: SnapshotInfo.from_dict(v) for k, v in doc.get("snapshots", {}).items()}

    @contextlib.contextmanager
    def update(self) -> Iterator[dict[str, SnapshotInfo]]:
        ensure_private_dir(self.root)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            snaps = self.read()
            yield snaps
            self._write(snaps)
        finally:
            os.close(fd)

    def _write(self, snaps: dict[str, SnapshotInfo]) -> None:
        doc = {"version": 1, "snapshots": {k: v.to_dict() for k, v in snaps.items()}}
        atomic.write_json(self.path, doc)
