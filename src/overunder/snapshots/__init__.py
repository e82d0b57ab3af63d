"""Layer dirs by chain ID, active snapshots for containers, and their metadata."""

from __future__ import annotations

from overunder.snapshots.metadata import Kind, SnapshotInfo
from overunder.snapshots.snapshotter import AppliedLayer, Snapshotter, Usage, dir_size

__all__ = ["AppliedLayer", "Kind", "SnapshotInfo", "Snapshotter", "Usage", "dir_size"]
