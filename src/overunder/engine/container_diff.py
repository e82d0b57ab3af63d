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
from overunder.semantics import (
    Change,
    ChangeKind,
    Entry,
    Kind,
    Layer,
    changes_from_upper,
    lookup,
)

__all__ = [
    "ChangeKind",
    "DiffStat",
    "StatEntry",
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
    """``docker diff``'s lines for the container, sorted by path."""
    tree = read_container(paths, name_or_id)
    return changes_from_upper(tree.upper, tree.lowers)


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
