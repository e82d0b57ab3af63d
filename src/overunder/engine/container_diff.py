"""``diff CONTAINER``: Docker's A/C/D lines, from the container's upper dir, without mounting.

The upper dir and the lowers (the init layer, then the image layers) are read into
:mod:`overunder.semantics` terms (:func:`overunder.layerfs.reader.read_layer`) and
:func:`overunder.semantics.changes_from_upper` applies Docker's rules (docker-compat.md §3) to
them. Nothing is mounted, so it works on created, running and stopped containers and on both
storage drivers (they keep the same upper dir). Lines come sorted by path, a dir before its
subtree (Docker's own order is random).

Beyond Docker: :func:`diff_stat` (bytes per entry and totals) and :func:`diff_patch` (a
unified diff of each added, changed or deleted regular file against its lower version).

A running container may change its upper dir while we read it; a read that trips over an entry
vanishing under it is retried (:data:`_READ_ATTEMPTS`), and the result is the state at some
moment of the read, as Docker's is.
"""

from __future__ import annotations

import difflib
import errno
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overunder.engine.container_mount import ContainerLayers, container_layers
from overunder.engine.containers import find_container
from overunder.engine.paths import EnginePaths
from overunder.errors import FailedPrecondition
from overunder.layerfs.reader import read_layer
from overunder.layerfs.safepath import open_dir_nofollow, open_root
from overunder.layerfs.whiteout import OCI_OPAQUE_MARKER, list_dir_layer
from overunder.semantics import (
    Change,
    ChangeKind,
    Entry,
    Kind,
    Layer,
    Meta,
    changes_from_upper,
    lookup,
)

__all__ = [
    "ChangeKind",
    "DiffStat",
    "LowerView",
    "StatEntry",
    "UpperView",
    "container_changes",
    "diff_patch",
    "diff_stat",
    "read_container",
]

_READ_ATTEMPTS = 3
PATCH_MAX_BYTES = 4 << 20
"""Files bigger than this are noted in ``--patch``, not diffed."""


@dataclass(frozen=True, slots=True)
class ReadTree:
    """A container's layers read into semantics terms: ``upper`` and ``lowers`` (top first),
    with the dirs they were read from."""

    upper: Layer
    lowers: list[Layer]
    dirs: ContainerLayers


def _read(path: Path, *, with_data: bool) -> Layer:
    last: FailedPrecondition | None = None
    for _ in range(_READ_ATTEMPTS):
        try:
            return read_layer(path, with_data=with_data)
        except FailedPrecondition as err:  # an entry vanished under a running container
            last = err
    assert last is not None
    raise last


def read_container(paths: EnginePaths, name_or_id: str, *, with_data: bool = False) -> ReadTree:
    """Read the container's upper dir and lowers. NotFound ``No such container: X``."""
    rec = find_container(paths, name_or_id)
    dirs = container_layers(paths, rec)
    upper = _read(dirs.upper, with_data=with_data)
    lowers = [_read(d, with_data=with_data) for d in dirs.lowers]
    return ReadTree(upper, lowers, dirs)


def container_changes(paths: EnginePaths, name_or_id: str) -> list[Change]:
    """``docker diff``'s lines for the container, sorted by path.

    The lowers are read in full; the upper dir through :class:`UpperView`, which stats only
    what the rules compare (see there), falling back to a full
    :func:`~overunder.layerfs.reader.read_layer` for the rarer on-disk forms."""
    rec = find_container(paths, name_or_id)
    dirs = container_layers(paths, rec)
    for _ in range(_READ_ATTEMPTS):
        lazy = [LowerView(d) for d in dirs.lowers]
        try:
            return changes_from_upper(UpperView(dirs.upper, lazy), lazy)
        except _Fallback:
            break
        except OSError:  # an entry vanished or changed kind under a running container
            continue
    lowers = [_read(d, with_data=False) for d in dirs.lowers]
    return changes_from_upper(_read(dirs.upper, with_data=False), lowers)


