"""Layers as data: entries with metadata, keyed by relative path.

A :class:`Layer` is one directory tree of an overlay stack (a lower layer or an upper dir):
paths are relative (``"a/b"``), the root is ``""`` and is always present (a default ``0755``
root dir is added when none is given). Every entry's parent must be a directory of the same
layer (``Layer.of`` fills missing parents in). Deletions are ``Kind.WHITEOUT`` entries, opaque
dirs carry ``opaque=True``; hard links are entries of one layer sharing a ``link_id``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol

from overunder.errors import InvalidArgument

__all__ = [
    "DEFAULT_DIR_META",
    "WHITEOUT",
    "Entry",
    "Kind",
    "Layer",
    "LayerView",
    "Meta",
    "Stack",
    "check_path",
    "content_id",
    "join",
    "normalize_links",
    "parent_of",
    "path_key",
    "split",
]


class Kind(StrEnum):
    """What an entry is. Hard links are not a kind: see ``Entry.link_id``."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    CHARDEV = "chardev"
    BLOCKDEV = "blockdev"
    FIFO = "fifo"
    SOCKET = "socket"
    WHITEOUT = "whiteout"


@dataclass(frozen=True, slots=True)
class Meta:
    """Inode metadata. ``mode`` holds permission bits only (incl. suid/sgid/sticky, ``& 0o7777``).

    ``xattrs`` are (name, value) pairs, kept sorted by name; overlay's own
    ``trusted.overlay.*`` / ``user.overlay.*`` never appear here.
    """

    mode: int
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()

    def __post_init__(self) -> None:
        if self.mode & ~0o7777:
            raise InvalidArgument(
                f"mode {self.mode:#o} has bits outside 0o7777",
                hint="pass permission bits only; the file type is Entry.kind",
            )
        if len(self.xattrs) > 1 and list(self.xattrs) != sorted(self.xattrs):
            object.__setattr__(self, "xattrs", tuple(sorted(self.xattrs)))

    def xattr(self, name: str) -> bytes | None:
        """The value of xattr ``name``, or None."""
        for key, value in self.xattrs:
            if key == name:
                return value
        return None

    def with_xattr(self, name: str, value: bytes | None) -> Meta:
        """A copy with ``name`` set to ``value`` (removed when ``value`` is None)."""
        rest = tuple(kv for kv in self.xattrs if kv[0] != name)
        if value is not None:
            rest = (*rest, (name, value))
        return replace(self, xattrs=tuple(sorted(rest)))


DEFAULT_DIR_META = Meta(0o755)


@dataclass(frozen=True, slots=True)
class Entry:
    """One path of a layer.

    ``size`` is the byte size for files (``len(target)`` for symlinks, 0 otherwise); ``data`` a
    content id (:func:`content_id`) for files, None when unknown; ``target`` the symlink target;
    ``rdev`` (major, minor) for devices; ``opaque`` marks a dir hiding the lower layers' children;
    ``link_id`` labels a hard-link group within one layer (labels mean nothing across layers);
    ``redirect`` (dirs, ``redirect_dir=on``) says where the lower layers' part of a renamed dir
    is: a name in the same parent's lower dirs, or ``"/abs/path"`` from the lower layers' root.
    """

    kind: Kind
    meta: Meta
    size: int = 0
    data: str | None = None
    target: str | None = None
    rdev: tuple[int, int] | None = None
    opaque: bool = False
    link_id: str | None = None
    redirect: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.kind is Kind.DIR

    @property
    def is_whiteout(self) -> bool:
        return self.kind is Kind.WHITEOUT

    @classmethod
    def file(
        cls,
        content: bytes | None = None,
        *,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        mtime_ns: int = 0,
        xattrs: Iterable[tuple[str, bytes]] = (),
        data: str | None = None,
        size: int | None = None,
        link_id: str | None = None,
    ) -> Entry:
        """A regular file; ``content`` gives both ``data`` (its id) and ``size``."""
        if content is not None:
            data, size = content_id(content), len(content)
        return cls(
            Kind.FILE,
            Meta(mode, uid, gid, mtime_ns, tuple(xattrs)),
            size=size or 0,
            data=data,
            link_id=link_id,
        )

    @classmethod
    def dir(
        cls,
        *,
        mode: int = 0o755,
        uid: int = 0,
        gid: int = 0,
        mtime_ns: int = 0,
        xattrs: Iterable[tuple[str, bytes]] = (),
        opaque: bool = False,
    ) -> Entry:
        return cls(Kind.DIR, Meta(mode, uid, gid, mtime_ns, tuple(xattrs)), opaque=opaque)

    @classmethod
    def symlink(
        cls, target: str, *, uid: int = 0, gid: int = 0, mtime_ns: int = 0, mode: int = 0o777
    ) -> Entry:
        return cls(
            Kind.SYMLINK,
            Meta(mode, uid, gid, mtime_ns),
            size=len(target.encode("utf-8", "surrogateescape")),
            target=target,
        )

    @classmethod
    def special(
        cls,
        kind: Kind,
        *,
        rdev: tuple[int, int] | None = None,
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        mtime_ns: int = 0,
    ) -> Entry:
        """A device (``rdev`` needed), fifo or socket."""
        if kind not in (Kind.CHARDEV, Kind.BLOCKDEV, Kind.FIFO, Kind.SOCKET):
            raise InvalidArgument(f"{kind} is not a special file kind")
        if kind in (Kind.CHARDEV, Kind.BLOCKDEV) and rdev is None:
            raise InvalidArgument(f"a {kind} needs rdev", hint="pass rdev=(major, minor)")
        return cls(kind, Meta(mode, uid, gid, mtime_ns), rdev=rdev)

    @classmethod
    def whiteout(cls) -> Entry:
        return WHITEOUT


