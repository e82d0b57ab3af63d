"""A FUSE filesystem session over ``/dev/fuse``, in pure Python: the API a filesystem implements
(:class:`Operations`) and the loop that serves it (:class:`Session`).

How to use it::

    class MyFS(Operations):
        def lookup(self, parent: int, name: bytes) -> EntryAttributes: ...
        def getattr(self, ino: int, fh: int | None) -> EntryAttributes: ...

    session = Session(MyFS(), Path("/mnt/x"), fsname="overlay", options=["default_permissions"])
    session.mount()          # returns once the kernel accepted the mount
    if os.fork() == 0:       # daemonize here if you want to (the fd is inherited)
        session.run(ready_fd=w)  # writes b"\\n" to w once FUSE_INIT is answered
        os._exit(0)
    session.close()          # the parent drops its copy of the fd (the mount stays)

The model is libfuse's *low-level* API (and pyfuse3's ``Operations``): everything is addressed
by inode number (``ino``, the kernel's ``nodeid``; the root is :data:`ROOT_INODE` = 1) and names
are ``bytes``. Handlers are plain synchronous methods, called one at a time from one thread.

Rules a filesystem must follow (the kernel relies on them):

- **Lookup counts.** Every successful reply carrying an :class:`EntryAttributes` for an entry
  (``lookup``, ``mknod``, ``mkdir``, ``symlink``, ``link``, ``create``, and each entry accepted
  by :meth:`ReaddirToken.add` in READDIRPLUS mode, except ``.`` and ``..``) adds one to the
  kernel's reference count of that inode. The kernel gives them back with ``forget(items)``;
  an inode number must stay valid (and mean the same object) until its count drops to 0.
  ``(ino, generation)`` must be unique over the filesystem's lifetime.
- **Negative entries.** ``lookup`` may return ``EntryAttributes(st_ino=0, entry_timeout=t)``
  instead of raising ENOENT: the kernel then caches "does not exist" for ``t`` seconds (no
  lookup count is taken).
- **Errors.** Raise :class:`FuseError` (``FuseError(errno.ENOENT)``); the caller sees that errno.
  Any other exception is logged (``overunder.fuse`` logger, with traceback) and answered with
  EIO; the loop keeps running. (``Session(..., oserror_passthrough=True)`` also turns an
  ``OSError`` with an errno into that errno, unlogged.)
- **Umask.** ``DONT_MASK`` is negotiated: ``mode`` in ``mknod``/``mkdir``/``create`` is *not*
  masked by the kernel; apply ``mode & ~ctx.umask`` yourself.
- **O_TRUNC.** ``ATOMIC_O_TRUNC`` is negotiated: ``open`` gets ``O_TRUNC`` in ``flags`` and must
  truncate (the kernel sends no separate SETATTR).
- **Write-back cache** (``Session(writeback_cache=True)``): the kernel may READ from files
  opened write-only and keeps ``O_APPEND`` positions itself; like libfuse's passthrough_ll,
  ``open``/``create`` should turn ``O_WRONLY`` into ``O_RDWR`` and drop ``O_APPEND``. Sizes and
  mtimes are then the kernel's until it flushes: trust the kernel's SETATTRs.
- **No ``open``/``opendir``.** The default implementations raise ENOSYS, and we negotiate
  ``NO_OPEN_SUPPORT``/``NO_OPENDIR_SUPPORT``: the kernel then stops sending OPEN/OPENDIR and
  uses ``fh = 0`` (zero-message open), which is valid and fast for stateless filesystems.
- **Stateless directories** (``Operations.stateless_dirs = True``): the session answers
  OPENDIR with ENOSYS itself, so the kernel stops sending OPENDIR and RELEASEDIR (two round
  trips per ``opendir()``, the whole cost of a warm ``find``) and caches listings as if every
  open said ``keep_cache`` + ``cache_readdir``. ``readdir`` and ``fsyncdir`` then receive the
  directory's **inode number** in place of ``fh``, and ``readdir`` must make its cookies
  (``next_id``) meaningful without a handle.
- **fsync.** Implement it: on ENOSYS the kernel treats every later fsync as done (data never
  reaches the disk on ``fsync``).
- **suid/sgid clearing** stays with the kernel by default (``HANDLE_KILLPRIV`` is not
  negotiated): after a write, truncate or chown that must clear them (the kernel decides,
  knowing the caller's capabilities) it sends a GETATTR and a SETATTR of ``mode`` itself, and
  it asks GETXATTR ``security.capability`` before every write. A daemon running as root must
  not second-guess that (its own writes never clear the bits).
  ``Session(handle_killpriv_v2=True)`` negotiates ``HANDLE_KILLPRIV_V2`` instead: the kernel
  then skips that GETATTR on chown, caches "no capability xattr" per inode (``SB_NOSEC``)
  and leaves the clearing to the filesystem, which must honour
  ``SetattrRequest.kill_suidgid`` and implement :meth:`Operations.kill_suidgid` (called for
  WRITE and OPEN requests carrying the kernel's kill flag). The rule (the VFS's): clear
  set-user-ID, and set-group-ID only if group-executable, on non-directories. The kernel
  still removes ``security.capability`` itself (REMOVEXATTR).
- **Locks** (``flock``, POSIX) are handled by the kernel locally (not negotiated).
- **READDIRPLUS** is off unless ``Session(readdirplus=True)``: then ``readdir`` should hand
  :class:`EntryAttributes` (counted as lookups) instead of ``(ino, mode)`` pairs.

Notifications (``invalidate_inode``, ``invalidate_entry``, ``notify_delete``) may be called
from any thread, including from inside a handler. The kernel takes the directory's lock (and
page locks) to apply them, which the request being served may be holding: written from inside
a handler they would deadlock. So a call made on the loop's thread is queued and written by a
helper thread after the current reply has gone out; calls from other threads are written
directly (and block that thread until the kernel has applied them). So from a handler they
take effect shortly *after* its reply, not before the caller returns. They are no-ops before
FUSE_INIT and after ``run()`` returned; "not in the kernel's cache" (ENOENT) is not an error.

Speed: a GETATTR costs about 2 µs of Python here; an ``fstat`` round trip with attr_timeout=0
matches fuse-overlayfs (C) on the same machine (``bench/fuse_roundtrip.py``). The loop reads
each request into one reused buffer (a fresh 1 MiB ``os.read`` buffer per request costs ~30 µs)
and answers with one ``write``/``writev``.
"""

from __future__ import annotations

import errno as errno_mod
import logging
import os
import queue
import signal
import stat
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from overunder.errors import NotFound
from overunder.fuse import protocol as P
from overunder.fuse.mounting import FuseMount, mount_fd, unmount

__all__ = [
    "ROOT_INODE",
    "EntryAttributes",
    "FileInfo",
    "FuseError",
    "Operations",
    "ReaddirToken",
    "RequestContext",
    "Session",
    "SetattrRequest",
    "StatfsData",
    "StatvfsLike",
]

log = logging.getLogger("overunder.fuse")

ROOT_INODE = P.ROOT_ID
_NS = 1_000_000_000
_HEADER_PAGE = 4096
_XATTR_SIZE_MAX = 65536


