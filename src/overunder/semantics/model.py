"""A mounted overlay as a pure model: the test oracle for the kernel and FUSE overlays.

:class:`OverlayModel` holds lower layers (read-only) and an upper layer (or none: a read-only
mount) and applies file-system operations to them the way kernel overlayfs does with its
defaults (``redirect_dir=off``, ``index=off``, ``metacopy=off``; overlay-semantics.md B-E):

* every modifying operation first **copies up** the object and its missing parent dirs,
  keeping mode, owner, mtime, xattrs, symlink target and content (C1, C2); copy-up of a file
  with hard links below breaks the link (C4, ``index=off``);
* removing a name that a lower layer shows leaves a **char 0/0 whiteout** in the upper (B1);
  a name that only the upper holds is simply removed;
* a dir created where the upper holds a whiteout is **opaque** (rmdir + mkdir, B3);
* renaming a dir that has lower parts fails with **EXDEV** (D2); a pure upper dir renamed into
  a merged dir is made opaque, as the kernel does. With ``redirect_dir=True`` (the kernel's
  ``redirect_dir=on``, and our FUSE overlay) such a dir is copied up without its children and
  carries ``Entry.redirect``: its own old name when it stays in the same dir, else the
  absolute ``/path`` of its lower part;
* errors are ``OSError`` with the errno the kernel gives, checked in the kernel's order
  (path walk -> ENOENT/ENOTDIR/ELOOP, then EROFS for removals and renames, EEXIST before
  EROFS for creations, ...). A failing call changes nothing (the kernel agrees, except for
  a redirect copy-up before a rename that then fails with ENOTEMPTY, which is modelled).

``merged()`` is what the mount shows, ``upper`` what the upper dir holds (compare it with
``layerfs.reader.read_layer(upperdir)`` after :func:`normalize_links`).

Time: operations that set an mtime take it from ``clock`` (default: a counter that starts
one second after the newest mtime in the layers and ticks one second per call).

Content: ``Entry.data`` is :func:`content_id` of the bytes. Writes that keep part of an old
content need those bytes: pass them as ``contents`` (id -> bytes); when unknown, the new
``data`` is None (unknown) and only the size is right.

Paths are relative to the mount (a leading ``/`` is the mount's root); symlinks are followed
where the syscall follows them, absolute targets resolve inside the mount (as in a container),
``..`` is resolved on the real path after a symlink, 40 links give ELOOP.

Gaps (not modelled): permission checks (the caller is root; files are created with the
model's ``uid``/``gid``, ``mode`` is taken as given, no umask), atime/ctime, ``index=on`` /
fuse-overlayfs's hard links kept across copy-up, ``metacopy``, trailing slashes, ``.``/``..``
as the last component, RENAME_WHITEOUT (EINVAL, as overlayfs refuses it), writes to device
nodes (accepted, no change). Opening a fifo or socket for writing gives ENXIO, as with
O_NONBLOCK and no reader.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace

from overunder.semantics.merge import Hit, _resolve_child, flatten, lookup, readdir
from overunder.semantics.types import (
    WHITEOUT,
    Entry,
    Kind,
    Layer,
    LayerView,
    Meta,
    content_id,
    join,
    split,
)

__all__ = ["RENAME_EXCHANGE", "RENAME_NOREPLACE", "RENAME_WHITEOUT", "OverlayModel"]

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4

_SECOND = 1_000_000_000
_MAX_SYMLINKS = 40
_S_ISUID, _S_ISGID, _S_IXGRP = 0o4000, 0o2000, 0o010

_MESSAGES = {
    errno.ENOENT: "No such file or directory",
    errno.EEXIST: "File exists",
    errno.ENOTEMPTY: "Directory not empty",
    errno.ENOTDIR: "Not a directory",
    errno.EISDIR: "Is a directory",
    errno.EXDEV: "Invalid cross-device link",
    errno.EROFS: "Read-only file system",
    errno.EINVAL: "Invalid argument",
    errno.EBUSY: "Device or resource busy",
    errno.EPERM: "Operation not permitted",
    errno.ELOOP: "Too many levels of symbolic links",
    errno.ENODATA: "No data available",
    errno.EOPNOTSUPP: "Operation not supported",
    errno.ENXIO: "No such device or address",
}


def _err(code: int, path: str, path2: str | None = None) -> OSError:
    if path2 is None:
        return OSError(code, _MESSAGES.get(code, errno.errorcode[code]), "/" + path)
    return OSError(code, _MESSAGES.get(code, errno.errorcode[code]), "/" + path, None, "/" + path2)


class _MutableLayer:
    """The upper layer while operations run: a dict of entries plus a child index."""

    def __init__(self, layer: Layer) -> None:
        self.entries: dict[str, Entry] = dict(layer.items())
        self.kids: dict[str, set[str]] = {}
        for path in self.entries:
            if path:
                parent, name = split(path)
                self.kids.setdefault(parent, set()).add(name)

    def get(self, path: str, /) -> Entry | None:
        return self.entries.get(path)

    def children(self, path: str, /) -> list[str]:
        return sorted(self.kids.get(path, ()))

    def put(self, path: str, entry: Entry) -> None:
        if path not in self.entries and path:
            parent, name = split(path)
            self.kids.setdefault(parent, set()).add(name)
        self.entries[path] = entry

    def take(self, path: str) -> list[tuple[str, Entry]]:
        """Remove ``path`` and everything under it; return them, paths relative to ``path``."""
        out: list[tuple[str, Entry]] = []
        if path not in self.entries:
            return out
        todo = [path]
        while todo:
            p = todo.pop()
            out.append((p[len(path) + 1 :] if p != path else "", self.entries.pop(p)))
            todo.extend(join(p, n) for n in self.kids.pop(p, ()))
        parent, name = split(path)
        self.kids.get(parent, set()).discard(name)
        return out

    def place(self, path: str, items: Iterable[tuple[str, Entry]]) -> None:
        for rel, entry in sorted(items, key=lambda kv: kv[0].count("/") if kv[0] else -1):
            self.put(join(path, rel) if rel else path, entry)

    def freeze(self) -> Layer:
        return Layer(self.entries)


class OverlayModel:
    """The reference model of one overlay mount (see the module doc)."""

    def __init__(
        self,
        lowers: Sequence[Layer],
        upper: Layer | None,
        *,
        redirect_dir: bool = False,
        contents: Mapping[str, bytes] | None = None,
        clock: Callable[[], int] | None = None,
        uid: int = 0,
        gid: int = 0,
    ) -> None:
        if not lowers and upper is None:
            raise ValueError("an overlay needs at least one layer")
        self._lowers = list(lowers)
        self._up = _MutableLayer(upper) if upper is not None else None
        self.redirect_dir = redirect_dir
        self._blobs: dict[str, bytes] = dict(contents or {})
        self.uid, self.gid = uid, gid
        if clock is None:
            newest = max(
                (
                    e.meta.mtime_ns
                    for layer in [*self._lowers, upper or Layer()]
                    for e in layer.values()
                ),
                default=0,
            )
            self._time = newest
            clock = self._tick
        self._clock = clock
        self._links = 0

    # --- views -----------------------------------------------------------------------------

    @property
    def upper(self) -> Layer | None:
        """What the upper dir holds (None for a read-only mount)."""
        return self._up.freeze() if self._up is not None else None

    @property
    def lowers(self) -> list[Layer]:
        return list(self._lowers)

    def merged(self) -> Layer:
        """The tree the mount shows."""
        return flatten(self._stack())

    def lookup(self, path: str) -> Entry | None:
        """The merged entry at ``path`` (no symlink followed), or None."""
        hit = lookup(self._stack(), self._clean(path))
        return hit.entry if hit is not None else None

    def listdir(self, path: str = "") -> list[str]:
        p = self._resolve(path, follow=True)
        hit = self._hit(p)
        if hit is None:
            raise _err(errno.ENOENT, p)
        if hit.entry.kind is not Kind.DIR:
            raise _err(errno.ENOTDIR, p)
        return readdir(self._stack(), p)

    def read(self, path: str) -> bytes:
        """A file's content (symlinks followed). ValueError when the model was not given it."""
        p = self._resolve(path, follow=True)
        hit = self._hit(p)
        if hit is None:
            raise _err(errno.ENOENT, p)
        if hit.entry.kind is Kind.DIR:
            raise _err(errno.EISDIR, p)
        return self._content(hit.entry, p)

    # --- namespace operations --------------------------------------------------------------

    def create(
        self, path: str, data: bytes = b"", *, mode: int = 0o644, exclusive: bool = False
    ) -> None:
        """``open(path, O_CREAT|O_WRONLY|O_TRUNC[|O_EXCL], mode)`` then ``write(data)``."""
        p = self._clean(path)
        for _ in range(_MAX_SYMLINKS + 1):
            parent, name = self._parent(p)
            p = join(parent, name)
            hit = self._hit(p)
            if hit is not None and hit.entry.kind is Kind.SYMLINK and not exclusive:
                assert hit.entry.target is not None
                p = self._follow(parent, hit.entry.target)
                continue
            break
        else:
            raise _err(errno.ELOOP, p)
        if hit is not None:
            if exclusive:
                raise _err(errno.EEXIST, p)
            if self._open_check(p, hit, truncating=False):
                self._set_content(p, data, truncate=True)
            return
        up = self._writable(p)
        parent, _ = split(p)
        self._copy_up(parent)
        meta = self._new_meta(parent, mode)
        up.put(p, Entry(Kind.FILE, meta, size=len(data), data=self._store(data)))
        self._touch(parent)

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        p = self._new_name(path)
        up = self._writable(p)
        parent, _ = split(p)
        self._copy_up(parent)
        e = up.get(p)
        # Over a whiteout the new dir must hide the lower one. With redirect_dir (the kernel's
        # "no offline changes" features) every new dir in a merged dir is made opaque too, an
        # optimization that saves lower lookups.
        opaque = (e is not None and e.kind is Kind.WHITEOUT) or (
            self.redirect_dir and self._merge_dir(parent)
        )
        meta = self._new_meta(parent, mode & 0o1777, is_dir=True)
        up.put(p, Entry(Kind.DIR, meta, opaque=opaque))
        self._touch(parent)

    def symlink(self, target: str, path: str) -> None:
        p = self._new_name(path)
        up = self._writable(p)
        parent, _ = split(p)
        self._copy_up(parent)
        meta = replace(self._new_meta(parent, 0o777), mode=0o777)
        size = len(target.encode("utf-8", "surrogateescape"))
        up.put(p, Entry(Kind.SYMLINK, meta, size=size, target=target))
        self._touch(parent)

    def mknod(
        self, path: str, kind: Kind, mode: int = 0o644, rdev: tuple[int, int] | None = None
    ) -> None:
        """A fifo, socket, device or empty regular file. A char 0/0 device is refused with
        EPERM: overlayfs does not let anyone create a whiteout through the mount."""
        p = self._new_name(path)
        up = self._writable(p)
        if kind is Kind.CHARDEV and (rdev or (0, 0)) == (0, 0):
            raise _err(errno.EPERM, p)
        if kind not in (Kind.FIFO, Kind.SOCKET, Kind.CHARDEV, Kind.BLOCKDEV, Kind.FILE):
            raise _err(errno.EINVAL, p)
        parent, _ = split(p)
        self._copy_up(parent)
        meta = self._new_meta(parent, mode)
        devs = (Kind.CHARDEV, Kind.BLOCKDEV)
        if kind is Kind.FILE:
            up.put(p, Entry(kind, meta, data=self._store(b"")))
        else:
            up.put(p, Entry(kind, meta, rdev=(rdev or (0, 0)) if kind in devs else None))
        self._touch(parent)

    def link(self, old: str, new: str) -> None:
        """A hard link ``new`` to ``old`` (not following a symlink at ``old``)."""
        o = self._resolve(old, follow=False)
        ohit = self._hit(o)
        if ohit is None:
            raise _err(errno.ENOENT, o, self._clean(new))
        n = self._new_name(new)
        up = self._writable(n)
        if ohit.entry.kind is Kind.DIR:
            raise _err(errno.EPERM, o, n)
        self._copy_up(o)
        entry = up.get(o)
        assert entry is not None
        if entry.link_id is None:
            self._links += 1
            entry = replace(entry, link_id=f"model-{self._links}")
            up.put(o, entry)
        parent, _ = split(n)
        self._copy_up(parent)
        up.put(n, entry)
        self._touch(parent)

    def unlink(self, path: str) -> None:
        parent, name = self._parent_or_root(path, errno.EISDIR)
        p = join(parent, name)
        up = self._writable(p)
        hit = self._hit(p)
        if hit is None:
            raise _err(errno.ENOENT, p)
        if hit.entry.kind is Kind.DIR:
            raise _err(errno.EISDIR, p)
        self._remove(up, p)

    def rmdir(self, path: str) -> None:
        parent, name = self._parent_or_root(path, errno.EBUSY)
        p = join(parent, name)
        up = self._writable(p)
        hit = self._hit(p)
        if hit is None:
            raise _err(errno.ENOENT, p)
        if hit.entry.kind is not Kind.DIR:
            raise _err(errno.ENOTDIR, p)
        if readdir(self._stack(), p):
            raise _err(errno.ENOTEMPTY, p)
        self._remove(up, p)

    def rename(self, old: str, new: str, flags: int = 0) -> None:
        """``renameat2(old, new, flags)`` with RENAME_NOREPLACE / RENAME_EXCHANGE."""
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE | RENAME_WHITEOUT) or (
            flags & RENAME_EXCHANGE and flags & (RENAME_NOREPLACE | RENAME_WHITEOUT)
        ):
            raise _err(errno.EINVAL, self._clean(old), self._clean(new))
        oparent, oname = self._parent_or_root(old, errno.EBUSY)
        nparent, nname = self._parent_or_root(new, errno.EBUSY)
        src, dst = join(oparent, oname), join(nparent, nname)
        up = self._writable(src)
        ohit = self._hit(src)
        if ohit is None:
            raise _err(errno.ENOENT, src, dst)
        nhit = self._hit(dst)
        exchange = bool(flags & RENAME_EXCHANGE)
        if flags & RENAME_NOREPLACE and nhit is not None:
            raise _err(errno.EEXIST, src, dst)
        if exchange and nhit is None:
            raise _err(errno.ENOENT, src, dst)
        if dst.startswith(src + "/"):
            raise _err(errno.EINVAL, src, dst)
        if src.startswith(dst + "/"):
            raise _err(errno.EINVAL if exchange else errno.ENOTEMPTY, src, dst)
        if src == dst:
            return
        if (
            nhit is not None
            and ohit.layer == 0
            and nhit.layer == 0
            and ohit.entry.link_id is not None
            and ohit.entry.link_id == nhit.entry.link_id
        ):
            return  # two names of one inode: rename(2) does nothing
        is_dir = ohit.entry.kind is Kind.DIR
        if nhit is not None and not exchange:
            new_is_dir = nhit.entry.kind is Kind.DIR
            if is_dir and not new_is_dir:
                raise _err(errno.ENOTDIR, src, dst)
            if not is_dir and new_is_dir:
                raise _err(errno.EISDIR, src, dst)
        if flags & RENAME_WHITEOUT:
            raise _err(errno.EINVAL, src, dst)
        if not self._can_move(ohit):
            raise _err(errno.EXDEV, src, dst)
        if exchange and nhit is not None and not self._can_move(nhit):
            raise _err(errno.EXDEV, src, dst)
        if (
            nhit is not None
            and not exchange
            and nhit.entry.kind is Kind.DIR
            and readdir(self._stack(), dst)
        ):
            if nhit.merged_from == (0,) and not self._pure_upper(ohit):
                # the kernel copies up and sets the redirect before the upper fs refuses
                redirect = self._redirect_for(src, ohit, samedir=oparent == nparent)
                self._copy_up(src)
                self._update(src, lambda e: replace(e, redirect=redirect))
            raise _err(errno.ENOTEMPTY, src, dst)
        if exchange:
            assert nhit is not None
            self._exchange(up, src, ohit, dst, nhit)
        else:
            self._move(up, src, ohit, dst)
        self._touch(oparent)
        self._touch(nparent)

    # --- data and metadata -----------------------------------------------------------------

    def write(self, path: str, data: bytes, *, offset: int = 0) -> None:
        """``open(O_WRONLY|O_NONBLOCK)`` + ``pwrite`` into an existing file (symlinks
        followed)."""
        p = self._existing_file(path)
        if p is None:
            return
        if not data:  # opening for writing copies up; writing nothing changes nothing
            self._copy_up(p)
            return
        old = self._known_content(p)
        size = self._entry(p).size
        if old is None:
            new_size = max(size, offset + len(data))
            self._update(p, lambda e: replace(e, size=new_size, data=None, meta=self._mtime(e)))
            return
        body = old.ljust(offset, b"\0")
        body = body[:offset] + data + body[offset + len(data) :]
        self._set_content(p, body, truncate=True)

    def append(self, path: str, data: bytes) -> None:
        p = self._existing_file(path)
        if p is not None:
            self.write(p, data, offset=self._entry(p).size)

    def truncate(self, path: str, size: int) -> None:
        p = self._existing_file(path, truncating=True)
        if p is None:
            return
        old = self._known_content(p)
        self._copy_up(p)
        if old is None and size != 0:
            self._update(p, lambda e: replace(e, size=size, data=None, meta=self._mtime(e)))
            return
        body = (old or b"")[:size].ljust(size, b"\0")
        self._set_content(p, body, truncate=True)

    def chmod(self, path: str, mode: int, *, follow_symlinks: bool = True) -> None:
        p = self._meta_target(path, follow_symlinks)
        self._update(p, lambda e: replace(e, meta=replace(e.meta, mode=mode & 0o7777)))

    def chown(
        self, path: str, uid: int = -1, gid: int = -1, *, follow_symlinks: bool = True
    ) -> None:
        """``uid``/``gid`` -1 keep the old value. Like Linux, this clears setuid (and setgid
        when group-executable) on non-directories, even for root."""
        p = self._meta_target(path, follow_symlinks)

        def change(e: Entry) -> Entry:
            mode = e.meta.mode
            if e.kind is not Kind.DIR:
                mode &= ~_S_ISUID
                if mode & _S_IXGRP:
                    mode &= ~_S_ISGID
            return replace(
                e,
                meta=replace(
                    e.meta,
                    mode=mode,
                    uid=e.meta.uid if uid == -1 else uid,
                    gid=e.meta.gid if gid == -1 else gid,
                ),
            )

        self._update(p, change)

    def utime(self, path: str, mtime_ns: int, *, follow_symlinks: bool = True) -> None:
        p = self._meta_target(path, follow_symlinks)
        self._update(p, lambda e: replace(e, meta=replace(e.meta, mtime_ns=mtime_ns)))

    def setxattr(self, path: str, name: str, value: bytes, *, follow_symlinks: bool = True) -> None:
        p = self._meta_target(path, follow_symlinks, xattr=name)
        self._update(p, lambda e: replace(e, meta=e.meta.with_xattr(name, value)))

    def removexattr(self, path: str, name: str, *, follow_symlinks: bool = True) -> None:
        p = self._meta_target(path, follow_symlinks, xattr=name)
        if self._entry(p).meta.xattr(name) is None:
            raise _err(errno.ENODATA, p)
        self._update(p, lambda e: replace(e, meta=e.meta.with_xattr(name, None)))

    # --- internals -------------------------------------------------------------------------

    def _tick(self) -> int:
        self._time += _SECOND
        return self._time

    def _stack(self) -> list[LayerView]:
        return [self._up, *self._lowers] if self._up is not None else list(self._lowers)

    def _hit(self, path: str) -> Hit | None:
        return lookup(self._stack(), path)

    def _entry(self, path: str) -> Entry:
        hit = self._hit(path)
        assert hit is not None
        return hit.entry

    @staticmethod
    def _clean(path: str) -> str:
        parts: list[str] = []
        for part in path.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if parts:
                    parts.pop()
                continue
            parts.append(part)
        return "/".join(parts)

    @staticmethod
    def _follow(parent: str, target: str) -> str:
        # not cleaned: "..", "." and symlinks in the target are resolved by the path walk
        return target if target.startswith("/") else join(parent, target)

    def _walk_dir(self, parts: list[str], budget: list[int]) -> str:
        """Resolve ``parts`` as a directory path, following symlinks."""
        cur = ""
        todo = list(parts)
        while todo:
            name = todo.pop(0)
            if name == "..":
                cur = split(cur)[0] if cur else ""
                continue
            child = join(cur, name)
            hit = self._hit(child)
            if hit is None:
                raise _err(errno.ENOENT, child)
            if hit.entry.kind is Kind.SYMLINK:
                budget[0] -= 1
                if budget[0] < 0:
                    raise _err(errno.ELOOP, child)
                target = hit.entry.target or ""
                if target.startswith("/"):
                    cur = ""
                todo[:0] = [t for t in target.split("/") if t not in ("", ".")]
                continue
            if hit.entry.kind is not Kind.DIR:
                raise _err(errno.ENOTDIR, child)
            cur = child
        return cur

    def _split_raw(self, path: str) -> tuple[list[str], str | None]:
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if not parts:
            return [], None
        return parts[:-1], parts[-1]

    def _parent(self, path: str, budget: list[int] | None = None) -> tuple[str, str]:
        parts, name = self._split_raw(path)
        if name is None:
            return "", ""
        parent = self._walk_dir(parts, budget or [_MAX_SYMLINKS])
        if name == "..":
            return split(parent) if parent else ("", "")
        return parent, name

    def _parent_or_root(self, path: str, root_errno: int) -> tuple[str, str]:
        parent, name = self._parent(path)
        if name == "":
            raise _err(root_errno, "")
        return parent, name

    def _resolve(self, path: str, *, follow: bool) -> str:
        budget = [_MAX_SYMLINKS]
        p = path
        while True:
            parent, name = self._parent(p, budget)
            full = join(parent, name) if name else ""
            if not follow or not name:
                return full
            hit = self._hit(full)
            if hit is None or hit.entry.kind is not Kind.SYMLINK:
                return full
            budget[0] -= 1
            if budget[0] < 0:
                raise _err(errno.ELOOP, full)
            target = hit.entry.target or ""
            p = target if target.startswith("/") else join(parent, target)

    def _new_name(self, path: str) -> str:
        parent, name = self._parent(path)
        p = join(parent, name) if name else ""
        if not name or self._hit(p) is not None:
            raise _err(errno.EEXIST, p)
        return p

    def _writable(self, path: str) -> _MutableLayer:
        if self._up is None:
            raise _err(errno.EROFS, path)
        return self._up

    def _existing_file(self, path: str, *, truncating: bool = False) -> str | None:
        """Resolve a file to be opened for writing (or truncated); None when that changes
        nothing in the tree (a device node)."""
        p = self._resolve(path, follow=True)
        hit = self._hit(p)
        if hit is None:
            raise _err(errno.ENOENT, p)
        return p if self._open_check(p, hit, truncating=truncating) else None

    def _open_check(self, p: str, hit: Hit, *, truncating: bool) -> bool:
        """The kernel's checks for opening ``p`` for writing (as with O_NONBLOCK) or
        truncating it, in its order. Special files are never copied up: a fifo or socket
        without a reader gives ENXIO, a device opens without touching the tree (False)."""
        kind = hit.entry.kind
        if kind is Kind.DIR:
            raise _err(errno.EISDIR, p)
        if kind is not Kind.FILE:
            if truncating:
                raise _err(errno.EINVAL, p)
            if kind in (Kind.FIFO, Kind.SOCKET):
                raise _err(errno.ENXIO, p)
            return False
        self._writable(p)
        return True

    def _meta_target(self, path: str, follow: bool, *, xattr: str | None = None) -> str:
        """Resolve the target of a metadata change; ENOENT, then EROFS. ``trusted.overlay.*``
        xattrs set through the mount are stored escaped by the kernel (nested overlays), so
        they are ordinary xattrs here."""
        p = self._resolve(path, follow=follow)
        hit = self._hit(p)
        if hit is None:
            raise _err(errno.ENOENT, p)
        self._writable(p)
        if (
            xattr is not None
            and xattr.startswith("user.")
            and hit.entry.kind not in (Kind.FILE, Kind.DIR)
        ):
            raise _err(errno.EPERM, p)  # user.* xattrs live on files and dirs only
        return p

    def _new_meta(self, parent: str, mode: int, *, is_dir: bool = False) -> Meta:
        pmeta = self._entry(parent).meta
        gid, mode = self.gid, mode & 0o7777
        if pmeta.mode & _S_ISGID:
            gid = pmeta.gid
            if is_dir:
                mode |= _S_ISGID
        return Meta(mode, self.uid, gid, self._clock())

    def _mtime(self, e: Entry) -> Meta:
        return replace(e.meta, mtime_ns=self._clock())

    def _touch(self, dirpath: str) -> None:
        assert self._up is not None
        e = self._up.get(dirpath)
        assert e is not None
        self._up.put(dirpath, replace(e, meta=self._mtime(e)))

    def _store(self, data: bytes) -> str:
        cid = content_id(data)
        self._blobs[cid] = data
        return cid

    def _known_content(self, path: str) -> bytes | None:
        e = self._entry(path)
        if e.size == 0:
            return b""
        return self._blobs.get(e.data) if e.data is not None else None

    def _content(self, e: Entry, path: str) -> bytes:
        if e.size == 0:
            return b""
        if e.data is None or e.data not in self._blobs:
            raise ValueError(f"the model does not know the content of /{path}; pass contents=")
        return self._blobs[e.data]

    def _set_content(self, path: str, body: bytes, *, truncate: bool) -> None:
        self._copy_up(path)
        cid = self._store(body)

        def change(e: Entry) -> Entry:
            meta = self._mtime(e) if truncate else e.meta
            return replace(e, size=len(body), data=cid, meta=meta)

        self._update(path, change)

    def _update(self, path: str, change: Callable[[Entry], Entry]) -> None:
        """Copy ``path`` up and apply ``change`` to it (and to every name of its inode)."""
        self._copy_up(path)
        assert self._up is not None
        e = self._up.get(path)
        assert e is not None
        new = change(e)
        if e.link_id is None:
            self._up.put(path, new)
            return
        for p, other in list(self._up.entries.items()):
            if other.link_id == e.link_id:
                self._up.put(p, new)

    def _copy_up(self, path: str) -> None:
        """Put ``path`` and its missing parents into the upper, as the kernel's copy-up does:
        same metadata and content; dirs without their children; hard links broken."""
        assert self._up is not None
        current = self._up.get(path)
        if current is not None and current.kind is not Kind.WHITEOUT:
            return
        if path:
            self._copy_up(split(path)[0])
        hit = self._hit(path)
        assert hit is not None, f"copy-up of a missing path /{path}"
        if hit.layer == 0:
            return
        e = hit.entry
        if e.kind is Kind.DIR:
            e = replace(e, opaque=False, redirect=None)
        elif e.link_id is not None:
            e = replace(e, link_id=None)
        self._up.put(path, e)

    def _lower_positive(self, path: str) -> bool:
        """Does a lower layer show ``path`` below its parent's upper dir (the kernel's
        ``ovl_lower_positive``)? Then removing it needs a whiteout."""
        parent, name = split(path)
        phit = self._hit(parent)
        assert phit is not None
        chain = tuple((i, p) for i, p in phit.chain if i > 0)
        return bool(chain) and _resolve_child(self._stack(), chain, name) is not None

    def _remove(self, up: _MutableLayer, path: str) -> None:
        parent, _ = split(path)
        positive = self._lower_positive(path)
        self._copy_up(parent)
        up.take(path)
        if positive:
            up.put(path, WHITEOUT)
        self._touch(parent)

    @staticmethod
    def _pure_upper(hit: Hit) -> bool:
        return hit.merged_from == (0,)

    def _can_move(self, hit: Hit) -> bool:
        return self.redirect_dir or hit.entry.kind is not Kind.DIR or self._pure_upper(hit)

    def _merge_dir(self, path: str) -> bool:
        hit = self._hit(path)
        return hit is not None and any(i > 0 for i in hit.merged_from)

    def _redirect_for(self, path: str, hit: Hit, samedir: bool) -> str:
        """The redirect the kernel writes on a merged dir about to move (``ovl_set_redirect``)."""
        current = hit.entry.redirect
        if current is not None and (samedir or current.startswith("/")):
            return current
        if samedir:
            return split(path)[1]
        lower_path = next(p for i, p in hit.chain if i > 0)
        return "/" + lower_path

    def _prepare_dir_move(self, path: str, hit: Hit, dest_parent: str) -> list[tuple[str, Entry]]:
        """Copy up what moves and take it out of the upper; fix the moved dir's flags."""
        assert self._up is not None
        src_parent = split(path)[0]
        self._copy_up(path)
        redirect = None
        if hit.entry.kind is Kind.DIR and not self._pure_upper(hit):
            redirect = self._redirect_for(path, hit, samedir=src_parent == dest_parent)
        items = self._up.take(path)
        if hit.entry.kind is Kind.DIR:
            top = dict(items)[""]
            if redirect is not None:
                top = replace(top, redirect=redirect)
            elif not top.opaque and self._merge_dir(dest_parent):
                top = replace(top, opaque=True)
            items = [("", top), *[(r, e) for r, e in items if r]]
        return items

    def _move(self, up: _MutableLayer, src: str, ohit: Hit, dst: str) -> None:
        positive = self._lower_positive(src)
        dst_parent = split(dst)[0]
        self._copy_up(split(src)[0])
        self._copy_up(dst_parent)
        items = self._prepare_dir_move(src, ohit, dst_parent)
        if positive:
            up.put(src, WHITEOUT)
        up.take(dst)
        up.place(dst, items)

    def _exchange(self, up: _MutableLayer, src: str, ohit: Hit, dst: str, nhit: Hit) -> None:
        sp, dp = split(src)[0], split(dst)[0]
        self._copy_up(sp)
        self._copy_up(dp)
        self._copy_up(src)
        self._copy_up(dst)
        a = self._prepare_dir_move(src, ohit, dp)
        b = self._prepare_dir_move(dst, nhit, sp)
        up.place(dst, a)
        up.place(src, b)
