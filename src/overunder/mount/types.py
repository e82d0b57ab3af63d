"""The records the mount package exchanges with its callers."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Holder", "Mount", "MountEntry"]


@dataclass(frozen=True, slots=True)
class Mount:
    """A serialized mount call, like containerd's ``mount.Mount``: snapshotters emit these and
    :func:`overunder.mount.mount` executes them.

    ``type`` is ``"overlay"`` (kernel), ``"fuse.overunder"`` (our FUSE overlay) or ``"bind"``;
    ``source`` is what mount(8) shows as the source (``overlay`` for overlays, the path for a
    bind); ``options`` are mount(8) ``-o`` items (``lowerdir=/a:/b``, ``upperdir=…``, ``ro``).
    """

    type: str
    source: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of ``/proc/self/mountinfo``, with the escapes (``\\040`` …) decoded."""

    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str
    target: str
    mount_options: tuple[str, ...]
    fstype: str
    source: str
    super_options: tuple[str, ...]
    optional_fields: tuple[str, ...] = field(default=())

    @property
    def options(self) -> tuple[str, ...]:
        """The filesystem's options (``lowerdir=…,upperdir=…`` for an overlay)."""
        return self.super_options

    def option(self, name: str) -> str | None:
        """The value of ``name=value`` in the superblock options (last one wins, as in the
        kernel), or None."""
        found: str | None = None
        for item in self.super_options:
            key, sep, value = item.partition("=")
            if sep and key == name:
                found = value
        return found

    def to_dict(self) -> dict[str, object]:
        return {
            "MountID": self.mount_id,
            "Target": self.target,
            "Type": self.fstype,
            "Source": self.source,
            "Options": list(self.super_options),
            "MountOptions": list(self.mount_options),
        }


@dataclass(frozen=True, slots=True)
class Holder:
    """A process that keeps a mount busy, and how (``cwd``, ``root``, ``exe``, ``fd 3``,
    ``maps``)."""

    pid: int
    command: str
    how: str

    def __str__(self) -> str:
        return f"{self.pid} ({self.command}, {self.how})"