WHITEOUT = Entry(Kind.WHITEOUT, Meta(0))
"""The one whiteout entry (all whiteouts are equal)."""


def content_id(content: bytes) -> str:
    """The id of file content used in ``Entry.data``: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(content).hexdigest()


def split(path: str) -> tuple[str, str]:
    """``"a/b/c"`` -> ``("a/b", "c")``; ``"a"`` -> ``("", "a")``."""
    head, _, tail = path.rpartition("/")
    return head, tail


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def check_path(path: str) -> None:
    """Raise InvalidArgument unless ``path`` is a clean relative layer path (``""`` = root)."""
    if path == "":
        return
    for part in path.split("/"):
        if part in ("", ".", "..") or "\0" in part:
            raise InvalidArgument(
                f"{path!r} is not a clean relative path",
                hint="use 'a/b' form: no leading or trailing '/', no '.', '..' or empty parts",
            )


def path_key(path: str) -> tuple[str, ...]:
    """Sort key that puts every dir immediately before its whole subtree."""
    return tuple(path.split("/")) if path else ()


class LayerView(Protocol):
    """What the merge functions need from a layer (a :class:`Layer` or a mutable model layer)."""

    def get(self, path: str, /) -> Entry | None: ...

    def children(self, path: str, /) -> Sequence[str]: ...


class Layer(Mapping[str, Entry]):
    """An immutable layer: path -> :class:`Entry`, iterated dir-before-subtree, names sorted."""

    __slots__ = ("_children", "_entries")

    def __init__(self, entries: Mapping[str, Entry] | Iterable[tuple[str, Entry]] = (), /) -> None:
        items = entries.items() if isinstance(entries, Mapping) else entries
        raw: dict[str, Entry] = {}
        for path, entry in items:
            check_path(path)
            raw[path] = entry
        root = raw.setdefault("", Entry(Kind.DIR, DEFAULT_DIR_META))
        if root.kind is not Kind.DIR:
            raise InvalidArgument("a layer's root must be a directory")
        children: dict[str, list[str]] = {}
        for path, entry in raw.items():
            if (entry.opaque or entry.redirect is not None) and entry.kind is not Kind.DIR:
                raise InvalidArgument(f"{path!r}: only directories can be opaque or redirected")
            if path == "":
                continue
            parent, name = split(path)
            pentry = raw.get(parent)
            if pentry is None or pentry.kind is not Kind.DIR:
                raise InvalidArgument(
                    f"{path!r}: its parent {parent!r} is not a directory of this layer",
                    hint="add the parent dirs (Layer.of fills them in)",
                )
            children.setdefault(parent, []).append(name)
        self._index(raw, children)

    def _index(self, raw: dict[str, Entry], children: dict[str, list[str]]) -> None:
        for names in children.values():
            names.sort()
        self._children = {k: tuple(v) for k, v in children.items()}
        self._entries = {p: raw[p] for p in sorted(raw, key=path_key)}

    @classmethod
    def trusted(cls, entries: dict[str, Entry], /) -> Layer:
        """A layer from entries known to be valid (clean paths, a dir root, every parent a dir
        of the layer): no checks, for readers and merges of large trees."""
        layer = cls.__new__(cls)
        children: dict[str, list[str]] = {}
        for path in entries:
            if path:
                parent, _, name = path.rpartition("/")
                children.setdefault(parent, []).append(name)
        layer._index(entries, children)
        return layer

    @classmethod
    def of(
        cls,
        entries: Mapping[str, Entry] | Iterable[tuple[str, Entry]] = (),
        /,
        *,
        parent_meta: Meta = DEFAULT_DIR_META,
    ) -> Layer:
        """Like ``Layer(entries)`` but missing parent dirs are created with ``parent_meta``."""
        items = dict(entries.items() if isinstance(entries, Mapping) else entries)
        for path in list(items):
            parent = parent_of(path)
            while parent and parent not in items:
                items[parent] = Entry(Kind.DIR, parent_meta)
                parent = parent_of(parent)
        return cls(items)

    def __getitem__(self, path: str) -> Entry:
        return self._entries[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, path: object) -> bool:
        return path in self._entries

    def get(self, path: str, default: Entry | None = None, /) -> Entry | None:  # type: ignore[override]
        return self._entries.get(path, default)

    def children(self, path: str, /) -> tuple[str, ...]:
        """Names directly under ``path`` in this layer (whiteouts included), sorted."""
        return self._children.get(path, ())

    def __repr__(self) -> str:
        body = ", ".join(f"{p!r}: {e!r}" for p, e in self._entries.items())
        return f"Layer({{{body}}})"


Stack = Sequence[Layer]
"""Layers top first: index 0 is the upper (or topmost lower)."""


def normalize_links(layer: Layer) -> Layer:
    """The layer with hard-link labels made canonical: each group is labelled by its first path
    (in layer order) and groups of one lose their label. Two layers with the same link groups
    compare equal after this, whatever labels their readers chose."""
    members: dict[str, list[str]] = {}
    for path, entry in layer.items():
        if entry.link_id is not None:
            members.setdefault(entry.link_id, []).append(path)
    relabel: dict[str, str | None] = {
        lid: (paths[0] if len(paths) > 1 else None) for lid, paths in members.items()
    }
    return Layer(
        (p, e if e.link_id is None else replace(e, link_id=relabel[e.link_id]))
        for p, e in layer.items()
    )
