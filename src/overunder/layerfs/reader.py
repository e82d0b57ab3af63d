"""A layer dir (or an overlay upper dir) read into :class:`overunder.semantics.Layer`.

Whiteouts in every on-disk form (char 0/0, ``.wh.<name>`` files, xattr whiteouts in an
``opaque="x"`` dir) become ``Kind.WHITEOUT`` entries; opaque dirs (xattr ``"y"`` in the
``trusted.`` or ``user.`` namespace, or a ``.wh..wh..opq`` file) get ``opaque=True``, and a
``*.overlay.redirect`` (``redirect_dir=on``) becomes ``Entry.redirect``. Overlay's
own xattrs (``trusted.overlay.*``, ``user.overlay.*``, ``user.fuseoverlayfs.*``) are dropped,
the rest are kept. Hard links (same device and inode, link count > 1) share a ``link_id``
(groups of one, e.g. a copied-up file whose partners stayed below, get none; whiteouts never
do: the kernel links all its whiteouts to one inode).

Speed: one ``scandir`` per dir, one ``lstat`` and one ``listxattr`` per entry, plus reading the
file when ``with_data``; contents of one inode are hashed once.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import replace
from pathlib import Path

from overunder.errors import FailedPrecondition, InvalidArgument, NotFound
from overunder.layerfs.whiteout import OCI_OPAQUE_MARKER, is_chardev_whiteout, whiteout_target
from overunder.semantics import WHITEOUT, Entry, Kind, Layer, Meta, join

__all__ = ["read_layer"]

_OWN_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.", "user.fuseoverlayfs.")
_ESCAPED_PREFIXES = ("trusted.overlay.overlay.", "user.overlay.overlay.")
_OPAQUE_NAMES = ("trusted.overlay.opaque", "user.overlay.opaque", "user.fuseoverlayfs.opaque")
_WHITEOUT_NAMES = ("trusted.overlay.whiteout", "user.overlay.whiteout")
_REDIRECT_NAMES = ("trusted.overlay.redirect", "user.overlay.redirect")
_NO_XATTRS = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES})
_CHUNK = 1 << 20


def _xattr_names(path: str) -> list[str]:
    try:
        return os.listxattr(path, follow_symlinks=False)
    except OSError as err:
        if err.errno in _NO_XATTRS:
            return []
        raise


def _getxattr(path: str, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError as err:
        if err.errno == errno.ENODATA or err.errno in _NO_XATTRS:
            return None
        raise


def _unescape(name: str) -> str:
    prefix, _, rest = name.partition(".overlay.overlay.")
    return f"{prefix}.overlay.{rest}"


def _hash_file(path: str, size: int) -> str:
    # Read in pieces no bigger than the file: a fixed 1 MiB buffer per small file costs more
    # than the hashing (allocation and page faults).
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        want = min(max(size, 1), _CHUNK)
        while chunk := os.read(fd, want):
            h.update(chunk)
            want = _CHUNK
    finally:
        os.close(fd)
    return "sha256:" + h.hexdigest()


def _opaque_of(path: str, names: list[str]) -> bytes | None:
    for name in _OPAQUE_NAMES:
        if name in names:
            value = _getxattr(path, name)
            if value is not None:
                return value
    return None


def read_layer(path: Path, *, with_data: bool = True) -> Layer:
    """Read the layer dir ``path``. ``data`` of files is ``sha256:<hex>`` of their content when
    ``with_data``, else None. Raises NotFound / InvalidArgument for a missing or non-dir
    ``path``, FailedPrecondition when part of it cannot be read."""
    top = os.fspath(path)
    try:
        st = os.lstat(top)
    except FileNotFoundError as err:
        raise NotFound(f"layer dir {top} does not exist") from err
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"{top} is not a directory", hint="pass a layer or upper dir")
    try:
        return _read(top, st, with_data)
    except OSError as err:
        raise FailedPrecondition(
            f"cannot read {err.filename or top}: {err.strerror}",
            hint="read layer dirs as root (whiteouts and trusted.* xattrs need it)",
        ) from err


def _meta(st: os.stat_result, xattrs: tuple[tuple[str, bytes], ...]) -> Meta:
    return Meta(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, xattrs)


def _read(top: str, root_st: os.stat_result, with_data: bool) -> Layer:
    out: dict[str, Entry] = {}
    links: dict[tuple[int, int], list[str]] = {}
    hashes: dict[tuple[int, int], str] = {}
    # (relative path, absolute path, the dir's own opaque xattr value)
    todo: list[tuple[str, str, bytes | None]] = []

    def user_xattrs(abspath: str, names: list[str]) -> tuple[tuple[str, bytes], ...]:
        kept = []
        for name in names:
            if name.startswith(_OWN_XATTR_PREFIXES):
                # "trusted.overlay.overlay.X" is how the kernel stores a "trusted.overlay.X"
                # set through a mount (nested overlays): an ordinary xattr of the entry
                escaped = name.startswith(_ESCAPED_PREFIXES)
                if not escaped:
                    continue
            value = _getxattr(abspath, name)
            if value is not None:
                kept.append(
                    (_unescape(name) if name.startswith(_ESCAPED_PREFIXES) else name, value)
                )
        return tuple(sorted(kept))

    root_names = _xattr_names(top)
    root_opaque = _opaque_of(top, root_names)
    out[""] = Entry(
        Kind.DIR, _meta(root_st, user_xattrs(top, root_names)), opaque=root_opaque == b"y"
    )
    todo.append(("", top, root_opaque))
    while todo:
        rel, absdir, opaque_value = todo.pop()
        xattr_whiteouts = opaque_value == b"x"
        marker_whiteouts: set[str] = set()
        seen: set[str] = set()
        with os.scandir(absdir) as it:
            for dent in it:
                name = dent.name
                if name == OCI_OPAQUE_MARKER:
                    out[rel] = _opaque(out[rel])
                    continue
                if name.startswith(".wh."):
                    target = whiteout_target(name)
                    if target is not None:
                        marker_whiteouts.add(target)
                    continue  # markers and legacy AUFS entries are never content
                child = join(rel, name)
                abspath = dent.path
                try:
                    st = dent.stat(follow_symlinks=False)
                except FileNotFoundError:
                    # gone since scandir (a live dir), or a name an overlay lists but cannot
                    # look up (a whiteout in the lowest layer of an unmerged dir)
                    continue
                mode = st.st_mode
                seen.add(name)
                if stat.S_ISCHR(mode) and is_chardev_whiteout(st):
                    out[child] = WHITEOUT
                    continue
                names = _xattr_names(abspath)
                if (
                    xattr_whiteouts
                    and stat.S_ISREG(mode)
                    and st.st_size == 0
                    and any(n in names for n in _WHITEOUT_NAMES)
                ):
                    out[child] = WHITEOUT
                    continue
                meta = _meta(st, user_xattrs(abspath, names))
                if stat.S_ISDIR(mode):
                    opq = _opaque_of(abspath, names)
                    redirect = None
                    for rname in _REDIRECT_NAMES:
                        if rname in names and (value := _getxattr(abspath, rname)) is not None:
                            redirect = os.fsdecode(value)
                            break
                    out[child] = Entry(Kind.DIR, meta, opaque=opq == b"y", redirect=redirect)
                    todo.append((child, abspath, opq))
                    continue
                link_id = None
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    links.setdefault(key, []).append(child)
                    link_id = f"{st.st_dev}:{st.st_ino}"
                if stat.S_ISREG(mode):
                    data = None
                    if with_data:
                        key = (st.st_dev, st.st_ino)
                        data = hashes.get(key)
                        if data is None:
                            data = _hash_file(abspath, st.st_size)
                            if st.st_nlink > 1:
                                hashes[key] = data
                    out[child] = Entry(Kind.FILE, meta, size=st.st_size, data=data, link_id=link_id)
                elif stat.S_ISLNK(mode):
                    target = os.readlink(abspath)
                    out[child] = Entry(
                        Kind.SYMLINK, meta, size=st.st_size, target=target, link_id=link_id
                    )
                else:
                    kind = (
                        Kind.CHARDEV
                        if stat.S_ISCHR(mode)
                        else Kind.BLOCKDEV
                        if stat.S_ISBLK(mode)
                        else Kind.FIFO
                        if stat.S_ISFIFO(mode)
                        else Kind.SOCKET
                    )
                    rdev = (
                        (os.major(st.st_rdev), os.minor(st.st_rdev))
                        if kind in (Kind.CHARDEV, Kind.BLOCKDEV)
                        else None
                    )
                    out[child] = Entry(kind, meta, rdev=rdev, link_id=link_id)
        for name in marker_whiteouts:
            child = join(rel, name)
            if name not in seen:
                out[child] = WHITEOUT
            elif out[child].kind is Kind.DIR:
                # ".wh.x" next to a dir "x": the lower "x" is deleted, this layer's "x" stays,
                # which is what an opaque "x" means
                out[child] = _opaque(out[child])
    for paths in links.values():
        if len(paths) == 1:
            only = out[paths[0]]
            out[paths[0]] = replace(only, link_id=None)
    return Layer.trusted(out)


def _opaque(entry: Entry) -> Entry:
    return Entry(
        entry.kind,
        entry.meta,
        entry.size,
        entry.data,
        entry.target,
        entry.rdev,
        True,
        entry.link_id,
    )