class FuseError(Exception):
    """Raised by a handler to answer the request with ``errno`` (a positive ``errno.E*``)."""

    def __init__(self, errno: int, message: str | None = None) -> None:
        super().__init__(errno, message or os.strerror(errno))
        self.errno = errno

    def __str__(self) -> str:
        return f"[Errno {self.errno}] {self.args[1]}"


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Who asked: the caller's fs uid/gid and thread-group id, and (for ``mknod``, ``mkdir``
    and ``create`` only; 0 elsewhere) its umask, which the filesystem must apply."""

    uid: int
    gid: int
    pid: int
    umask: int = 0


class EntryAttributes:
    """Attributes of an inode, plus how long the kernel may cache them and the name.

    ``entry_timeout``/``attr_timeout`` are seconds (``None``: the Session's defaults).
    ``st_rdev`` is a userspace ``dev_t`` (as ``os.makedev`` makes it). Times are integer
    nanoseconds since the epoch. ``st_ino`` is the FUSE node id: the kernel reports it as
    ``st_ino`` too, so it is what a program sees.
    """

    __slots__ = (
        "attr_timeout",
        "entry_timeout",
        "generation",
        "st_atime_ns",
        "st_blksize",
        "st_blocks",
        "st_ctime_ns",
        "st_gid",
        "st_ino",
        "st_mode",
        "st_mtime_ns",
        "st_nlink",
        "st_rdev",
        "st_size",
        "st_uid",
    )

    def __init__(
        self,
        st_ino: int = 0,
        *,
        st_mode: int = 0,
        st_nlink: int = 1,
        st_uid: int = 0,
        st_gid: int = 0,
        st_rdev: int = 0,
        st_size: int = 0,
        st_blksize: int = 4096,
        st_blocks: int = 0,
        st_atime_ns: int = 0,
        st_mtime_ns: int = 0,
        st_ctime_ns: int = 0,
        generation: int = 0,
        entry_timeout: float | None = None,
        attr_timeout: float | None = None,
    ) -> None:
        self.st_ino = st_ino
        self.st_mode = st_mode
        self.st_nlink = st_nlink
        self.st_uid = st_uid
        self.st_gid = st_gid
        self.st_rdev = st_rdev
        self.st_size = st_size
        self.st_blksize = st_blksize
        self.st_blocks = st_blocks
        self.st_atime_ns = st_atime_ns
        self.st_mtime_ns = st_mtime_ns
        self.st_ctime_ns = st_ctime_ns
        self.generation = generation
        self.entry_timeout = entry_timeout
        self.attr_timeout = attr_timeout

    @classmethod
    def from_stat(
        cls,
        st: os.stat_result,
        *,
        ino: int | None = None,
        generation: int = 0,
        entry_timeout: float | None = None,
        attr_timeout: float | None = None,
    ) -> EntryAttributes:
        """The attributes of an ``os.stat_result``, under inode number ``ino`` (default: the
        underlying file's ``st_ino``)."""
        return cls(
            st.st_ino if ino is None else ino,
            st_mode=st.st_mode,
            st_nlink=st.st_nlink,
            st_uid=st.st_uid,
            st_gid=st.st_gid,
            st_rdev=st.st_rdev,
            st_size=st.st_size,
            st_blksize=st.st_blksize,
            st_blocks=st.st_blocks,
            st_atime_ns=st.st_atime_ns,
            st_mtime_ns=st.st_mtime_ns,
            st_ctime_ns=st.st_ctime_ns,
            generation=generation,
            entry_timeout=entry_timeout,
            attr_timeout=attr_timeout,
        )

    def __repr__(self) -> str:
        return (
            f"EntryAttributes(st_ino={self.st_ino}, st_mode={self.st_mode:#o}, "
            f"st_size={self.st_size}, st_nlink={self.st_nlink})"
        )


@dataclass(frozen=True, slots=True)
class SetattrRequest:
    """What a SETATTR asks to change; ``None``/``False`` fields are left alone.

    ``atime_now``/``mtime_now`` mean "set to the current time" (``utimensat`` with
    ``UTIME_NOW``); ``atime_ns``/``mtime_ns`` then carry the kernel's idea of now.
    ``kill_suidgid`` (only with ``Session(handle_killpriv_v2=True)``) asks to clear set-uid and
    set-gid bits after the change (see the module doc); ``caller`` is then who asked.
    ``valid`` is the raw ``FATTR_*`` mask.
    """

    valid: int
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None
    mtime_ns: int | None = None
    ctime_ns: int | None = None
    atime_now: bool = False
    mtime_now: bool = False
    kill_suidgid: bool = False
    lock_owner: int | None = None
    caller: RequestContext | None = None
    """Who asked; set when ``kill_suidgid`` is (the set-group-ID rule depends on it)."""


@dataclass(slots=True)
class FileInfo:
    """The answer to ``open``/``opendir``/``create``: a handle the filesystem chooses, and
    how the kernel should cache.

    - ``direct_io``: bypass the page cache for this open file (every read/write reaches us;
      ``mmap`` is refused). Files only.
    - ``keep_cache``: do not drop the cached pages (files) or the cached listing (dirs) on
      this open; invalidate them with :meth:`Session.invalidate_inode` when content changes.
    - ``cache_readdir``: let the kernel cache this directory's listing (``FOPEN_CACHE_DIR``).
    - ``nonseekable``: ``lseek`` fails (pipes, streams).
    - ``noflush``: skip the FLUSH request on ``close`` (one round trip saved per close).
    """

    fh: int = 0
    direct_io: bool = False
    keep_cache: bool = False
    cache_readdir: bool = False
    nonseekable: bool = False
    noflush: bool = False

    def open_flags(self) -> int:
        return (
            (_FOPEN_DIRECT_IO if self.direct_io else 0)
            | (_FOPEN_KEEP_CACHE if self.keep_cache else 0)
            | (_FOPEN_CACHE_DIR if self.cache_readdir else 0)
            | (_FOPEN_NONSEEKABLE if self.nonseekable else 0)
            | (_FOPEN_NOFLUSH if self.noflush else 0)
        )


class StatvfsLike(Protocol):
    """What ``statfs`` returns: ``os.statvfs_result`` fits, and so does :class:`StatfsData`."""

    @property
    def f_bsize(self) -> int: ...
    @property
    def f_frsize(self) -> int: ...
    @property
    def f_blocks(self) -> int: ...
    @property
    def f_bfree(self) -> int: ...
    @property
    def f_bavail(self) -> int: ...
    @property
    def f_files(self) -> int: ...
    @property
    def f_ffree(self) -> int: ...
    @property
    def f_namemax(self) -> int: ...


@dataclass(frozen=True, slots=True)
class StatfsData:
    """Filesystem statistics for ``statfs`` (libfuse's defaults: 512-byte blocks, no space)."""

    f_bsize: int = 512
    f_frsize: int = 512
    f_blocks: int = 0
    f_bfree: int = 0
    f_bavail: int = 0
    f_files: int = 0
    f_ffree: int = 0
    f_namemax: int = 255


class ReaddirToken:
    """Collects directory entries for one READDIR(PLUS) reply; passed to ``readdir``.

    Call :meth:`add` for each entry from ``start_id`` on, until it returns ``False`` (the reply
    is full: that entry was **not** taken, and in READDIRPLUS mode not counted as a lookup; the
    kernel asks again from the last taken entry's ``next_id``).
    """

    __slots__ = ("_entry", "_left", "_parts", "plus")

    def __init__(self, size: int, plus: bool, entry: Callable[[EntryAttributes], bytes]) -> None:
        self._left = size
        self._parts: list[bytes] = []
        self.plus = plus
        """True in READDIRPLUS mode: hand :class:`EntryAttributes` to prime the kernel's cache."""
        self._entry = entry

    def add(self, name: bytes, entry: EntryAttributes | tuple[int, int], next_id: int) -> bool:
        """Add ``name``; ``next_id`` is the cookie the kernel passes back as ``start_id`` to
        continue *after* this entry (non-zero, unique within the listing).

        ``entry`` is either :class:`EntryAttributes` or an ``(ino, st_mode)`` pair (only the
        file type bits of ``st_mode`` are used). In READDIRPLUS mode an :class:`EntryAttributes`
        whose ``st_ino`` is not 0 counts as a lookup (unless the name is ``.`` or ``..``); a
        pair sends no attributes (the kernel will LOOKUP the name when it needs it).
        """
        if isinstance(entry, EntryAttributes):
            ino, mode = entry.st_ino, entry.st_mode
        else:
            ino, mode = entry
        namelen = len(name)
        if self.plus:
            reclen = 152 + namelen  # fuse_entry_out (128) + fuse_dirent header (24)
            padded = (reclen + 7) & ~7
            if padded > self._left:
                return False
            if isinstance(entry, EntryAttributes) and entry.st_ino:
                head = self._entry(entry)
            else:
                head = _ZERO_ENTRY
        else:
            reclen = 24 + namelen
            padded = (reclen + 7) & ~7
            if padded > self._left:
                return False
            head = b""
        self._left -= padded
        self._parts.append(
            head
            + _DIRENT_PACK(ino, next_id, namelen, (mode & 0o170000) >> 12)
            + name
            + _PADDING[: padded - reclen]
        )
        return True

    def _payload(self) -> bytes:
        return b"".join(self._parts)


_DIRENT_PACK = P.DIRENT.pack
_PADDING = b"\0" * 8
_ZERO_ENTRY = b"\0" * P.ENTRY_OUT.size


def _enosys() -> FuseError:
    return FuseError(errno_mod.ENOSYS)


class Operations:
    """The filesystem: override what you support. Every method runs on the loop's thread.

    Unless noted, a method that is not overridden answers ENOSYS, and for several requests the
    kernel then remembers that and stops asking (``open``, ``opendir``, ``flush``, ``fsync``,
    ``access``, ``create`` -> mknod + open, ``getxattr`` and friends -> EOPNOTSUPP,
    ``fallocate`` -> EOPNOTSUPP, ``lseek`` -> the kernel's generic lseek).
    """

    def init(self) -> None:
        """Called once the kernel's FUSE_INIT arrived, before it is answered. An exception
        here fails the mount (every request then gets ECONNREFUSED) and ends ``run()``."""

    def destroy(self) -> None:
        """Called once when ``run()`` ends (unmounted or stopped)."""

    def lookup(self, parent: int, name: bytes) -> EntryAttributes:
        """Look up ``name`` in directory ``parent`` (counts as a lookup; see the module doc)."""
        raise _enosys()

    def forget(self, items: list[tuple[int, int]]) -> None:
        """The kernel dropped ``nlookup`` references for each ``(ino, nlookup)``. Cannot fail
        (no reply): exceptions are logged. Default: ignore."""

    def getattr(self, ino: int, fh: int | None) -> EntryAttributes:
        """Attributes of ``ino`` (``fh`` when the caller holds an open file, e.g. ``fstat``).
        ``entry_timeout``/``generation`` of the answer are not used here."""
        raise _enosys()

    def setattr(self, ino: int, attr: SetattrRequest, fh: int | None) -> EntryAttributes:
        """Change attributes (chmod, chown, truncate, utimes); return the new ones."""
        raise _enosys()

    def readlink(self, ino: int) -> bytes:
        """The target of symlink ``ino`` (cached by the kernel: ``CACHE_SYMLINKS``)."""
        raise _enosys()

    def mknod(
        self, parent: int, name: bytes, mode: int, rdev: int, ctx: RequestContext
    ) -> EntryAttributes:
        """Create a node; ``mode`` includes the file type; ``rdev`` is a userspace ``dev_t``.
        Apply ``ctx.umask``."""
        raise _enosys()

    def mkdir(self, parent: int, name: bytes, mode: int, ctx: RequestContext) -> EntryAttributes:
        """Create a directory; ``mode`` includes ``S_IFDIR``. Apply ``ctx.umask``."""
        raise _enosys()

    def unlink(self, parent: int, name: bytes, ctx: RequestContext) -> None:
        raise _enosys()

    def rmdir(self, parent: int, name: bytes, ctx: RequestContext) -> None:
        raise _enosys()

    def symlink(
        self, parent: int, name: bytes, target: bytes, ctx: RequestContext
    ) -> EntryAttributes:
        raise _enosys()

    def rename(  # noqa: PLR0917 (the contract's signature, as pyfuse3's)
        self,
        parent_old: int,
        name_old: bytes,
        parent_new: int,
        name_new: bytes,
        flags: int,
        ctx: RequestContext,
    ) -> None:
        """Rename; ``flags`` is ``renameat2``'s, unchanged: ``RENAME_NOREPLACE`` (1),
        ``RENAME_EXCHANGE`` (2), ``RENAME_WHITEOUT`` (4). Refuse (EINVAL) what you do not do:
        never turn a flagged rename into a plain one."""
        raise _enosys()

    def link(
        self, ino: int, new_parent: int, new_name: bytes, ctx: RequestContext
    ) -> EntryAttributes:
        """Make a hard link to ``ino``; return its attributes (same ``st_ino``, new nlink)."""
        raise _enosys()

    def open(self, ino: int, flags: int, ctx: RequestContext) -> FileInfo:
        """Open a file (``flags`` as ``open(2)``'s, without O_CREAT/O_EXCL/O_NOCTTY; honour
        O_TRUNC)."""
        raise _enosys()

    def read(self, fh: int, off: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``off``; fewer only at end of file (or with direct_io)."""
        raise _enosys()

    def write(self, fh: int, off: int, buf: bytes) -> int:
        """Write ``buf`` at ``off``; return the number of bytes written."""
        raise _enosys()

    def flush(self, fh: int) -> None:
        """Called on each ``close()`` of a descriptor (may be several per open)."""
        raise _enosys()

    def release(self, fh: int) -> None:
        """The last reference to the open file is gone. Errors are ignored by the kernel.
        Default: nothing."""

    def fsync(self, fh: int, datasync: bool) -> None:
        raise _enosys()

    def kill_suidgid(self, ino: int, fh: int, ctx: RequestContext) -> None:
        """Only with ``Session(handle_killpriv_v2=True)``: the kernel asks to clear set-user-ID
        (and set-group-ID if group-executable, or if ``ctx`` is not in the file's group) of
        ``ino``, open as ``fh``, because a caller without CAP_FSETID writes to it (called
        before ``write``) or opened it with ``O_TRUNC`` (called after ``open``)."""
        raise _enosys()

    stateless_dirs = False
    """True: no ``opendir``/``releasedir``; ``readdir``/``fsyncdir`` get the inode as ``fh``
    (see the module doc)."""

    def opendir(self, ino: int, ctx: RequestContext) -> FileInfo:
        raise _enosys()

    def readdir(self, fh: int, start_id: int, token: ReaddirToken) -> None:
        """List entries after cookie ``start_id`` (0 = from the start) into ``token`` until it
        is full or the directory ends. Include ``.`` and ``..`` if you want them listed (the
        kernel does not add them)."""
        raise _enosys()

    def releasedir(self, fh: int) -> None:
        """Default: nothing."""

    def fsyncdir(self, fh: int, datasync: bool) -> None:
        raise _enosys()

    def statfs(self, ctx: RequestContext) -> StatvfsLike:
        """Default: libfuse's answer (512-byte blocks, nothing free, names up to 255 bytes), so
        ``df`` works on a filesystem that does not care."""
        return StatfsData()

    def setxattr(
        self, ino: int, name: bytes, value: bytes, flags: int, ctx: RequestContext
    ) -> None:
        """``flags``: ``XATTR_CREATE`` (1) / ``XATTR_REPLACE`` (2)."""
        raise _enosys()

    def getxattr(self, ino: int, name: bytes, size: int, ctx: RequestContext) -> bytes:
        """The whole value (raise ENODATA if absent). ``size`` is the caller's buffer size, for
        information only: the session answers the size probe (``size == 0``) and ERANGE."""
        raise _enosys()

    def listxattr(self, ino: int, ctx: RequestContext) -> Sequence[bytes]:
        """The names (without NUL bytes); size probe and ERANGE as for ``getxattr``."""
        raise _enosys()

    def removexattr(self, ino: int, name: bytes, ctx: RequestContext) -> None:
        raise _enosys()

    def access(self, ino: int, mode: int, ctx: RequestContext) -> None:
        """Not sent with ``default_permissions``. Raise EACCES to deny."""
        raise _enosys()

    def create(
        self, parent: int, name: bytes, mode: int, flags: int, ctx: RequestContext
    ) -> tuple[FileInfo, EntryAttributes]:
        """Create and open a file (counts as a lookup). ``mode`` includes ``S_IFREG``; apply
        ``ctx.umask``; ``flags`` include O_CREAT (and O_EXCL when asked)."""
        raise _enosys()

    def fallocate(self, fh: int, off: int, length: int, mode: int) -> None:
        raise _enosys()

    def lseek(self, fh: int, off: int, whence: int) -> int:
        """Only SEEK_DATA/SEEK_HOLE reach the filesystem."""
        raise _enosys()


def _timeout_pair(seconds: float) -> tuple[int, int]:
    if seconds <= 0:
        return 0, 0
    whole = int(seconds)
    return whole, int((seconds - whole) * _NS)


class _Abort(BaseException):
    """Raised from a second SIGTERM/SIGINT to leave the loop at once."""


Handler = Callable[[int, int, bytes], None]


class Session:
    """One FUSE mount served by one ``Operations`` object.

    Options (all keyword):

    - ``fsname``: the mount's source as ``mount``/``/proc/self/mountinfo`` show it;
      ``subtype``: the filesystem type is ``fuse.<subtype>``.
    - ``options``: mount(8) ``-o`` items: ``allow_other``, ``default_permissions`` (let the
      kernel check permissions from the mode bits; without it every caller may do anything
      the daemon may), ``ro``, ``nosuid``, ``nodev``, ``noexec``, ``noatime``, ``max_read=N``,
      ``auto_unmount`` (mounts through ``fusermount3`` even as root; it stays alive and
      unmounts when the daemon dies, even by SIGKILL). None are added by default.
    - ``entry_timeout``/``attr_timeout`` (seconds, default 1.0 like libfuse): how long the kernel
      caches names and attributes when an answer does not say otherwise.
    - ``writeback_cache``: let the kernel buffer writes (see the module doc for what it means
      for ``open``); ``readdirplus``: answer listings with attributes.
    - ``handle_killpriv_v2``: the filesystem clears suid/sgid itself (see the module doc).
    - ``max_write``: the largest WRITE the kernel sends (1 MiB, with ``MAX_PAGES``).
    - ``oserror_passthrough``: answer an ``OSError`` raised by a handler with its errno.
    - ``debug``: log every request and its outcome (opcode, inode, errno) at DEBUG level on the
      ``overunder.fuse`` logger; costs nothing when off (the dispatch table is built once).
    """

    def __init__(
        self,
        ops: Operations,
        mountpoint: Path | str,
        *,
        fsname: str = "overunder",
        subtype: str = "overunder",
        options: Sequence[str] = (),
        entry_timeout: float = 1.0,
        attr_timeout: float = 1.0,
        writeback_cache: bool = False,
        readdirplus: bool = False,
        handle_killpriv_v2: bool = False,
        max_write: int = 1 << 20,
        oserror_passthrough: bool = False,
        debug: bool = False,
    ) -> None:
        self.ops = ops
        self.mountpoint = Path(mountpoint)
        self.fsname = fsname
        self.subtype = subtype
        self.options = tuple(options)
        self.entry_timeout = entry_timeout
        self.attr_timeout = attr_timeout
        self.writeback_cache = writeback_cache
        self.readdirplus = readdirplus
        self.handle_killpriv_v2 = handle_killpriv_v2
        self.max_write = max(4096, max_write)
        self.oserror_passthrough = oserror_passthrough
        self.debug = debug
        self.proto_minor = 0
        """The negotiated protocol minor (0 until FUSE_INIT)."""
        self.init_flags = 0
        """The negotiated ``InitFlags`` (0 until FUSE_INIT)."""
        self.interrupts = 0
        """INTERRUPT requests seen (callers hit by a signal while waiting for us)."""
        self._mount: FuseMount | None = None
        self._fd = -1
        self._entry_valid = _timeout_pair(entry_timeout)
        self._attr_valid = _timeout_pair(attr_timeout)
        self._setxattr_ext = False
        self._killpriv = False
        self._stateless_dirs = bool(ops.stateless_dirs)
        self._loop_thread: int | None = None
        self._pending: list[bytes] = []
        self._notify_queue: queue.SimpleQueue[bytes | None] | None = None
        self._notify_thread: threading.Thread | None = None
        self._stopping = False
        self._initialized = False
        self._init_error: BaseException | None = None
        self._on_ready: Callable[[], None] | None = None
        self._view = memoryview(b"")
        self._handlers: list[Handler | None] = self._build_handlers()

    # --- mounting --------------------------------------------------------------------------

    @property
    def fd(self) -> int:
        """The ``/dev/fuse`` descriptor (-1 before ``mount()`` / after ``close()``)."""
        return self._fd

    def mount(self) -> None:
        """Mount; returns once the kernel accepted the mount (FUSE_INIT is then waiting for
        ``run()``, and processes touching the mountpoint block until it is answered).
        Raises the ``overunder.errors`` categories (see :func:`mounting.mount_fd`)."""
        if self._fd >= 0:
            raise RuntimeError(f"{self.mountpoint} is already mounted by this session")
        self._mount = mount_fd(
            self.mountpoint, fsname=self.fsname, subtype=self.subtype, options=self.options
        )
        self._fd = self._mount.fd

    def unmount(self, *, lazy: bool = False) -> None:
        """Unmount (from any thread or process; ``run()`` then returns). Busy without ``lazy``:
        ``FailedPrecondition``."""
        privileged = self._mount.privileged if self._mount is not None else None
        unmount(self.mountpoint, lazy=lazy, privileged=privileged)

    def close(self) -> None:
        """Drop this process's copy of the descriptor. If no other process holds it, the
        connection is aborted (callers get ENOTCONN until the mount is unmounted)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._mount is not None and self._mount.keepalive is not None:
            self._mount.keepalive.close()
            self._mount.keepalive = None

    # --- notifications ---------------------------------------------------------------------

    def invalidate_inode(self, ino: int, off: int = 0, length: int = 0) -> None:
        """Drop the kernel's cached attributes of ``ino`` and its cached data (or cached
        directory listing) from ``off`` for ``length`` bytes (0: to the end). ``off < 0``
        drops only the attributes."""
        self._notify(P.NotifyCode.INVAL_INODE, P.NOTIFY_INVAL_INODE_OUT.pack(ino, off, length))

    def invalidate_entry(self, parent: int, name: bytes) -> None:
        """Drop the kernel's cached name ``name`` in ``parent`` (and the dentry under it)."""
        self._notify(
            P.NotifyCode.INVAL_ENTRY,
            P.NOTIFY_INVAL_ENTRY_OUT.pack(parent, len(name), 0) + name + b"\0",
        )

    def notify_delete(self, parent: int, child: int, name: bytes) -> None:
        """Tell the kernel ``name`` (inode ``child``) left ``parent``: like ``invalidate_entry``
        but also detaches the dentry if it is still in use (watchers see a deletion)."""
        self._notify(
            P.NotifyCode.DELETE,
            P.NOTIFY_DELETE_OUT.pack(parent, child, len(name), 0) + name + b"\0",
        )

    def _notify(self, code: int, body: bytes) -> None:
        message = P.OUT_HEADER.pack(P.OUT_HEADER_SIZE + len(body), code, 0) + body
        if threading.get_ident() == self._loop_thread:
            self._pending.append(message)
        else:
            self._write_notification(message)

    def _write_notification(self, message: bytes) -> None:
        if self._fd < 0 or not self._initialized:
            return
        try:
            os.write(self._fd, message)
        except OSError as err:
            # ENOENT: the kernel does not have that inode/name cached, nothing to drop.
            # ENODEV/EBADF: unmounted meanwhile.
            if err.errno not in (errno_mod.ENOENT, errno_mod.ENODEV, errno_mod.EBADF):
                log.warning("FUSE notification failed: %s", err)

    def _flush_pending(self) -> None:
        if self._notify_queue is None:
            self._notify_queue = queue.SimpleQueue()
            self._notify_thread = threading.Thread(
                target=self._notifier, name="fuse-notify", daemon=True
            )
            self._notify_thread.start()
        for message in self._pending:
            self._notify_queue.put(message)
        self._pending.clear()

    def _notifier(self) -> None:
        q = self._notify_queue
        assert q is not None
        while (message := q.get()) is not None:
            self._write_notification(message)

    # --- the loop --------------------------------------------------------------------------

    def run(
        self,
        *,
        on_ready: Callable[[], None] | None = None,
        ready_fd: int | None = None,
        handle_signals: bool = True,
    ) -> None:
        """Serve requests until the filesystem is unmounted; then close the descriptor.

        ``on_ready`` is called, and ``b"\\n"`` written to ``ready_fd`` (which is then closed),
        right after FUSE_INIT was answered: from then on the mount works. With
        ``handle_signals`` (and on the main thread), the first SIGTERM/SIGINT unmounts (lazily
        if busy: open files keep being served until closed), a second one leaves at once.
        """
        fd = self._fd
        if fd < 0:
            raise RuntimeError("Session.run() before Session.mount()")
        self._on_ready = _ready_callback(on_ready, ready_fd)
        self._loop_thread = threading.get_ident()
        restore = self._install_signals() if handle_signals else {}
        aborted = False
        try:
            self._loop(fd)
        except _Abort:
            aborted = True
        finally:
            for signum, previous in restore.items():
                signal.signal(signum, previous)
            self._loop_thread = None
            if self._notify_queue is not None and self._notify_thread is not None:
                # Let queued notifications go out (they fail fast once unmounted) before the
                # descriptor is closed and its number possibly reused.
                self._notify_queue.put(None)
                self._notify_thread.join(timeout=2.0)
            try:
                self.ops.destroy()
            except Exception:
                log.exception("Operations.destroy() failed")
            self.close()
            if aborted or self._init_error is not None:
                try:
                    self.unmount(lazy=True)
                except Exception as err:  # already gone, most likely
                    log.debug("lazy unmount after abort: %s", err)
        if self._init_error is not None:
            raise self._init_error

    def _loop(self, fd: int) -> None:
        # One buffer, reused: os.read(fd, 1 MiB) would allocate (mmap) and free a fresh
        # megabyte per request, ~30 µs. Each request is copied out as bytes of its own size.
        buffer = bytearray(max(self.max_write, _XATTR_SIZE_MAX + 8192) + _HEADER_PAGE)
        self._view = view = memoryview(buffer)
        buffers = [buffer]
        readv = os.readv
        write_op = P.Opcode.WRITE.value
        unpack_header = _HEAD_UNPACK
        handlers = self._handlers
        count = len(handlers)
        reply_err = self._reply_err
        pending = self._pending
        passthrough = self.oserror_passthrough
        while True:
            try:
                size = readv(fd, buffers)
            except OSError as err:
                code = err.errno
                if code == errno_mod.ENODEV:  # unmounted (or aborted)
                    return
                if code in (errno_mod.EINTR, errno_mod.EAGAIN, errno_mod.ENOENT):
                    continue  # ENOENT: the request was interrupted before we read it
                raise
            _len, opcode, unique, nodeid = unpack_header(buffer)
            # WRITE takes its payload straight from the buffer (one copy, not two).
            data = view[: 80 if opcode == write_op else size].tobytes()
            handler = handlers[opcode] if opcode < count else None
            try:
                if handler is None:
                    reply_err(unique, errno_mod.ENOSYS)
                else:
                    handler(unique, nodeid, data)
            except FuseError as err:
                code = err.errno
                reply_err(unique, code if 0 < code < 4096 else errno_mod.EIO)
            except OSError as err:
                if passthrough and err.errno:
                    reply_err(unique, err.errno)
                else:
                    self._log_failure(opcode, nodeid)
                    reply_err(unique, errno_mod.EIO)
            except Exception:
                self._log_failure(opcode, nodeid)
                reply_err(unique, errno_mod.EIO)
            if pending:
                self._flush_pending()
            if self._init_error is not None:
                return

    def _log_failure(self, opcode: int, nodeid: int) -> None:
        try:
            name = P.Opcode(opcode).name
        except ValueError:
            name = str(opcode)
        log.exception("FUSE %s on inode %d failed; answered EIO", name, nodeid)

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping:
            raise _Abort
        self._stopping = True
        threading.Thread(target=self._stop_unmount, name="fuse-unmount", daemon=True).start()

    def _stop_unmount(self) -> None:
        # In a thread: unmounting can make the kernel write back dirty pages through us.
        try:
            self.unmount()
        except Exception:
            try:
                self.unmount(lazy=True)
            except NotFound:
                # Already detached (``umount -l`` before the SIGTERM): nothing to report, and a
                # warning would keep the process's log file for nothing.
                pass
            except Exception as err:
                log.warning("unmount of %s on signal failed: %s", self.mountpoint, err)

    # --- replies ---------------------------------------------------------------------------

    def _reply(self, unique: int, body: bytes = b"") -> None:
        try:
            os.write(self._fd, _OUT_PACK(16 + len(body), 0, unique) + body)
        except OSError as err:
            self._reply_failed(err)

    def _reply_data(self, unique: int, data: bytes) -> None:
        try:
            os.writev(self._fd, (_OUT_PACK(16 + len(data), 0, unique), data))
        except OSError as err:
            self._reply_failed(err)

    def _reply_err(self, unique: int, code: int) -> None:
        try:
            os.write(self._fd, _OUT_PACK(16, -code, unique))
        except OSError as err:
            self._reply_failed(err)

    @staticmethod
    def _reply_failed(err: OSError) -> None:
        # ENOENT: the caller was interrupted and the kernel dropped the request; ENODEV: gone.
        if err.errno not in (errno_mod.ENOENT, errno_mod.ENODEV):
            log.error("writing a FUSE reply failed: %s", err)

    def _entry_bytes(self, a: EntryAttributes) -> bytes:
        et = a.entry_timeout
        ev, evn = self._entry_valid if et is None else _timeout_pair(et)
        at = a.attr_timeout
        av, avn = self._attr_valid if at is None else _timeout_pair(at)
        asec, ans = divmod(a.st_atime_ns, _NS)
        msec, mns = divmod(a.st_mtime_ns, _NS)
        csec, cns = divmod(a.st_ctime_ns, _NS)
        rdev = a.st_rdev
        return _ENTRY_PACK(
            a.st_ino, a.generation, ev, av, evn, avn,
            a.st_ino, a.st_size, a.st_blocks, asec, msec, csec, ans, mns, cns,
            a.st_mode, a.st_nlink, a.st_uid, a.st_gid, P.encode_dev(rdev) if rdev else 0,
            a.st_blksize, 0,
        )  # fmt: skip

    def _attr_bytes(self, a: EntryAttributes) -> bytes:
        at = a.attr_timeout
        av, avn = self._attr_valid if at is None else _timeout_pair(at)
        asec, ans = divmod(a.st_atime_ns, _NS)
        msec, mns = divmod(a.st_mtime_ns, _NS)
        csec, cns = divmod(a.st_ctime_ns, _NS)
        rdev = a.st_rdev
        return _ATTR_OUT_PACK(
            av, avn, 0,
            a.st_ino, a.st_size, a.st_blocks, asec, msec, csec, ans, mns, cns,
            a.st_mode, a.st_nlink, a.st_uid, a.st_gid, P.encode_dev(rdev) if rdev else 0,
            a.st_blksize, 0,
        )  # fmt: skip

    # --- handlers: (unique, nodeid, data) -> None; each replies itself -----------------------

    def _build_handlers(self) -> list[Handler | None]:
        table: list[Handler | None] = [None] * 64
        o = P.Opcode
        for opcode, handler in {
            o.INIT: self._do_init,
            o.DESTROY: self._do_destroy,
            o.FORGET: self._do_forget,
            o.BATCH_FORGET: self._do_batch_forget,
            o.INTERRUPT: self._do_interrupt,
            o.NOTIFY_REPLY: self._do_nothing,
            o.LOOKUP: self._do_lookup,
            o.GETATTR: self._do_getattr,
            o.SETATTR: self._do_setattr,
            o.READLINK: self._do_readlink,
            o.SYMLINK: self._do_symlink,
            o.MKNOD: self._do_mknod,
            o.MKDIR: self._do_mkdir,
            o.UNLINK: self._do_unlink,
            o.RMDIR: self._do_rmdir,
            o.RENAME: self._do_rename,
            o.RENAME2: self._do_rename2,
            o.LINK: self._do_link,
            o.OPEN: self._do_open,
            o.READ: self._do_read,
            o.WRITE: self._do_write,
            o.STATFS: self._do_statfs,
            o.RELEASE: self._do_release,
            o.FSYNC: self._do_fsync,
            o.SETXATTR: self._do_setxattr,
            o.GETXATTR: self._do_getxattr,
            o.LISTXATTR: self._do_listxattr,
            o.REMOVEXATTR: self._do_removexattr,
            o.FLUSH: self._do_flush,
            o.OPENDIR: self._do_opendir,
            o.READDIR: self._do_readdir,
            o.READDIRPLUS: self._do_readdirplus,
            o.RELEASEDIR: self._do_releasedir,
            o.FSYNCDIR: self._do_fsyncdir,
            o.ACCESS: self._do_access,
            o.CREATE: self._do_create,
            o.FALLOCATE: self._do_fallocate,
            o.LSEEK: self._do_lseek,
        }.items():
            table[opcode] = _traced(opcode, handler) if self.debug else handler
        return table

    def _do_init(self, unique: int, nodeid: int, data: bytes) -> None:
        major, minor, max_readahead, flags = P.INIT_IN.unpack_from(data, 40)
        if major > P.KERNEL_MAJOR:
            # A newer major: tell the kernel ours; it answers with a new INIT in our version.
            self._reply(unique, P.INIT_OUT.pack(P.KERNEL_MAJOR, P.KERNEL_MINOR, *([0] * 9)))
            return
        if major < P.KERNEL_MAJOR or minor < P.MIN_KERNEL_MINOR:
            log.error(
                "kernel FUSE protocol %d.%d is too old; need %d.%d or newer",
                major, minor, P.KERNEL_MAJOR, P.MIN_KERNEL_MINOR,
            )  # fmt: skip
            self._reply_err(unique, errno_mod.EPROTO)
            self._init_error = RuntimeError(f"kernel FUSE protocol {major}.{minor} too old")
            return
        f = P.InitFlags
        # Why each flag (asked for only if the kernel offers it):
        want = (
            f.ASYNC_READ  # readahead may send several READs at once; harmless here
            | f.BIG_WRITES  # legacy twin of max_write > 4 KiB
            | f.ATOMIC_O_TRUNC  # open(O_TRUNC) in one request, not OPEN + SETATTR
            | f.DONT_MASK  # the filesystem applies the umask (sees it in ctx)
            | f.PARALLEL_DIROPS  # lookups/readdir in one dir need not serialise in the kernel
            | f.MAX_PAGES  # lets max_write reach 1 MiB (256 pages)
            | f.CACHE_SYMLINKS  # readlink answers live in the page cache
            | f.NO_OPEN_SUPPORT  # ENOSYS from open = stateless opens, no more OPEN requests
            | f.NO_OPENDIR_SUPPORT  # same for opendir
            | f.SETXATTR_EXT  # setxattr_in carries setxattr_flags (16 bytes)
        )
        # Not asked: EXPORT_SUPPORT (no NFS export: lookups of "." and ".." not served),
        # POSIX_LOCKS/FLOCK_LOCKS (the kernel keeps locks locally), AUTO_INVAL_DATA (we
        # invalidate explicitly, with keep_cache), HANDLE_KILLPRIV(_V2) (the kernel clears
        # suid/sgid with a SETATTR, knowing the caller's capabilities), POSIX_ACL,
        # SPLICE_* (data goes through bytes anyway), ABORT_ERROR (keep ENOTCONN for a dead
        # daemon: `umount` recognises it), READDIRPLUS_AUTO (all or nothing, our choice).
        if self.writeback_cache:
            want |= f.WRITEBACK_CACHE
        if self.readdirplus:
            want |= f.DO_READDIRPLUS
        if self.handle_killpriv_v2:
            want |= f.HANDLE_KILLPRIV_V2
        granted = int(want) & flags
        minor = min(minor, P.KERNEL_MINOR)
        self.proto_minor = minor
        self.init_flags = granted
        self._setxattr_ext = bool(granted & f.SETXATTR_EXT)
        self._killpriv = bool(granted & f.HANDLE_KILLPRIV_V2)
        max_pages = (self.max_write + 4095) // 4096
        try:
            self.ops.init()
        except Exception as err:
            log.exception("Operations.init() failed; refusing the mount")
            self._reply_err(unique, errno_mod.EIO)
            self._init_error = err
            return
        self._reply(
            unique,
            P.INIT_OUT.pack(
                P.KERNEL_MAJOR,
                minor,
                max_readahead,
                granted,
                0,  # max_background: the kernel's default (12)
                0,  # congestion_threshold: default
                self.max_write,
                1,  # time_gran: nanoseconds
                max_pages,
                0,  # map_alignment (DAX only)
                0,  # flags2: nothing above bit 31 wanted
            ),
        )
        self._initialized = True
        if self._on_ready is not None:
            try:
                self._on_ready()
            except Exception:
                log.exception("the on_ready callback failed (the mount is live anyway)")

    def _do_destroy(self, unique: int, nodeid: int, data: bytes) -> None:
        self._reply(unique)

    def _do_nothing(self, unique: int, nodeid: int, data: bytes) -> None:
        return  # NOTIFY_REPLY: answers to a NOTIFY_RETRIEVE, which we never send

    def _do_interrupt(self, unique: int, nodeid: int, data: bytes) -> None:
        # The kernel queues an INTERRUPT only for a request we have already read, and withdraws
        # it when that request is answered; one thread answers in order, so we see one only in
        # a race, for a request already answered. Nothing to cancel; no reply is expected.
        self.interrupts += 1

    def _do_forget(self, unique: int, nodeid: int, data: bytes) -> None:
        try:
            self.ops.forget([(nodeid, P.FORGET_IN.unpack_from(data, 40)[0])])
        except Exception:
            log.exception("Operations.forget() failed (no reply is possible)")

    def _do_batch_forget(self, unique: int, nodeid: int, data: bytes) -> None:
        count = P.BATCH_FORGET_IN.unpack_from(data, 40)[0]
        items = list(P.FORGET_ONE.iter_unpack(data[48 : 48 + 16 * count]))
        try:
            self.ops.forget(items)
        except Exception:
            log.exception("Operations.forget() failed (no reply is possible)")

    def _do_lookup(self, unique: int, nodeid: int, data: bytes) -> None:
        a = self.ops.lookup(nodeid, data[40 : data.index(0, 40)])
        self._reply(unique, self._entry_bytes(a))

    def _do_getattr(self, unique: int, nodeid: int, data: bytes) -> None:
        flags, _dummy, fh = _GETATTR_UNPACK(data, 40)
        a = self.ops.getattr(nodeid, fh if flags & P.GETATTR_FH else None)
        self._reply(unique, self._attr_bytes(a))

    def _do_setattr(self, unique: int, nodeid: int, data: bytes) -> None:
        (
            valid, _pad, fh, size, lock_owner, atime, mtime, ctime,
            atimensec, mtimensec, ctimensec, mode, _u4, s_uid, s_gid, _u5,
        ) = _SETATTR_UNPACK(data, 40)  # fmt: skip
        # Plain int masks: IntFlag members cost an enum construction per `&` (~4% of an untar).
        # Under HANDLE_KILLPRIV_V2 a SETATTR changing nothing is the kernel's suid/sgid removal
        # (a write by a caller without CAP_FSETID, or chown(f, -1, -1)): it strips
        # ATTR_KILL_SUID/SGID and the mode it computed and sends nothing else. (The one case
        # read wrongly: root writing to a set-user-ID file that also has security.capability;
        # the kernel then asks to drop the capability only, and we drop set-user-ID too.)
        kill = valid & _FATTR_KILL_SUIDGID != 0 or (self._killpriv and valid & _FATTR_CHANGES == 0)
        req = SetattrRequest(
            valid=valid,
            mode=mode if valid & _FATTR_MODE else None,
            uid=s_uid if valid & _FATTR_UID else None,
            gid=s_gid if valid & _FATTR_GID else None,
            size=size if valid & _FATTR_SIZE else None,
            atime_ns=atime * _NS + atimensec if valid & _FATTR_ATIME else None,
            mtime_ns=mtime * _NS + mtimensec if valid & _FATTR_MTIME else None,
            ctime_ns=ctime * _NS + ctimensec if valid & _FATTR_CTIME else None,
            atime_now=valid & _FATTR_ATIME_NOW != 0,
            mtime_now=valid & _FATTR_MTIME_NOW != 0,
            kill_suidgid=kill,
            lock_owner=lock_owner if valid & _FATTR_LOCKOWNER else None,
            caller=_ctx(data) if kill else None,
        )
        a = self.ops.setattr(nodeid, req, fh if valid & _FATTR_FH else None)
        self._reply(unique, self._attr_bytes(a))

    def _do_readlink(self, unique: int, nodeid: int, data: bytes) -> None:
        self._reply(unique, bytes(self.ops.readlink(nodeid)))

    def _do_symlink(self, unique: int, nodeid: int, data: bytes) -> None:
        name, target = _two_names(data, 40)
        a = self.ops.symlink(nodeid, name, target, _ctx(data))
        self._reply(unique, self._entry_bytes(a))

    def _do_mknod(self, unique: int, nodeid: int, data: bytes) -> None:
        mode, rdev, umask, _pad = P.MKNOD_IN.unpack_from(data, 40)
        name = data[56 : data.index(0, 56)]
        ctx = _ctx(data, umask)
        a = self.ops.mknod(nodeid, name, mode, P.decode_dev(rdev), ctx)
        self._reply(unique, self._entry_bytes(a))

    def _do_mkdir(self, unique: int, nodeid: int, data: bytes) -> None:
        mode, umask = P.MKDIR_IN.unpack_from(data, 40)
        name = data[48 : data.index(0, 48)]
        ctx = _ctx(data, umask)
        a = self.ops.mkdir(nodeid, name, mode | stat.S_IFDIR, ctx)
        self._reply(unique, self._entry_bytes(a))

    def _do_unlink(self, unique: int, nodeid: int, data: bytes) -> None:
        self.ops.unlink(nodeid, data[40 : data.index(0, 40)], _ctx(data))
        self._reply(unique)

    def _do_rmdir(self, unique: int, nodeid: int, data: bytes) -> None:
        self.ops.rmdir(nodeid, data[40 : data.index(0, 40)], _ctx(data))
        self._reply(unique)

    def _do_rename(self, unique: int, nodeid: int, data: bytes) -> None:
        (newdir,) = P.RENAME_IN.unpack_from(data, 40)
        old, new = _two_names(data, 48)
        self.ops.rename(nodeid, old, newdir, new, 0, _ctx(data))
        self._reply(unique)

    def _do_rename2(self, unique: int, nodeid: int, data: bytes) -> None:
        newdir, flags, _pad = P.RENAME2_IN.unpack_from(data, 40)
        old, new = _two_names(data, 56)
        self.ops.rename(nodeid, old, newdir, new, flags, _ctx(data))
        self._reply(unique)

    def _do_link(self, unique: int, nodeid: int, data: bytes) -> None:
        (oldnodeid,) = P.LINK_IN.unpack_from(data, 40)
        name = data[48 : data.index(0, 48)]
        a = self.ops.link(oldnodeid, nodeid, name, _ctx(data))
        self._reply(unique, self._entry_bytes(a))

    def _do_open(self, unique: int, nodeid: int, data: bytes) -> None:
        flags, open_flags = P.OPEN_IN.unpack_from(data, 40)
        fi = self.ops.open(nodeid, flags, _ctx(data))
        if open_flags & P.OPEN_KILL_SUIDGID and self._killpriv:
            try:
                self.ops.kill_suidgid(nodeid, fi.fh, _ctx(data))
            except BaseException:
                self.ops.release(fi.fh)  # the kernel never learns of this handle
                raise
        self._reply(unique, _OPEN_OUT_PACK(fi.fh, fi.open_flags(), 0))

    def _do_read(self, unique: int, nodeid: int, data: bytes) -> None:
        fh, off, size = _READ_UNPACK(data, 40)[:3]
        buf = self.ops.read(fh, off, size)
        if len(buf) > size:  # the kernel would fail the whole read with EIO
            buf = buf[:size]
        self._reply_data(unique, buf)

    def _do_write(self, unique: int, nodeid: int, data: bytes) -> None:
        fh, off, size, write_flags = _READ_UNPACK(data, 40)[:4]
        if write_flags & _WRITE_KILL_SUIDGID and self._killpriv:
            self.ops.kill_suidgid(nodeid, fh, _ctx(data))
        written = self.ops.write(fh, off, self._view[80 : 80 + size].tobytes())
        self._reply(unique, _WRITE_OUT_PACK(written, 0))

    def _do_statfs(self, unique: int, nodeid: int, data: bytes) -> None:
        s = self.ops.statfs(_ctx(data))
        self._reply(
            unique,
            P.KSTATFS.pack(
                s.f_blocks, s.f_bfree, s.f_bavail, s.f_files, s.f_ffree,
                s.f_bsize, s.f_namemax, s.f_frsize,
            ),
        )  # fmt: skip

    def _do_release(self, unique: int, nodeid: int, data: bytes) -> None:
        self.ops.release(P.RELEASE_IN.unpack_from(data, 40)[0])
        self._reply(unique)

    def _do_fsync(self, unique: int, nodeid: int, data: bytes) -> None:
        fh, flags, _pad = P.FSYNC_IN.unpack_from(data, 40)
        self.ops.fsync(fh, bool(flags & P.FSYNC_FDATASYNC))
        self._reply(unique)

    def _do_setxattr(self, unique: int, nodeid: int, data: bytes) -> None:
        if self._setxattr_ext:
            size, flags, _sx_flags, _pad = P.SETXATTR_IN.unpack_from(data, 40)
            at = 56
        else:
            size, flags = P.SETXATTR_IN_COMPAT.unpack_from(data, 40)
            at = 48
        end = data.index(0, at)
        name = data[at:end]
        value = data[end + 1 : end + 1 + size]
        self.ops.setxattr(nodeid, name, value, flags, _ctx(data))
        self._reply(unique)

    def _sized_reply(self, unique: int, size: int, value: bytes) -> None:
        if size == 0:
            self._reply(unique, P.GETXATTR_OUT.pack(len(value), 0))
        elif len(value) > size:
            self._reply_err(unique, errno_mod.ERANGE)
        else:
            self._reply(unique, value)

    def _do_getxattr(self, unique: int, nodeid: int, data: bytes) -> None:
        size, _pad = P.GETXATTR_IN.unpack_from(data, 40)
        name = data[48 : data.index(0, 48)]
        value = self.ops.getxattr(nodeid, name, size, _ctx(data))
        self._sized_reply(unique, size, bytes(value))

    def _do_listxattr(self, unique: int, nodeid: int, data: bytes) -> None:
        size, _pad = P.GETXATTR_IN.unpack_from(data, 40)
        names = self.ops.listxattr(nodeid, _ctx(data))
        self._sized_reply(unique, size, b"".join(n + b"\0" for n in names))

    def _do_removexattr(self, unique: int, nodeid: int, data: bytes) -> None:
        name = data[40 : data.index(0, 40)]
        self.ops.removexattr(nodeid, name, _ctx(data))
        self._reply(unique)

    def _do_flush(self, unique: int, nodeid: int, data: bytes) -> None:
        self.ops.flush(P.FLUSH_IN.unpack_from(data, 40)[0])
        self._reply(unique)

    def _do_opendir(self, unique: int, nodeid: int, data: bytes) -> None:
        if self._stateless_dirs:
            self._reply_err(unique, errno_mod.ENOSYS)  # the kernel stops asking
            return
        fi = self.ops.opendir(nodeid, _ctx(data))
        self._reply(unique, _OPEN_OUT_PACK(fi.fh, fi.open_flags(), 0))

    def _do_readdir(self, unique: int, nodeid: int, data: bytes) -> None:
        fh, off, size = _READ_UNPACK(data, 40)[:3]
        token = ReaddirToken(size, False, self._entry_bytes)
        self.ops.readdir(nodeid if self._stateless_dirs else fh, off, token)
        self._reply(unique, token._payload())

    def _do_readdirplus(self, unique: int, nodeid: int, data: bytes) -> None:
        fh, off, size = _READ_UNPACK(data, 40)[:3]
        token = ReaddirToken(size, True, self._entry_bytes)
        self.ops.readdir(nodeid if self._stateless_dirs else fh, off, token)
        self._reply(unique, token._payload())

    def _do_releasedir(self, unique: int, nodeid: int, data: bytes) -> None:
        self.ops.releasedir(P.RELEASE_IN.unpack_from(data, 40)[0])
        self._reply(unique)

    def _do_fsyncdir(self, unique: int, nodeid: int, data: bytes) -> None:
        fh, flags, _pad = P.FSYNC_IN.unpack_from(data, 40)
        self.ops.fsyncdir(nodeid if self._stateless_dirs else fh, bool(flags & P.FSYNC_FDATASYNC))
        self._reply(unique)

    def _do_access(self, unique: int, nodeid: int, data: bytes) -> None:
        mask, _pad = P.ACCESS_IN.unpack_from(data, 40)
        self.ops.access(nodeid, mask, _ctx(data))
        self._reply(unique)

    def _do_create(self, unique: int, nodeid: int, data: bytes) -> None:
        flags, mode, umask, _open_flags = P.CREATE_IN.unpack_from(data, 40)
        name = data[56 : data.index(0, 56)]
        fi, a = self.ops.create(nodeid, name, mode, flags, _ctx(data, umask))
        self._reply(unique, self._entry_bytes(a) + _OPEN_OUT_PACK(fi.fh, fi.open_flags(), 0))

    def _do_fallocate(self, unique: int, nodeid: int, data: bytes) -> None:
        fh, off, length, mode, _pad = P.FALLOCATE_IN.unpack_from(data, 40)
        self.ops.fallocate(fh, off, length, mode)
        self._reply(unique)

    def _do_lseek(self, unique: int, nodeid: int, data: bytes) -> None:
        fh, off, whence, _pad = P.LSEEK_IN.unpack_from(data, 40)
        self._reply(unique, P.LSEEK_OUT.pack(self.ops.lseek(fh, off, whence)))


_OUT_PACK = P.OUT_HEADER.pack
_ENTRY_PACK = P.ENTRY_OUT.pack
_ATTR_OUT_PACK = P.ATTR_OUT.pack
_OPEN_OUT_PACK = P.OPEN_OUT.pack
_WRITE_OUT_PACK = P.WRITE_OUT.pack
_GETATTR_UNPACK = P.GETATTR_IN.unpack_from
_SETATTR_UNPACK = P.SETATTR_IN.unpack_from
_WRITE_KILL_SUIDGID = P.WRITE_KILL_SUIDGID
_FATTR_MODE = int(P.FattrValid.MODE)
_FATTR_UID = int(P.FattrValid.UID)
_FATTR_GID = int(P.FattrValid.GID)
_FATTR_SIZE = int(P.FattrValid.SIZE)
_FATTR_ATIME = int(P.FattrValid.ATIME)
_FATTR_MTIME = int(P.FattrValid.MTIME)
_FATTR_FH = int(P.FattrValid.FH)
_FATTR_ATIME_NOW = int(P.FattrValid.ATIME_NOW)
_FATTR_MTIME_NOW = int(P.FattrValid.MTIME_NOW)
_FATTR_LOCKOWNER = int(P.FattrValid.LOCKOWNER)
_FATTR_CTIME = int(P.FattrValid.CTIME)
_FATTR_KILL_SUIDGID = int(P.FattrValid.KILL_SUIDGID)
# What a SETATTR can change; ctime alone is chown(f, -1, -1) under the writeback cache.
_FATTR_CHANGES = ~(_FATTR_FH | _FATTR_LOCKOWNER | _FATTR_KILL_SUIDGID | _FATTR_CTIME)
_FOPEN_DIRECT_IO = int(P.FopenFlags.DIRECT_IO)
_FOPEN_KEEP_CACHE = int(P.FopenFlags.KEEP_CACHE)
_FOPEN_CACHE_DIR = int(P.FopenFlags.CACHE_DIR)
_FOPEN_NONSEEKABLE = int(P.FopenFlags.NONSEEKABLE)
_FOPEN_NOFLUSH = int(P.FopenFlags.NOFLUSH)
_READ_UNPACK = P.READ_IN.unpack_from


_HEAD_UNPACK = struct.Struct("=IIQQ").unpack_from  # len opcode unique nodeid
_CTX_UNPACK = struct.Struct("=III").unpack_from  # uid gid pid, at offset 24 of the header


def _ctx(data: bytes, umask: int = 0) -> RequestContext:
    uid, gid, pid = _CTX_UNPACK(data, 24)
    return RequestContext(uid, gid, pid, umask)


def _two_names(data: bytes, at: int) -> tuple[bytes, bytes]:
    end = data.index(0, at)
    return data[at:end], data[end + 1 : data.index(0, end + 1)]


def _traced(opcode: P.Opcode, handler: Handler) -> Handler:
    name = opcode.name

    def traced(unique: int, nodeid: int, data: bytes) -> None:
        uid, gid, pid = _CTX_UNPACK(data, 24)
        log.debug("-> %s #%d inode %d (uid %d gid %d pid %d)", name, unique, nodeid, uid, gid, pid)
        try:
            handler(unique, nodeid, data)
        except FuseError as err:
            log.debug("<- %s #%d %s", name, unique, errno_mod.errorcode.get(err.errno, err.errno))
            raise
        except OSError as err:
            code = errno_mod.errorcode.get(err.errno or 0, err.errno)
            log.debug("<- %s #%d OSError %s", name, unique, code)
            raise
        except Exception:
            log.debug("<- %s #%d exception (EIO)", name, unique)
            raise
        log.debug("<- %s #%d ok", name, unique)

    return traced


def _ready_callback(
    on_ready: Callable[[], None] | None, ready_fd: int | None
) -> Callable[[], None] | None:
    if on_ready is None and ready_fd is None:
        return None

    def ready() -> None:
        if ready_fd is not None:
            try:
                os.write(ready_fd, b"\n")
            finally:
                os.close(ready_fd)
        if on_ready is not None:
            on_ready()

    return ready