class _Fallback(Exception):
    """The upper dir uses a form :class:`UpperView` leaves to the full reader."""


_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
_REDIRECT_XATTRS = ("trusted.overlay.redirect", "user.overlay.redirect")
_CAPABILITY = "security.capability"
_NO_META = Meta(0)


def _getx(path: str, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError as err:
        if err.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
            return None
        raise


def _entry_from_stat(abspath: str, st: os.stat_result, *, opaque: bool = False) -> Entry:
    """An entry as the rules see it: kind, mode, owner, mtime, size, rdev, capability."""
    mode = st.st_mode
    cap = _getx(abspath, _CAPABILITY)
    meta = Meta(
        stat.S_IMODE(mode),
        st.st_uid,
        st.st_gid,
        st.st_mtime_ns,
        ((_CAPABILITY, cap),) if cap is not None else (),
    )
    if stat.S_ISDIR(mode):
        return Entry(Kind.DIR, meta, opaque=opaque)
    if stat.S_ISREG(mode):
        return Entry(Kind.FILE, meta, size=st.st_size)
    if stat.S_ISLNK(mode):
        return Entry(Kind.SYMLINK, meta, size=st.st_size, target=os.readlink(abspath))
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = Kind.CHARDEV if stat.S_ISCHR(mode) else Kind.BLOCKDEV
        return Entry(kind, meta, rdev=(os.major(st.st_rdev), os.minor(st.st_rdev)))
    return Entry(Kind.FIFO if stat.S_ISFIFO(mode) else Kind.SOCKET, meta)


class LowerView:
    """An image (or init) layer dir as a :class:`~overunder.semantics.LayerView`, read on
    demand: ``diff`` visits only the lower dirs the upper dir touches, so a big image costs
    what the container changed, not what the image holds. Each dir is listed once with
    :func:`overunder.layerfs.whiteout.list_dir_layer` (every whiteout form); entries are
    stat'ed when asked for. Redirect xattrs (never written by our stores) raise ``_Fallback``.
    """

    def __init__(self, top: Path) -> None:
        self.top = os.fspath(top)
        # dir path -> (children incl. whiteouts, visible names, whited-out names), or None
        self._dirs: dict[str, tuple[tuple[str, ...], frozenset[str], frozenset[str]] | None] = {}
        self._entries: dict[str, Entry | None] = {}

    def _abs(self, path: str) -> str:
        return f"{self.top}/{path}" if path else self.top

    def _listing(self, path: str) -> tuple[tuple[str, ...], frozenset[str], frozenset[str]] | None:
        if path in self._dirs:
            return self._dirs[path]
        result = None
        entry = self.get(path)
        if entry is not None and entry.kind is Kind.DIR:
            visible, gone, _ = list_dir_layer(Path(self._abs(path)))
            result = (tuple(sorted({*visible, *gone})), frozenset(visible), frozenset(gone))
        self._dirs[path] = result
        return result

    def children(self, path: str, /) -> tuple[str, ...]:
        listing = self._listing(path)
        return listing[0] if listing is not None else ()

    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and self.get(path) is not None

    def get(self, path: str, /) -> Entry | None:
        if path in self._entries:
            return self._entries[path]
        entry: Entry | None
        if path == "":
            abspath = self.top
            entry = _entry_from_stat(abspath, os.lstat(abspath), opaque=_dir_opaque(abspath))
        else:
            parent, _, name = path.rpartition("/")
            listing = self._listing(parent)
            if listing is None or name not in listing[0]:
                entry = None
            elif name not in listing[1]:
                entry = Entry(Kind.WHITEOUT, Meta(0))
            else:
                abspath = self._abs(path)
                st = os.lstat(abspath)
                # a ".wh.x" beside this layer's dir "x" hides the lower "x": opaque
                opaque = stat.S_ISDIR(st.st_mode) and (name in listing[2] or _dir_opaque(abspath))
                entry = _entry_from_stat(abspath, st, opaque=opaque)
        self._entries[path] = entry
        return entry


def _dir_opaque(abspath: str) -> bool:
    """Opaque by xattr ``y`` or by a ``.wh..wh..opq`` marker; redirects are not handled."""
    if any(_getx(abspath, n) is not None for n in _REDIRECT_XATTRS):
        raise _Fallback
    value = next((v for n in _OPAQUE_XATTRS if (v := _getx(abspath, n)) is not None), None)
    return value == b"y" or os.path.lexists(f"{abspath}/{OCI_OPAQUE_MARKER}")


class UpperView:
    """An upper dir as a :class:`~overunder.semantics.LayerView` for ``diff`` only.

    Docker's rules compare metadata only for paths that exist in a lower layer; an entry
    no lower has is an ``A`` whatever its metadata. So such entries are built from the
    directory listing alone (kind from ``d_type``, no ``lstat``, no xattrs), and only entries
    shadowing a lower path (or special files, to tell whiteouts) are stat'ed as
    :func:`~overunder.layerfs.reader.read_layer` would. Sizes and contents are therefore not
    meaningful here (``--stat`` uses the full reader). The rarer forms (``.wh.`` files, xattr
    whiteouts in ``opaque="x"`` dirs, ``redirect`` xattrs) raise ``_Fallback``."""

    def __init__(self, top: Path, lowers: Sequence[Layer | LowerView]) -> None:
        self.top = os.fspath(top)
        self.lowers = lowers
        self._entries: dict[str, Entry | None] = {}
        self._children: dict[str, tuple[str, ...]] = {}
        self._types: dict[str, str] = {"": "d"}
        self._lower: dict[str, frozenset[str]] = {}

    def _abs(self, path: str) -> str:
        return f"{self.top}/{path}" if path else self.top

    def children(self, path: str, /) -> tuple[str, ...]:
        found = self._children.get(path)
        if found is not None:
            return found
        entry = self.get(path)
        if entry is None or entry.kind is not Kind.DIR:
            return ()
        names = []
        with os.scandir(self._abs(path)) as it:
            for d in it:
                name = d.name
                if name.startswith(".wh."):
                    raise _Fallback
                names.append(name)
                if d.is_symlink():
                    t = "l"
                elif d.is_dir(follow_symlinks=False):
                    t = "d"
                elif d.is_file(follow_symlinks=False):
                    t = "f"
                else:
                    t = "o"
                self._types[f"{path}/{name}" if path else name] = t
        names.sort()
        out = tuple(names)
        self._children[path] = out
        return out

    def _lower_names(self, parent: str) -> frozenset[str]:
        """Names any lower layer has in ``parent`` (whiteouts included), listed once."""
        names = self._lower.get(parent)
        if names is None:
            names = frozenset().union(*(low.children(parent) for low in self.lowers))
            self._lower[parent] = names
        return names

    def get(self, path: str, /) -> Entry | None:
        if path in self._entries:
            return self._entries[path]
        parent, _, name = path.rpartition("/")
        if path and parent not in self._children:
            self.children(parent)
        t = self._types.get(path)
        if t is None:
            entry = None
        elif t == "o" or path == "" or name in self._lower_names(parent):
            entry = self._full(path)
        else:
            if t == "d" and any(_getx(self._abs(path), n) is not None for n in _REDIRECT_XATTRS):
                raise _Fallback  # a renamed dir whose lower part lives elsewhere
            kind = {"d": Kind.DIR, "f": Kind.FILE, "l": Kind.SYMLINK}[t]
            entry = Entry(kind, _NO_META)
        self._entries[path] = entry
        return entry

    def _full(self, path: str) -> Entry:
        abspath = self._abs(path)
        st = os.lstat(abspath)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            return Entry(Kind.WHITEOUT, Meta(0))
        if stat.S_ISDIR(st.st_mode):
            opaque = next((v for n in _OPAQUE_XATTRS if (v := _getx(abspath, n)) is not None), None)
            if opaque == b"x" or any(_getx(abspath, n) is not None for n in _REDIRECT_XATTRS):
                raise _Fallback
            return _entry_from_stat(abspath, st, opaque=opaque == b"y")
        return _entry_from_stat(abspath, st)


# -- --stat ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StatEntry:
    """One diff line with sizes: ``size`` is the entry's size now (A, C), ``old_size`` before
    (C, D). Regular files and symlinks have sizes; a deleted dir counts its whole old subtree;
    other entries count 0."""

    kind: ChangeKind
    path: str
    type: str
    size: int | None
    old_size: int | None

    @property
    def delta(self) -> int:
        return (self.size or 0) - (self.old_size or 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "Kind": self.kind.value,
            "Path": self.path,
            "Type": self.type,
            "Size": self.size,
            "OldSize": self.old_size,
        }


@dataclass(frozen=True, slots=True)
class DiffStat:
    entries: list[StatEntry]

    @property
    def added_bytes(self) -> int:
        return sum(e.size or 0 for e in self.entries if e.kind is ChangeKind.ADD)

    @property
    def changed_bytes(self) -> int:
        return sum(e.size or 0 for e in self.entries if e.kind is ChangeKind.MODIFY)

    @property
    def deleted_bytes(self) -> int:
        return sum(e.old_size or 0 for e in self.entries if e.kind is ChangeKind.DELETE)

    def count(self, kind: ChangeKind) -> int:
        return sum(1 for e in self.entries if e.kind is kind)

    def totals_json(self) -> dict[str, int]:
        return {
            "Added": self.count(ChangeKind.ADD),
            "Changed": self.count(ChangeKind.MODIFY),
            "Deleted": self.count(ChangeKind.DELETE),
            "AddedBytes": self.added_bytes,
            "ChangedBytes": self.changed_bytes,
            "DeletedBytes": self.deleted_bytes,
        }


def _entry_size(e: Entry) -> int:
    return e.size if e.kind in (Kind.FILE, Kind.SYMLINK) else 0


def _subtree_size(stack: Sequence[Layer], path: str) -> int:
    """Bytes of the merged subtree at ``path`` (a dir) of ``stack``."""
    total = 0
    todo = [path]
    from overunder.semantics import readdir

    while todo:
        p = todo.pop()
        for name in readdir(stack, p):
            child = f"{p}/{name}" if p else name
            hit = lookup(stack, child)
            if hit is None:
                continue
            total += _entry_size(hit.entry)
            if hit.entry.kind is Kind.DIR:
                todo.append(child)
    return total


def stat_changes(upper: Layer, lowers: Sequence[Layer], changes: Sequence[Change]) -> DiffStat:
    """Sizes for ``changes`` of the stack ``[upper, *lowers]`` against ``lowers``."""
    full = [upper, *lowers]
    out: list[StatEntry] = []
    for c in changes:
        rel = c.path.lstrip("/")
        new = lookup(full, rel) if c.kind is not ChangeKind.DELETE else None
        old = lookup(lowers, rel) if c.kind is not ChangeKind.ADD else None
        size = _entry_size(new.entry) if new is not None else None
        if old is None:
            old_size = None
        elif c.kind is ChangeKind.DELETE and old.entry.kind is Kind.DIR:
            old_size = _subtree_size(lowers, rel)
        else:
            old_size = _entry_size(old.entry)
        seen = new if new is not None else old
        kind = seen.entry.kind.value if seen is not None else "?"
        out.append(StatEntry(c.kind, c.path, kind, size, old_size))
    return DiffStat(out)


def diff_stat(paths: EnginePaths, name_or_id: str) -> DiffStat:
    """The container's diff with the bytes of each entry (``diff --stat``)."""
    tree = read_container(paths, name_or_id)
    return stat_changes(tree.upper, tree.lowers, changes_from_upper(tree.upper, tree.lowers))


# -- --patch -----------------------------------------------------------------------------------
def _read_in_layer(layer_dir: Path, rel: str, limit: int) -> bytes | None:
    """The bytes of the regular file ``rel`` of a layer dir, read without following any
    symlink (a running container may swap one in); None when it is not there any more or
    bigger than ``limit``."""
    parts = rel.split("/")
    root = open_root(layer_dir)
    try:
        try:
            dfd = open_dir_nofollow(root, parts[:-1], create=False)
        except Exception:
            return None
        try:
            fd = os.open(
                parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd
            )
        except OSError as err:
            if err.errno in (errno.ENOENT, errno.ELOOP, errno.ENXIO):
                return None
            raise
        finally:
            os.close(dfd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
                return None
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)
    finally:
        os.close(root)


def _is_text(data: bytes) -> bool:
    if b"\0" in data[:8192]:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _file_at(stack: Sequence[Layer], dirs: Sequence[Path], rel: str) -> tuple[Entry, Path] | None:
    hit = lookup(stack, rel)
    if hit is None or hit.entry.kind is not Kind.FILE:
        return None
    layer_rel = hit.chain[0][1] if hit.chain else rel
    return hit.entry, dirs[hit.layer] / layer_rel if layer_rel else dirs[hit.layer]


def patch_lines(
    upper: Layer,
    lowers: Sequence[Layer],
    dirs: ContainerLayers,
    changes: Sequence[Change],
    *,
    limit: int = PATCH_MAX_BYTES,
) -> Iterator[str]:
    """Unified-diff text (lines with their newlines) for every regular file among ``changes``:
    ``C`` against the lower version, ``A`` against nothing, ``D`` to nothing. Binary or bigger
    than ``limit``: one ``Binary files … differ`` / ``… too large to diff`` line."""
    full = [upper, *lowers]
    full_dirs = [dirs.upper, *dirs.lowers]
    for c in changes:
        rel = c.path.lstrip("/")
        new = _file_at(full, full_dirs, rel) if c.kind is not ChangeKind.DELETE else None
        old = _file_at(lowers, dirs.lowers, rel) if c.kind is not ChangeKind.ADD else None
        if new is None and old is None:
            continue
        a = f"a{c.path}" if old is not None else "/dev/null"
        b = f"b{c.path}" if new is not None else "/dev/null"
        yield f"diff --overunder a{c.path} b{c.path}\n"
        old_data = b"" if old is None else _read_file(old, full_dirs, limit)
        new_data = b"" if new is None else _read_file(new, full_dirs, limit)
        if old_data is None or new_data is None:
            yield f"File {c.path} is too large to diff (over {limit} bytes)\n"
            continue
        if not (_is_text(old_data) and _is_text(new_data)):
            if old_data != new_data:
                yield f"Binary files {a} and {b} differ\n"
            continue
        if old_data == new_data:
            continue  # metadata-only change: no content lines
        yield from _unified(old_data, new_data, a, b)


def _read_file(found: tuple[Entry, Path], dirs: Sequence[Path], limit: int) -> bytes | None:
    entry, path = found
    if entry.size > limit:
        return None
    for d in dirs:
        try:
            rel = path.relative_to(d)
        except ValueError:
            continue
        data = _read_in_layer(d, str(rel), limit)
        return data if data is not None else b""
    return b""


def _unified(old: bytes, new: bytes, a: str, b: str) -> Iterator[str]:
    old_lines = old.decode("utf-8").splitlines(keepends=True)
    new_lines = new.decode("utf-8").splitlines(keepends=True)
    for line in difflib.unified_diff(old_lines, new_lines, fromfile=a, tofile=b):
        if not line.endswith("\n"):
            yield line + "\n\\ No newline at end of file\n"
        else:
            yield line


def diff_patch(paths: EnginePaths, name_or_id: str) -> Iterator[str]:
    """``diff --patch``: the container's changes to regular files as a unified diff."""
    tree = read_container(paths, name_or_id)
    changes = changes_from_upper(tree.upper, tree.lowers)
    return patch_lines(tree.upper, tree.lowers, tree.dirs, changes)
