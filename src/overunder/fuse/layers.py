"""The layer stack on disk as the FUSE overlay reads it: lower dirs (read-only, cached) and the
upper and work dirs (written by us only).

Lower layers must not change while mounted (the kernel calls that undefined, overlay-semantics
G1); we rely on it and cache each lower directory's listing once, whiteouts resolved. A change
made underneath is therefore seen only after a remount (as fuse-overlayfs does) and never
crashes the daemon.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field

from overunder.errors import InvalidArgument
from overunder.layerfs.whiteout import (
    OCI_OPAQUE_MARKER,
    WhiteoutStyle,
    XattrNS,
    is_xattr_whiteout,
    opaque_value,
    whiteout_target,
)

__all__ = ["LowerDir", "Stack", "dtype_to_mode", "is_private_xattr"]

_WH_PREFIX = ".wh."
_IGNORED = frozenset({".wh..opq", ".wh..wh.plnk", ".wh..wh.aufs", ".wh..wh.orph"})
_PRIVATE_PREFIXES = ("trusted.overlay.", "user.overlay.", "user.fuseoverlayfs.")
# Copy-up never copies these: they describe a layer, not the file.


def is_private_xattr(name: str) -> bool:
    """Overlay's own xattrs: hidden from list, refused on get/set (as the kernel does)."""
    return name.startswith(_PRIVATE_PREFIXES)


def dtype_to_mode(entry: os.DirEntry[str]) -> int:
    """S_IFMT bits of a scandir entry without a stat call when d_type is known."""
    if entry.is_symlink():
        return stat.S_IFLNK
    if entry.is_dir(follow_symlinks=False):
        return stat.S_IFDIR
    if entry.is_file(follow_symlinks=False):
        return stat.S_IFREG
    return stat.S_IFMT(entry.stat(follow_symlinks=False).st_mode)


@dataclass(slots=True)
class LowerDir:
    """One lower layer's dir, whiteouts resolved: ``entries`` name -> S_IFMT bits and inode,
    ``gone`` names it whites out below it, ``opaque``, and the ``redirect`` xattr if any."""

    entries: dict[str, tuple[int, int]] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    opaque: bool = False
    redirect: str | None = None


def _getxattr(path: str, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError as err:
        if err.errno in (errno.ENODATA, errno.ENOTSUP, errno.EPERM, errno.EACCES, errno.EINVAL):
            return None
        raise


def read_redirect(path: str) -> str | None:
    for ns in (XattrNS.TRUSTED, XattrNS.USER):
        value = _getxattr(path, f"{ns.value}redirect")
        if value is not None:
            return value.decode("utf-8", "surrogateescape")
    return None


def scan_layer_dir(path: str) -> LowerDir | None:
    """Read one layer dir into a :class:`LowerDir`; None when it is missing or not a dir."""
    try:
        it = os.scandir(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    value = opaque_value(path)
    out = LowerDir(opaque=value == b"y", redirect=read_redirect(path))
    xattr_whiteouts = value == b"x"
    with it:
        for entry in it:
            name = entry.name
            if name.startswith(_WH_PREFIX):
                if name == OCI_OPAQUE_MARKER:
                    out.opaque = True
                    continue
                if name in _IGNORED:
                    continue
                try:
                    target = whiteout_target(name)
                except InvalidArgument:  # a malformed marker names nothing: skip it
                    continue
                if target is not None:
                    out.gone.add(target)
                    continue
            kind = dtype_to_mode(entry)
            if kind == stat.S_IFCHR:
                st = entry.stat(follow_symlinks=False)
                if st.st_rdev == 0:
                    out.gone.add(name)
                    continue
            elif xattr_whiteouts and kind == stat.S_IFREG:
                st = entry.stat(follow_symlinks=False)
                if is_xattr_whiteout(entry.path, st):
                    out.gone.add(name)
                    continue
            out.entries[name] = (kind, entry.inode())
    return out


class Stack:
    """The dirs of one overlay mount: ``lowers`` top first, optional ``upper`` and ``work``.

    ``whiteout_style`` and ``xattr_ns`` are what this process may create in the upper dir
    (probed at mount time); ``upper_has_wh_files`` says whether ``.wh.<name>`` markers can be
    present in the upper dir, so lookups only pay for the extra check when they can.
    """

    def __init__(
        self,
        lowers: list[str],
        upper: str | None,
        work: str | None,
        *,
        whiteout_style: WhiteoutStyle = WhiteoutStyle.CHARDEV,
        xattr_ns: XattrNS = XattrNS.TRUSTED,
        upper_has_wh_files: bool = False,
    ) -> None:
        self.lowers = [os.path.abspath(p) for p in lowers]
        self.upper = os.path.abspath(upper) if upper is not None else None
        self.work = os.path.abspath(work) if work is not None else None
        self.whiteout_style = whiteout_style
        self.xattr_ns = xattr_ns
        self.upper_has_wh_files = upper_has_wh_files or whiteout_style is WhiteoutStyle.WH_FILE
        self._cache: dict[tuple[int, str], LowerDir | None] = {}

    @property
    def readonly(self) -> bool:
        return self.upper is None

    def lower_path(self, layer: int, rel: str) -> str:
        base = self.lowers[layer]
        return f"{base}/{rel}" if rel else base

    def upper_path(self, rel: str) -> str:
        assert self.upper is not None
        return f"{self.upper}/{rel}" if rel else self.upper

    def lower_dir(self, layer: int, rel: str) -> LowerDir | None:
        key = (layer, rel)
        try:
            return self._cache[key]
        except KeyError:
            pass
        found = scan_layer_dir(self.lower_path(layer, rel))
        self._cache[key] = found
        return found

    def lower_entry(self, layer: int, rel: str) -> tuple[int, int] | bool | None:
        """What layer ``layer`` holds at ``rel``: (S_IFMT, ino), False for a whiteout (stop
        looking further down), None for nothing."""
        parent, _, name = rel.rpartition("/")
        ld = self.lower_dir(layer, parent)
        if ld is None:
            return None
        hit = ld.entries.get(name)
        if hit is not None:
            return hit
        if name in ld.gone:
            return False
        return None
