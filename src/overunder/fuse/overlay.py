"""The overlay as a FUSE filesystem: :class:`OverlayOperations` maps the transport's
inode-level requests (:mod:`overunder.fuse.session`) onto :class:`~overunder.fuse.core.OverlayCore`.

Speed comes from the kernel's caches, which are safe to keep long because only this process
writes through the mount (lower layers must not change while mounted, as for the kernel):
names, negative names and attributes are cached for an hour, open files keep their page cache
(``keep_cache``), directory listings are cached by the kernel (``FOPEN_CACHE_DIR``; the kernel
drops them itself when we change the directory), and readdir answers names + types only (no
READDIRPLUS, so ``ls -f``/``find`` cost one request per 4 KiB of names). Directories have no
handles (``stateless_dirs``): no OPENDIR/RELEASEDIR round trips, so a warm ``find`` sends no
request at all; each listing is a snapshot named by its readdir cookies, rebuilt on rewind.
We clear suid/sgid ourselves (``HANDLE_KILLPRIV_V2``, :meth:`OverlayCore.kill_suidgid`): the
kernel then stops sending a GETATTR before every chown and most GETXATTR
``security.capability`` before writes, and the remaining ones for files made through the
mount are answered from memory (an untar: ~15% fewer requests). FLUSH is answered ENOSYS once
(nothing to flush).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from overunder.fuse.core import Caller, DirEntry, OverlayCore
from overunder.fuse.layers import Stack
from overunder.fuse.nodes import ROOT_ID, Node
from overunder.fuse.session import (
    EntryAttributes,
    FileInfo,
    FuseError,
    Operations,
    ReaddirToken,
    RequestContext,
    Session,
    SetattrRequest,
    StatvfsLike,
)
from overunder.fuse.trace import Tracer

__all__ = ["CACHE_TIMEOUT", "OverlayOperations", "make_session"]

CACHE_TIMEOUT = 3600.0
log = logging.getLogger("overunder.fuse")
_fsdecode = os.fsdecode


_LISTINGS_KEPT = 32  # merged listings kept for readers part-way through a directory


class OverlayOperations(Operations):
    """FUSE requests on the overlay. Every OSError from the layers reaches the caller as its
    errno (the session runs with ``oserror_passthrough``)."""

    def __init__(
        self, stack: Stack, tracer: Tracer | None = None, *, writeback: bool = False
    ) -> None:
        self.core = OverlayCore(stack, tracer)
        # With the kernel's writeback cache, it may read pages of a file opened write-only
        # and keeps O_APPEND positions itself (see the session's module doc).
        self.writeback = writeback
        self._files: dict[int, tuple[int, Node]] = {}
        self._root_daemon = os.geteuid() == 0
        # Directory listings by generation: a readdir cookie is (generation << 32) | position,
        # so a reader continues on the listing it started (a snapshot, as per handle) though
        # there are no directory handles (stateless_dirs). Rebuilt on every rewind.
        self._listings: dict[int, tuple[int, list[tuple[bytes, int, int]]]] = {}
        self._listing_gen = 0
        self._next_fh = 1

    # ------------------------------------------------------------------ helpers
    def _node(self, ino: int) -> Node:
        try:
            return self.core.nodes.by_id[ino]
        except KeyError:
            raise FuseError(errno.ESTALE) from None

    def _attr(self, node: Node, st: os.stat_result | None = None) -> EntryAttributes:
        if st is None:
            st = self.core.stat(node)
        nlink = st.st_nlink
        if node.fmt == stat.S_IFDIR:
            if node.merged_dir:
                nlink = 1
        elif node.index_key is not None:
            nlink = self.core.nlink(node, st)
        return EntryAttributes(
            node.nid,
            # A file still in a lower layer may be changed there behind our back (the tutorial
            # appends to a lower file while mounted, and the kernel overlay shows it): its
            # attributes are never cached, so size and mtime are always the lower file's.
            attr_timeout=0 if not node.in_upper and node.fmt != stat.S_IFDIR else None,
            st_mode=st.st_mode,
            st_nlink=nlink,
            st_uid=st.st_uid,
            st_gid=st.st_gid,
            st_rdev=st.st_rdev,
            st_size=st.st_size,
            st_blksize=st.st_blksize,
            st_blocks=st.st_blocks,
            st_atime_ns=st.st_atime_ns,
            st_mtime_ns=st.st_mtime_ns,
            st_ctime_ns=st.st_ctime_ns,
        )

    def _entry(self, node: Node, st: os.stat_result | None = None) -> EntryAttributes:
        attr = self._attr(node, st)
        node.nlookup += 1
        return attr

    @staticmethod
    def _caller(ctx: RequestContext) -> Caller:
        return Caller(ctx.uid, ctx.gid, ctx.pid)

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    # ------------------------------------------------------------------ names
    def lookup(self, parent: int, name: bytes) -> EntryAttributes:
        core = self.core
        node = core.resolve(self._node(parent), _fsdecode(name))
        if node is None:
            # A cached "does not exist": only we create names, and we tell the kernel.
            return EntryAttributes(0, entry_timeout=CACHE_TIMEOUT)
        return self._entry(node, core.last_st)

    def forget(self, items: list[tuple[int, int]]) -> None:
        forget = self.core.nodes.forget
        for ino, count in items:
            forget(ino, count)

    def getattr(self, ino: int, fh: int | None) -> EntryAttributes:
        if ino == ROOT_ID:
            attr = self._attr(self.core.root)
            attr.st_ino = ROOT_ID
            return attr
        return self._attr(self._node(ino))

    def setattr(self, ino: int, attr: SetattrRequest, fh: int | None) -> EntryAttributes:
        node = self._node(ino)
        fd = self._files[fh][0] if fh is not None and fh in self._files else None
        now = self.core.now_ns()
        atime = attr.atime_ns if attr.atime_ns is not None else (now if attr.atime_now else None)
        mtime = attr.mtime_ns if attr.mtime_ns is not None else (now if attr.mtime_now else None)
        self.core.setattr(
            node, mode=attr.mode, uid=attr.uid, gid=attr.gid, size=attr.size,
            atime_ns=atime, mtime_ns=mtime, fd=fd,
        )  # fmt: skip
        ctx = attr.caller
        if attr.kill_suidgid and not (
            # A chown by root, done by root: the lchown above already cleared the bits by the
            # same rule (the caller is in every group), so skip the extra lstat (untar: every
            # file is chowned).
            self._root_daemon
            and ctx is not None
            and ctx.uid == 0
            and (attr.uid is not None or attr.gid is not None)
        ):
            self.core.kill_suidgid(node, self._caller(ctx) if ctx is not None else None)
        out = self._attr(node)
        if ino == ROOT_ID:
            out.st_ino = ROOT_ID
        return out

    def readlink(self, ino: int) -> bytes:
        try:
            return self.core.readlink(self._node(ino))
        except OSError as err:
            # The kernel asks only for a node it just looked up as a symlink, so any failure
            # here is a layer changing under the mount or a bug: leave the real path in the
            # log (kept when non-empty), as the caller sees only the errno.
            log.warning("READLINK %d: %s: %s", ino, err.filename, err.strerror)
            raise

    def mknod(
        self, parent: int, name: bytes, mode: int, rdev: int, ctx: RequestContext
    ) -> EntryAttributes:
        node, st = self.core.mknod(
            self._node(parent), _fsdecode(name), mode & ~ctx.umask, rdev, self._caller(ctx)
        )
        return self._entry(node, st)

    def mkdir(self, parent: int, name: bytes, mode: int, ctx: RequestContext) -> EntryAttributes:
        node, st = self.core.mkdir(
            self._node(parent), _fsdecode(name), mode & ~ctx.umask & 0o7777, self._caller(ctx)
        )
        return self._entry(node, st)

    def symlink(
        self, parent: int, name: bytes, target: bytes, ctx: RequestContext
    ) -> EntryAttributes:
        node, st = self.core.symlink(
            self._node(parent), _fsdecode(name), _fsdecode(target), self._caller(ctx)
        )
        return self._entry(node, st)

    def unlink(self, parent: int, name: bytes, ctx: RequestContext) -> None:
        self.core.unlink(self._node(parent), _fsdecode(name))

    def rmdir(self, parent: int, name: bytes, ctx: RequestContext) -> None:
        self.core.rmdir(self._node(parent), _fsdecode(name))

    def rename(  # noqa: PLR0917 (the Operations signature)
        self,
        parent_old: int,
        name_old: bytes,
        parent_new: int,
        name_new: bytes,
        flags: int,
        ctx: RequestContext,
    ) -> None:
        self.core.rename(
            self._node(parent_old), _fsdecode(name_old), self._node(parent_new),
            _fsdecode(name_new), flags,
        )  # fmt: skip

    def link(
        self, ino: int, new_parent: int, new_name: bytes, ctx: RequestContext
    ) -> EntryAttributes:
        node = self.core.link(self._node(ino), self._node(new_parent), _fsdecode(new_name))
        return self._entry(node)

    # ------------------------------------------------------------------ files
    def open(self, ino: int, flags: int, ctx: RequestContext) -> FileInfo:
        node = self._node(ino)
        if self.writeback:
            flags = self._writeback_flags(flags)
        fd = self.core.open(node, flags)
        fh = self._new_fh()
        self._files[fh] = (fd, node)
        keep = True
        if not node.in_upper:
            # Only we write the upper layer, so its pages stay valid; a lower file's pages
            # are kept while the file is unchanged since the last open.
            st = os.fstat(fd)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            keep = node.stamp == stamp
            node.stamp = stamp
        return FileInfo(fh, keep_cache=keep, noflush=True)

    @staticmethod
    def _writeback_flags(flags: int) -> int:
        if flags & os.O_ACCMODE == os.O_WRONLY:
            flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
        return flags & ~os.O_APPEND

    def create(
        self, parent: int, name: bytes, mode: int, flags: int, ctx: RequestContext
    ) -> tuple[FileInfo, EntryAttributes]:
        if self.writeback:
            flags = self._writeback_flags(flags)
        node, st, fd = self.core.create(
            self._node(parent), _fsdecode(name), mode & ~ctx.umask, flags, self._caller(ctx)
        )
        fh = self._new_fh()
        self._files[fh] = (fd, node)
        return FileInfo(fh, keep_cache=True, noflush=True), self._entry(node, st)

    def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(self._files[fh][0], size, off)

    def write(self, fh: int, off: int, buf: bytes) -> int:
        return os.pwrite(self._files[fh][0], buf, off)

    # No flush(): it would do nothing (data goes to the layer file on every WRITE), and the
    # kernel's ENOSYS answer stops FLUSH requests for good; with the writeback cache that saves
    # one round trip per close(), as fuse-overlayfs does.

    def release(self, fh: int) -> None:
        entry = self._files.pop(fh, None)
        if entry is not None:
            os.close(entry[0])

    def fsync(self, fh: int, datasync: bool) -> None:
        fd = self._files[fh][0]
        if datasync:
            os.fdatasync(fd)
        else:
            os.fsync(fd)

    def kill_suidgid(self, ino: int, fh: int, ctx: RequestContext) -> None:
        self.core.kill_suidgid(self._node(ino), self._caller(ctx))

    def fallocate(self, fh: int, off: int, length: int, mode: int) -> None:
        if mode:
            raise FuseError(errno.EOPNOTSUPP)
        os.posix_fallocate(self._files[fh][0], off, length)

    # ------------------------------------------------------------------ dirs
    # No opendir/releasedir (stateless_dirs): the kernel then caches every listing as with
    # keep_cache + cache_readdir (what our opendir answered) and saves two round trips per
    # opendir(); readdir/fsyncdir get the directory's inode number as ``fh``.
    stateless_dirs = True

    def _listing(self, node: Node) -> list[tuple[bytes, int, int]]:
        parent = node.parent if node.parent is not None else node
        merged: list[DirEntry] = self.core.merged_names(node)
        fsencode = os.fsencode
        out = [(b".", node.nid, stat.S_IFDIR), (b"..", parent.nid, stat.S_IFDIR)]
        out.extend((fsencode(e.name), e.ino, e.fmt) for e in merged)
        return out

    def readdir(self, fh: int, start_id: int, token: ReaddirToken) -> None:
        ino = fh
        gen, pos = start_id >> 32, start_id & 0xFFFF_FFFF
        kept = self._listings.get(gen) if start_id else None
        if kept is None or kept[0] != ino:
            # Rewind or first read (or a listing no longer kept): a fresh merged listing.
            node = self._node(ino)
            if node.fmt != stat.S_IFDIR:
                raise FuseError(errno.ENOTDIR)
            entries = self._listing(node)
            self._listing_gen = gen = self._listing_gen % 0x7FFF_FFFF + 1
            self._listings[gen] = (ino, entries)
            if len(self._listings) > _LISTINGS_KEPT:
                del self._listings[next(iter(self._listings))]
        else:
            entries = kept[1]
        base = gen << 32
        add = token.add
        for i in range(pos, len(entries)):
            name, child, fmt = entries[i]
            if not add(name, (child, fmt), base | (i + 1)):
                break

    def fsyncdir(self, fh: int, datasync: bool) -> None:
        node = self._node(fh)  # the inode (stateless_dirs)
        if not node.in_upper:
            return
        fd = os.open(self.core.upath(node), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ misc
    def statfs(self, ctx: RequestContext) -> StatvfsLike:
        return self.core.statfs()

    def setxattr(
        self, ino: int, name: bytes, value: bytes, flags: int, ctx: RequestContext
    ) -> None:
        self.core.setxattr(self._node(ino), _fsdecode(name), value, flags)

    def getxattr(self, ino: int, name: bytes, size: int, ctx: RequestContext) -> bytes:
        node = self._node(ino)
        if node.nocaps and name == b"security.capability":
            # The kernel's probe before every first write and chown: no syscall, no OSError.
            raise FuseError(errno.ENODATA)
        return self.core.getxattr(node, _fsdecode(name))

    def listxattr(self, ino: int, ctx: RequestContext) -> Sequence[bytes]:
        return [os.fsencode(n) for n in self.core.listxattr(self._node(ino))]

    def removexattr(self, ino: int, name: bytes, ctx: RequestContext) -> None:
        self.core.removexattr(self._node(ino), _fsdecode(name))

    def access(self, ino: int, mode: int, ctx: RequestContext) -> None:
        if mode & os.W_OK and self.core.stack.readonly:
            raise FuseError(errno.EROFS)

    def destroy(self) -> None:
        for fd, _node in self._files.values():
            os.close(fd)
        self._files.clear()
        # The tracer stays open: whoever made it (the daemon's serve()) still writes the
        # ``unmount`` event after the session ends, then closes it.


def make_session(
    ops: OverlayOperations, mountpoint: Path, *, fsname: str = "overlay", debug: bool = False
) -> Session:
    """The FUSE session for an overlay mount: ``default_permissions`` (the kernel checks the
    caller against our attributes, as overlayfs does), ``allow_other`` when root (an overlay is
    for every user), long cache timeouts, ``ro`` for a lowerdir-only mount, and suid/sgid
    clearing done here (``HANDLE_KILLPRIV_V2``)."""
    options = ["default_permissions"]
    if os.geteuid() == 0:
        options += ["allow_other", "dev", "suid"]
    if ops.core.stack.readonly:
        options.append("ro")
    return Session(
        ops,
        mountpoint,
        fsname=fsname,
        subtype="overunder",
        options=options,
        entry_timeout=CACHE_TIMEOUT,
        attr_timeout=CACHE_TIMEOUT,
        writeback_cache=ops.writeback,
        # We clear suid/sgid ourselves (OverlayCore.kill_suidgid): saves the kernel's GETATTR
        # before every chown and most GETXATTR security.capability before writes.
        handle_killpriv_v2=True,
        oserror_passthrough=True,
        debug=debug,
    )
