"""The FUSE transport end to end: an in-memory filesystem served by ``Session`` over the real
``/dev/fuse``, driven by real syscalls from the test process.

The filesystem runs in a forked child (so a hang or crash there cannot take pytest with it);
every test talks to it only through the mountpoint, and checks what the kernel passed
through (``fsync`` reached us, READDIR came in several pages, a handler exception became EIO
and was logged) via the filesystem's counters, exposed as xattrs of the root.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import dev_fuse_mode_0666, require_binary, require_fuse, require_root
from overunder.fuse.protocol import InitFlags
from overunder.fuse.session import (
    ROOT_INODE,
    EntryAttributes,
    FileInfo,
    FuseError,
    Operations,
    ReaddirToken,
    RequestContext,
    Session,
    SetattrRequest,
    StatfsData,
)

pytestmark = pytest.mark.fuse

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4
XATTR_CREATE = 1
XATTR_REPLACE = 2
STATS = b"user.stats."
SLOW = b"SLOW"


# --- the filesystem under test -----------------------------------------------------------


@dataclass
class Node:
    ino: int
    mode: int
    uid: int = 0
    gid: int = 0
    rdev: int = 0
    nlink: int = 1
    data: bytearray = field(default_factory=bytearray)
    target: bytes = b""
    children: dict[bytes, int] = field(default_factory=dict)
    parent: int = ROOT_INODE
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    timeout: float | None = None  # per-reply cache timeout (None: the session's)


class MemFS(Operations):
    """A small but honest in-memory filesystem: hard links share a node, renames honour
    NOREPLACE/EXCHANGE, xattrs honour CREATE/REPLACE. ``boom`` in any directory makes
    ``lookup`` raise a plain exception (the EIO test); names starting with ``cached`` get 60 s
    timeouts in their replies.

    Control xattrs change things behind the kernel's back, from inside the SETXATTR handler:
    ``user.ctl.rewrite`` replaces a file's content; on the root, ``user.ctl.sneak`` with value
    ``dir/name`` adds file ``name`` to top-level directory ``dir``; ``user.ctl.tell`` does the
    same and then notifies the kernel (invalidate_inode / invalidate_entry). (Not on the
    directory itself: a SETXATTR there already makes the kernel drop its cached listing.)"""

    session: Session | None = None
    cache_dirs = False

    def __init__(self) -> None:
        now = time.time_ns()
        self.nodes: dict[int, Node] = {
            ROOT_INODE: Node(ROOT_INODE, stat.S_IFDIR | 0o755, nlink=2, atime_ns=now, mtime_ns=now)
        }
        self.next_ino = 2
        self.stats: dict[str, int] = {}

    def _count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def _node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise FuseError(errno.ENOENT) from None

    def _attrs(self, n: Node) -> EntryAttributes:
        size = len(n.target) if stat.S_ISLNK(n.mode) else len(n.data)
        return EntryAttributes(
            n.ino,
            st_mode=n.mode,
            st_nlink=n.nlink,
            st_uid=n.uid,
            st_gid=n.gid,
            st_rdev=n.rdev,
            st_size=size,
            st_blocks=(size + 511) // 512,
            st_atime_ns=n.atime_ns,
            st_mtime_ns=n.mtime_ns,
            st_ctime_ns=n.ctime_ns,
            entry_timeout=n.timeout,
            attr_timeout=n.timeout,
        )

    def _new(self, parent: int, name: bytes, mode: int, ctx: RequestContext) -> Node:
        dir_ = self._node(parent)
        if name in dir_.children:
            raise FuseError(errno.EEXIST)
        now = time.time_ns()
        n = Node(self.next_ino, mode, uid=ctx.uid, gid=ctx.gid, parent=parent)
        n.atime_ns = n.mtime_ns = n.ctime_ns = now
        self.next_ino += 1
        self.nodes[n.ino] = n
        dir_.children[name] = n.ino
        dir_.mtime_ns = dir_.ctime_ns = now
        if name.startswith(b"cached"):
            n.timeout = 60.0
        if stat.S_ISDIR(mode):
            n.nlink = 2
            dir_.nlink += 1
        return n

    def forget(self, items: list[tuple[int, int]]) -> None:
        self.stats["forget"] = self.stats.get("forget", 0) + sum(n for _, n in items)

    def lookup(self, parent: int, name: bytes) -> EntryAttributes:
        self._count("lookup")
        if name == b"boom":
            raise RuntimeError("boom: a bug in the filesystem")
        dir_ = self._node(parent)
        if name == b"..":
            return self._attrs(self._node(dir_.parent))
        if name == b".":
            return self._attrs(dir_)
        try:
            return self._attrs(self.nodes[dir_.children[name]])
        except KeyError:
            raise FuseError(errno.ENOENT) from None

    def getattr(self, ino: int, fh: int | None) -> EntryAttributes:
        self._count("getattr")
        return self._attrs(self._node(ino))

    def setattr(self, ino: int, attr: SetattrRequest, fh: int | None) -> EntryAttributes:
        n = self._node(ino)
        now = time.time_ns()
        if attr.mode is not None:
            n.mode = (n.mode & ~0o7777) | (attr.mode & 0o7777)
        if attr.uid is not None:
            n.uid = attr.uid
        if attr.gid is not None:
            n.gid = attr.gid
        if attr.size is not None:
            del n.data[attr.size :]
            n.data.extend(b"\0" * (attr.size - len(n.data)))
            n.mtime_ns = now
        if attr.atime_ns is not None:
            n.atime_ns = now if attr.atime_now else attr.atime_ns
        if attr.mtime_ns is not None:
            n.mtime_ns = now if attr.mtime_now else attr.mtime_ns
        n.ctime_ns = now
        return self._attrs(n)

    def readlink(self, ino: int) -> bytes:
        return self._node(ino).target

    def mknod(
        self, parent: int, name: bytes, mode: int, rdev: int, ctx: RequestContext
    ) -> EntryAttributes:
        n = self._new(parent, name, mode & ~ctx.umask, ctx)
        n.rdev = rdev
        return self._attrs(n)

    def mkdir(self, parent: int, name: bytes, mode: int, ctx: RequestContext) -> EntryAttributes:
        return self._attrs(self._new(parent, name, mode & ~ctx.umask, ctx))

    def symlink(
        self, parent: int, name: bytes, target: bytes, ctx: RequestContext
    ) -> EntryAttributes:
        n = self._new(parent, name, stat.S_IFLNK | 0o777, ctx)
        n.target = target
        return self._attrs(n)

    def _detach(self, parent: int, name: bytes) -> Node:
        dir_ = self._node(parent)
        try:
            n = self.nodes[dir_.children.pop(name)]
        except KeyError:
            raise FuseError(errno.ENOENT) from None
        n.nlink -= 1
        if stat.S_ISDIR(n.mode):
            dir_.nlink -= 1
            n.nlink = 0
        n.ctime_ns = dir_.mtime_ns = time.time_ns()
        return n

    def unlink(self, parent: int, name: bytes, ctx: RequestContext) -> None:
        ino = self._node(parent).children.get(name)
        if ino is not None and stat.S_ISDIR(self.nodes[ino].mode):
            raise FuseError(errno.EISDIR)
        self._detach(parent, name)

    def rmdir(self, parent: int, name: bytes, ctx: RequestContext) -> None:
        ino = self._node(parent).children.get(name)
        if ino is None:
            raise FuseError(errno.ENOENT)
        if not stat.S_ISDIR(self.nodes[ino].mode):
            raise FuseError(errno.ENOTDIR)
        if self.nodes[ino].children:
            raise FuseError(errno.ENOTEMPTY)
        self._detach(parent, name)

    def rename(  # noqa: PLR0917
        self,
        parent_old: int,
        name_old: bytes,
        parent_new: int,
        name_new: bytes,
        flags: int,
        ctx: RequestContext,
    ) -> None:
        self.stats[f"rename_flags_{flags}"] = self.stats.get(f"rename_flags_{flags}", 0) + 1
        src_dir, dst_dir = self._node(parent_old), self._node(parent_new)
        if name_old not in src_dir.children:
            raise FuseError(errno.ENOENT)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise FuseError(errno.EINVAL)  # RENAME_WHITEOUT: refused, never a plain rename
        a = src_dir.children[name_old]
        b = dst_dir.children.get(name_new)
        if flags & RENAME_EXCHANGE:
            if b is None:
                raise FuseError(errno.ENOENT)
            src_dir.children[name_old], dst_dir.children[name_new] = b, a
            self.nodes[a].parent, self.nodes[b].parent = parent_new, parent_old
            return
        if b is not None:
            if flags & RENAME_NOREPLACE:
                raise FuseError(errno.EEXIST)
            if stat.S_ISDIR(self.nodes[b].mode):
                self.rmdir(parent_new, name_new, ctx)
            else:
                self._detach(parent_new, name_new)
        del src_dir.children[name_old]
        dst_dir.children[name_new] = a
        self.nodes[a].parent = parent_new

    def link(
        self, ino: int, new_parent: int, new_name: bytes, ctx: RequestContext
    ) -> EntryAttributes:
        n = self._node(ino)
        dir_ = self._node(new_parent)
        if new_name in dir_.children:
            raise FuseError(errno.EEXIST)
        dir_.children[new_name] = ino
        n.nlink += 1
        n.ctime_ns = time.time_ns()
        return self._attrs(n)

    def open(self, ino: int, flags: int, ctx: RequestContext) -> FileInfo:
        n = self._node(ino)
        if flags & os.O_TRUNC:
            n.data.clear()
        if n.data.startswith(SLOW):  # uncached, so each read(2) is one READ we can stall
            return FileInfo(fh=ino, direct_io=True)
        return FileInfo(fh=ino, keep_cache=True)

    def create(
        self, parent: int, name: bytes, mode: int, flags: int, ctx: RequestContext
    ) -> tuple[FileInfo, EntryAttributes]:
        n = self._new(parent, name, mode & ~ctx.umask, ctx)
        return FileInfo(fh=n.ino), self._attrs(n)

    def read(self, fh: int, off: int, size: int) -> bytes:
        data = self._node(fh).data
        if data.startswith(SLOW):
            time.sleep(0.3)
        return bytes(data[off : off + size])

    def write(self, fh: int, off: int, buf: bytes) -> int:
        n = self._node(fh)
        if off > len(n.data):
            n.data.extend(b"\0" * (off - len(n.data)))
        n.data[off : off + len(buf)] = buf
        n.mtime_ns = time.time_ns()
        self._count("write")
        return len(buf)

    def flush(self, fh: int) -> None:
        self._count("flush")

    def release(self, fh: int) -> None:
        self._count("release")

    def fsync(self, fh: int, datasync: bool) -> None:
        self._count("fdatasync" if datasync else "fsync")

    def opendir(self, ino: int, ctx: RequestContext) -> FileInfo:
        if not stat.S_ISDIR(self._node(ino).mode):
            raise FuseError(errno.ENOTDIR)
        return FileInfo(fh=ino, cache_readdir=self.cache_dirs, keep_cache=self.cache_dirs)

    def readdir(self, fh: int, start_id: int, token: ReaddirToken) -> None:
        self._count("readdir")
        n = self._node(fh)
        entries: list[tuple[bytes, Node]] = [(b".", n), (b"..", self._node(n.parent))]
        entries += [(name, self.nodes[ino]) for name, ino in sorted(n.children.items())]
        for i in range(start_id, len(entries)):
            name, node = entries[i]
            entry = self._attrs(node) if token.plus else (node.ino, node.mode)
            if not token.add(name, entry, i + 1):
                break

    def fsyncdir(self, fh: int, datasync: bool) -> None:
        self._count("fsyncdir")

    def statfs(self, ctx: RequestContext) -> StatfsData:
        return StatfsData(
            f_bsize=4096, f_frsize=4096, f_blocks=1000, f_bfree=600, f_bavail=500,
            f_files=100, f_ffree=90, f_namemax=255,
        )  # fmt: skip

    def setxattr(
        self, ino: int, name: bytes, value: bytes, flags: int, ctx: RequestContext
    ) -> None:
        n = self._node(ino)
        if name.startswith(b"user.ctl."):
            self._control(n, name[9:], value)
            return
        if flags & XATTR_CREATE and name in n.xattrs:
            raise FuseError(errno.EEXIST)
        if flags & XATTR_REPLACE and name not in n.xattrs:
            raise FuseError(errno.ENODATA)
        n.xattrs[name] = value

    def _control(self, n: Node, what: bytes, value: bytes) -> None:
        assert self.session is not None
        if what == b"rewrite":
            n.data[:] = value
            self.session.invalidate_inode(n.ino)
        elif what == b"sleep":
            time.sleep(float(value))
        elif what == b"delete":
            dir_name, name = value.split(b"/")
            dir_ = self._node(n.children[dir_name])
            child = self._detach(dir_.ino, name)
            self.session.notify_delete(dir_.ino, child.ino, name)
        elif what == b"forget-entry":
            dir_name, name = value.split(b"/")
            self.session.invalidate_entry(n.children[dir_name], name)
        elif what in (b"sneak", b"tell"):
            dir_name, name = value.split(b"/")
            dir_ = self._node(n.children[dir_name])
            self._new(dir_.ino, name, stat.S_IFREG | 0o644, RequestContext(0, 0, 0))
            if what == b"tell":
                self.session.invalidate_inode(dir_.ino)
                self.session.invalidate_entry(dir_.ino, name)
        else:
            raise FuseError(errno.EINVAL)

    def getxattr(self, ino: int, name: bytes, size: int, ctx: RequestContext) -> bytes:
        if ino == ROOT_INODE and name == STATS + b"session":
            assert self.session is not None
            ses = self.session
            return f"{ses.proto_minor} {ses.init_flags} {ses.interrupts}".encode()
        if ino == ROOT_INODE and name.startswith(STATS):
            return str(self.stats.get(name[len(STATS) :].decode(), 0)).encode()
        try:
            return self._node(ino).xattrs[name]
        except KeyError:
            raise FuseError(errno.ENODATA) from None

    def listxattr(self, ino: int, ctx: RequestContext) -> list[bytes]:
        return sorted(self._node(ino).xattrs)

    def removexattr(self, ino: int, name: bytes, ctx: RequestContext) -> None:
        try:
            del self._node(ino).xattrs[name]
        except KeyError:
            raise FuseError(errno.ENODATA) from None


# --- serving it in a child process --------------------------------------------------------


@dataclass
class Served:
    mnt: Path
    pid: int
    log: Path
    exit_code: int | None = None
    reaped: bool = False

    def wait(self, timeout: float) -> int | None:
        """The child's exit code once it exits within ``timeout`` seconds, else None."""
        deadline = time.monotonic() + timeout
        while not self.reaped and time.monotonic() < deadline:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.reaped, self.exit_code = True, os.waitstatus_to_exitcode(status)
            else:
                time.sleep(0.01)
        return self.exit_code

    def stat_counter(self, what: str) -> int:
        return int(os.getxattr(self.mnt, (STATS + what.encode()).decode()))

    def session_state(self) -> tuple[int, InitFlags, int]:
        """The child's negotiated protocol minor, INIT flags and INTERRUPTs seen."""
        minor, flags, interrupts = os.getxattr(self.mnt, "user.stats.session").split()
        return int(minor), InitFlags(int(flags)), int(interrupts)


def _is_mounted(path: Path) -> bool:
    target = os.fsencode(path)
    with open("/proc/self/mountinfo", "rb") as f:
        return any(line.split()[4] == target for line in f)


def serve(
    mnt: Path,
    log: Path,
    *,
    fs_factory: Callable[[], Operations] = MemFS,
    become: int | None = None,
    **session_options: object,
) -> Served:
    """Fork a child that mounts ``fs_factory()`` at ``mnt`` and serves it; return once the
    mount answers (FUSE_INIT done). ``become``: uid/gid to switch to before mounting."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(r)
            handler = logging.FileHandler(log)
            handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
            logger = logging.getLogger("overunder.fuse")
            logger.addHandler(handler)
            logger.setLevel(logging.DEBUG if session_options.get("debug") else logging.INFO)
            if become is not None:
                os.setgroups([])
                os.setgid(become)
                os.setuid(become)
            ops = fs_factory()
            session = Session(ops, mnt, fsname="memfs", **session_options)  # type: ignore[arg-type]
            if isinstance(ops, MemFS):
                ops.session = session
            session.mount()
            session.run(ready_fd=w)
            code = 0
        except BaseException:
            logging.getLogger("overunder.fuse").exception("serving failed")
        finally:
            os._exit(code)
    os.close(w)
    ready, _, _ = select.select([r], [], [], 20)
    ok = bool(ready) and os.read(r, 1) == b"\n"
    os.close(r)
    if not ok:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail(f"the FUSE child did not come up; its log:\n{log.read_text()}")
    return Served(mnt, pid, log)


def stop(served: Served) -> int | None:
    """Unmount (lazily if needed) and reap the child; returns its exit code."""
    for cmd in (["umount", str(served.mnt)], ["umount", "-l", str(served.mnt)]):
        if not _is_mounted(served.mnt):
            break
        subprocess.run(cmd, capture_output=True, check=False)
    code = served.wait(10)
    if not served.reaped:
        os.kill(served.pid, signal.SIGKILL)
        served.wait(10)
    if _is_mounted(served.mnt):
        subprocess.run(["umount", "-l", str(served.mnt)], capture_output=True, check=False)
    return code


@pytest.fixture(scope="module")
def fs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    require_root()
    require_fuse()
    base = tmp_path_factory.mktemp("fuse-session")
    mnt = base / "mnt"
    mnt.mkdir()
    served = serve(mnt, base / "fs.log", attr_timeout=0.0, entry_timeout=0.0)
    try:
        yield served
    finally:
        stop(served)


# --- helpers for syscalls Python does not wrap ------------------------------------------

_libc = ctypes.CDLL("libc.so.6", use_errno=True)
AT_FDCWD = -100


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(old))


def raises_errno(code: int) -> pytest.RaisesExc[OSError]:
    return pytest.raises(OSError, match=rf"^\[Errno {code}\] ")


# --- the tests ----------------------------------------------------------------------------


def test_mount_shows_fsname_and_type(fs: Served) -> None:
    with open("/proc/self/mountinfo") as f:
        line = next(ln for ln in f if ln.split()[4] == str(fs.mnt))
    fstype, source = line.split(" - ")[1].split()[:2]
    assert (fstype, source) == ("fuse.overunder", "memfs")
    st = os.stat(fs.mnt)
    assert stat.S_ISDIR(st.st_mode)
    assert st.st_ino == ROOT_INODE


def test_init_negotiates_what_the_docstrings_promise(fs: Served) -> None:
    minor, flags, _ = fs.session_state()
    assert 31 <= minor <= 38
    wanted = (
        InitFlags.ASYNC_READ | InitFlags.ATOMIC_O_TRUNC | InitFlags.BIG_WRITES
        | InitFlags.DONT_MASK | InitFlags.PARALLEL_DIROPS | InitFlags.MAX_PAGES
        | InitFlags.CACHE_SYMLINKS | InitFlags.NO_OPEN_SUPPORT | InitFlags.NO_OPENDIR_SUPPORT
        | InitFlags.SETXATTR_EXT
    )  # fmt: skip
    assert flags == wanted  # and nothing else: no READDIRPLUS, writeback, locks, killpriv


def test_mkdir_create_write_read_stat(fs: Served) -> None:
    d = fs.mnt / "d1"
    old = os.umask(0o022)
    try:
        d.mkdir(0o777)
        fd = os.open(d / "f", os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o666)
    finally:
        os.umask(old)
    try:
        assert os.write(fd, b"hello ") == 6
        assert os.pwrite(fd, b"world", 6) == 5
        assert os.pread(fd, 100, 0) == b"hello world"
    finally:
        os.close(fd)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o755  # DONT_MASK: we applied the umask
    st = os.stat(d / "f")
    assert stat.S_IMODE(st.st_mode) == 0o644
    assert stat.S_ISREG(st.st_mode)
    assert st.st_size == 11
    assert (d / "f").read_bytes() == b"hello world"
    with pytest.raises(FileExistsError):
        os.open(d / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    with pytest.raises(FileNotFoundError):
        os.stat(d / "missing")


def test_big_write_and_read_round_trip(fs: Served) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 123)
    p = fs.mnt / "big"
    p.write_bytes(payload)
    assert os.stat(p).st_size == len(payload)
    assert p.read_bytes() == payload


def test_truncate_chmod_chown_utime(fs: Served) -> None:
    p = fs.mnt / "attrs"
    p.write_bytes(b"0123456789")
    os.truncate(p, 4)
    assert p.read_bytes() == b"0123"
    with open(p, "r+b") as f:  # O_TRUNC through open: ATOMIC_O_TRUNC
        pass
    with open(p, "wb") as f:
        f.write(b"xy")
    assert p.read_bytes() == b"xy"
    os.chmod(p, 0o4711)
    os.chown(p, 1234, 5678)  # the kernel clears set-uid itself (no HANDLE_KILLPRIV)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o711
    os.chmod(p, 0o4711)
    os.utime(p, ns=(1_000_000_123, 2_000_000_456))
    st = os.stat(p)
    assert stat.S_IMODE(st.st_mode) == 0o4711
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    os.utime(p, ns=(-1_500_000_000, 0))  # before 1970: times are signed on the wire
    assert os.stat(p).st_atime_ns == -1_500_000_000


def test_readdir_of_1000_entries_spans_several_requests(fs: Served) -> None:
    d = fs.mnt / "many"
    d.mkdir()
    names = {f"entry-{i:04d}-{'x' * (i % 37)}" for i in range(1000)}
    for name in names:
        os.close(os.open(d / name, os.O_CREAT | os.O_WRONLY, 0o644))
    before = fs.stat_counter("readdir")
    listed = os.listdir(d)
    calls = fs.stat_counter("readdir") - before
    assert sorted(listed) == sorted(names)
    assert calls >= 2  # the cookies carried the listing across READDIR requests
    with os.scandir(d) as it:
        kinds = {e.name: e.is_file(follow_symlinks=False) for e in it}
    assert all(kinds.values())
    assert len(kinds) == 1000


def test_symlink_readlink_link_unlink_rmdir(fs: Served) -> None:
    d = fs.mnt / "links"
    d.mkdir()
    (d / "target").write_bytes(b"data")
    os.symlink("target", d / "sym")
    assert os.readlink(d / "sym") == "target"
    assert (d / "sym").read_bytes() == b"data"
    assert stat.S_ISLNK(os.lstat(d / "sym").st_mode)
    os.link(d / "target", d / "hard")
    a, b = os.stat(d / "target"), os.stat(d / "hard")
    assert a.st_ino == b.st_ino
    assert a.st_nlink == b.st_nlink == 2
    os.unlink(d / "target")
    assert os.stat(d / "hard").st_nlink == 1
    assert not os.path.lexists(d / "target")
    with raises_errno(errno.ENOTEMPTY):
        os.rmdir(d)
    for name in ("sym", "hard"):
        os.unlink(d / name)
    os.rmdir(d)
    assert not d.exists()


def test_mknod_fifo_and_device(fs: Served) -> None:
    os.mkfifo(fs.mnt / "fifo", 0o600)
    assert stat.S_ISFIFO(os.stat(fs.mnt / "fifo").st_mode)
    dev = os.makedev(259, 70000)  # a minor above 255: the split 32-bit encoding
    os.mknod(fs.mnt / "chr", stat.S_IFCHR | 0o600, dev)
    st = os.stat(fs.mnt / "chr")
    assert stat.S_ISCHR(st.st_mode)
    assert st.st_rdev == dev
    os.mknod(fs.mnt / "whiteout", stat.S_IFCHR, os.makedev(0, 0))
    assert os.stat(fs.mnt / "whiteout").st_rdev == 0


def test_rename_plain_noreplace_exchange_whiteout(fs: Served) -> None:
    d = fs.mnt / "ren"
    d.mkdir()
    (d / "a").write_bytes(b"A")
    (d / "b").write_bytes(b"B")
    with pytest.raises(FileExistsError):
        renameat2(d / "a", d / "b", RENAME_NOREPLACE)
    renameat2(d / "a", d / "b", RENAME_EXCHANGE)
    assert (d / "a").read_bytes() == b"B"
    assert (d / "b").read_bytes() == b"A"
    assert fs.stat_counter("rename_flags_2") == 1  # the flag reached the filesystem intact
    renameat2(d / "a", d / "c", RENAME_NOREPLACE)
    assert fs.stat_counter("rename_flags_1") >= 1
    assert sorted(os.listdir(d)) == ["b", "c"]
    with raises_errno(errno.EINVAL):  # our filesystem refuses WHITEOUT: no plain rename
        renameat2(d / "c", d / "e", RENAME_WHITEOUT)
    assert fs.stat_counter("rename_flags_4") == 1  # passed through, then refused by MemFS
    assert (d / "c").exists()
    assert not (d / "e").exists()
    os.mkdir(d / "sub")
    os.rename(d / "c", d / "sub" / "moved")  # across directories
    assert (d / "sub" / "moved").read_bytes() == b"B"
    os.rename(d / "sub" / "moved", d / "b")  # over an existing file
    assert (d / "b").read_bytes() == b"B"
    assert sorted(os.listdir(d)) == ["b", "sub"]


def test_xattrs_probe_erange_create_replace(fs: Served) -> None:
    p = fs.mnt / "x"
    p.write_bytes(b"")
    value = b"v" * 300
    os.setxattr(p, "user.big", value)
    os.setxattr(p, "user.small", b"1")
    assert os.getxattr(p, "user.big") == value  # Python probes the size first (size 0)
    assert sorted(os.listxattr(p)) == ["user.big", "user.small"]
    with pytest.raises(FileExistsError):
        os.setxattr(p, "user.big", b"2", os.XATTR_CREATE)
    with raises_errno(errno.ENODATA):
        os.setxattr(p, "user.none", b"2", os.XATTR_REPLACE)
    os.removexattr(p, "user.small")
    assert os.listxattr(p) == ["user.big"]
    with raises_errno(errno.ENODATA):
        os.getxattr(p, "user.small")

    getxattr = _libc.getxattr
    getxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
    getxattr.restype = ctypes.c_ssize_t
    path = os.fsencode(p)
    assert getxattr(path, b"user.big", None, 0) == 300  # the size probe
    buf = ctypes.create_string_buffer(10)
    assert getxattr(path, b"user.big", buf, 10) == -1
    assert ctypes.get_errno() == errno.ERANGE
    listxattr = _libc.listxattr
    listxattr.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
    listxattr.restype = ctypes.c_ssize_t
    assert listxattr(path, None, 0) == len(b"user.big\0")
    assert listxattr(path, buf, 3) == -1
    assert ctypes.get_errno() == errno.ERANGE


def test_statfs(fs: Served) -> None:
    st = os.statvfs(fs.mnt)
    assert (st.f_bsize, st.f_blocks, st.f_bfree, st.f_bavail) == (4096, 1000, 600, 500)
    assert (st.f_files, st.f_ffree, st.f_namemax) == (100, 90, 255)


def test_fsync_fdatasync_flush_release_reach_the_filesystem(fs: Served) -> None:
    before = {k: fs.stat_counter(k) for k in ("fsync", "fdatasync", "flush", "release")}
    fd = os.open(fs.mnt / "synced", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, b"x")
        os.fsync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    dfd = os.open(fs.mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    after = {k: fs.stat_counter(k) for k in before}
    assert after["fsync"] == before["fsync"] + 1
    assert after["fdatasync"] == before["fdatasync"] + 1
    assert after["flush"] >= before["flush"] + 1
    deadline = time.monotonic() + 5  # RELEASE is sent asynchronously after close()
    while fs.stat_counter("release") == before["release"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fs.stat_counter("release") > before["release"]
    assert fs.stat_counter("fsyncdir") >= 1


def test_unimplemented_operations_answer_enosys_semantics(fs: Served) -> None:
    fd = os.open(fs.mnt / "falloc", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        with raises_errno(errno.EOPNOTSUPP):  # FALLOCATE: ENOSYS -> the kernel says EOPNOTSUPP
            _fallocate(fd, 0, 4096)
        os.write(fd, b"abc")
        assert os.lseek(fd, 0, os.SEEK_END) == 3  # LSEEK ENOSYS: the kernel's generic lseek
        assert os.lseek(fd, 0, os.SEEK_DATA) == 0
    finally:
        os.close(fd)


def _fallocate(fd: int, off: int, length: int) -> None:
    if _libc.fallocate(fd, 0, ctypes.c_long(off), ctypes.c_long(length)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def test_handler_exception_is_eio_logged_and_loop_survives(fs: Served) -> None:
    with raises_errno(errno.EIO):
        os.stat(fs.mnt / "boom")
    assert os.stat(fs.mnt).st_ino == ROOT_INODE  # still serving
    (fs.mnt / "after-boom").write_bytes(b"ok")
    assert (fs.mnt / "after-boom").read_bytes() == b"ok"
    text = fs.log.read_text()
    assert "FUSE LOOKUP on inode 1 failed; answered EIO" in text
    assert "RuntimeError: boom: a bug in the filesystem" in text


def test_per_reply_timeouts_override_the_session(fs: Served) -> None:
    (fs.mnt / "cached-file").write_bytes(b"c")  # MemFS answers 60 s for cached-*
    (fs.mnt / "plain-file").write_bytes(b"p")  # the session's default here: 0 s
    os.stat(fs.mnt / "cached-file")
    before = fs.stat_counter("getattr")
    for _ in range(5):
        os.stat(fs.mnt / "cached-file")
    assert fs.stat_counter("getattr") == before
    for _ in range(5):
        os.stat(fs.mnt / "plain-file")
    assert fs.stat_counter("getattr") >= before + 5


def test_forget_follows_unlink(fs: Served) -> None:
    d = fs.mnt / "forgotten"
    d.mkdir()
    for i in range(20):
        (d / str(i)).write_bytes(b"x")
    before = fs.stat_counter("forget")
    for i in range(20):
        os.unlink(d / str(i))
    deadline = time.monotonic() + 5  # FORGETs are queued by the kernel, no reply, no order
    while fs.stat_counter("forget") < before + 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fs.stat_counter("forget") >= before + 20


def test_interrupted_caller_gets_its_answer_and_the_loop_goes_on(fs: Served) -> None:
    p = fs.mnt / "slow"
    p.write_bytes(SLOW + b" data")
    result: list[bytes] = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    try:
        fd = os.open(p, os.O_RDONLY)
        try:
            reader = threading.Thread(target=lambda: result.append(os.pread(fd, 100, 0)))
            reader.start()
            time.sleep(0.1)  # the READ is in the filesystem's 0.3 s sleep now
            assert reader.ident is not None
            signal.pthread_kill(reader.ident, signal.SIGUSR1)
            reader.join(10)
        finally:
            os.close(fd)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    # The kernel queues an INTERRUPT once we have read the request, and withdraws it when we
    # answer: a single-threaded loop normally never reads one. Either way the caller gets the
    # whole answer and the loop carries on.
    assert result == [SLOW + b" data"]
    assert fs.session_state()[2] >= 0
    assert os.stat(fs.mnt).st_ino == ROOT_INODE


# --- lifecycle: its own mounts -----------------------------------------------------------


def test_unmount_ends_run_cleanly(tmp_path: Path) -> None:
    require_root()
    require_fuse()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    served = serve(mnt, tmp_path / "fs.log")
    try:
        (mnt / "f").write_bytes(b"1")
        subprocess.run(["umount", str(mnt)], check=True)
        assert served.wait(10) == 0  # run() returned, the child exited 0
        assert not _is_mounted(mnt)
    finally:
        stop(served)


def test_sigterm_unmounts_and_ends_run(tmp_path: Path) -> None:
    require_root()
    require_fuse()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    served = serve(mnt, tmp_path / "fs.log")
    try:
        assert _is_mounted(mnt)
        os.kill(served.pid, signal.SIGTERM)
        assert served.wait(10) == 0
        assert not _is_mounted(mnt)
    finally:
        stop(served)


def test_sigterm_while_busy_detaches_and_serves_open_files_until_closed(tmp_path: Path) -> None:
    require_root()
    require_fuse()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    served = serve(mnt, tmp_path / "fs.log")
    try:
        (mnt / "f").write_bytes(b"still here")
        fd = os.open(mnt / "f", os.O_RDONLY)
        try:
            os.kill(served.pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _is_mounted(mnt) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not _is_mounted(mnt)  # busy: detached lazily
            assert os.pread(fd, 100, 0) == b"still here"  # the open file is still served
            assert served.wait(0.2) is None
        finally:
            os.close(fd)
        assert served.wait(10) == 0  # last file closed: the connection ends, run() returns
    finally:
        stop(served)


def test_second_sigterm_abandons_the_connection(tmp_path: Path) -> None:
    require_root()
    require_fuse()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    served = serve(mnt, tmp_path / "fs.log")
    try:
        (mnt / "f").write_bytes(b"x")
        fd = os.open(mnt / "f", os.O_RDONLY)
        try:
            os.kill(served.pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while _is_mounted(mnt) and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(served.pid, signal.SIGTERM)
            assert served.wait(10) == 0
            with raises_errno(errno.ENOTCONN):  # nobody serves it any more
                os.fstatvfs(fd)
        finally:
            with contextlib.suppress(OSError):  # close() reports the dead connection too
                os.close(fd)
    finally:
        stop(served)


def test_auto_unmount_clears_the_mount_of_a_killed_daemon(tmp_path: Path) -> None:
    require_root()
    require_fuse()
    require_binary("fusermount3")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    served = serve(mnt, tmp_path / "fs.log", options=["auto_unmount"])
    try:
        (mnt / "f").write_bytes(b"x")
        os.kill(served.pid, signal.SIGKILL)
        served.wait(10)
        deadline = time.monotonic() + 10  # fusermount3 saw our socket close
        while _is_mounted(mnt) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not _is_mounted(mnt)
        assert os.listdir(mnt) == []  # the plain directory again, not ENOTCONN
    finally:
        stop(served)


def test_debug_logs_every_request_and_its_outcome(tmp_path: Path) -> None:
    require_root()
    require_fuse()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    served = serve(mnt, tmp_path / "fs.log", debug=True)
    try:
        assert not (mnt / "nope").exists()
        (mnt / "yes").write_bytes(b"1")
    finally:
        stop(served)
    text = served.log.read_text()
    assert re.search(r"-> LOOKUP #\d+ inode 1 \(uid 0 gid 0 pid \d+\)", text)
    assert re.search(r"<- LOOKUP #\d+ ENOENT", text)
    assert re.search(r"<- CREATE #\d+ ok", text)
    assert "-> INIT" in text


def test_readdirplus_primes_the_kernel_caches(tmp_path: Path) -> None:
    require_root()
    require_fuse()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    served = serve(
        mnt, tmp_path / "fs.log", readdirplus=True, attr_timeout=60.0, entry_timeout=60.0
    )
    try:
        d = mnt / "d"
        d.mkdir()
        for i in range(50):
            (d / f"f{i}").write_bytes(b"x" * i)
        # Drop the dentries the creates left, so only READDIRPLUS can have primed them.
        for i in range(50):
            os.setxattr(mnt, "user.ctl.forget-entry", f"d/f{i}".encode())
        # The notifier thread sends those invalidations just after each reply; on a loaded
        # machine they can trail the readdir below and drop the entries it primed.
        time.sleep(0.3)
        lookups = served_counter(mnt, "lookup")
        with os.scandir(d) as it:
            sizes = {e.name: e.stat(follow_symlinks=False).st_size for e in it}
        assert sizes == {f"f{i}": i for i in range(50)}
        assert served_counter(mnt, "lookup") == lookups  # every name came with attributes
    finally:
        stop(served)


def test_writeback_cache_coalesces_writes(tmp_path: Path) -> None:
    require_root()
    require_fuse()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    served = serve(mnt, tmp_path / "fs.log", writeback_cache=True)
    try:
        p = mnt / "wb"
        chunk = os.urandom(4096)
        fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            for _ in range(100):
                os.write(fd, chunk)
            os.fsync(fd)
        finally:
            os.close(fd)
        assert served_counter(mnt, "write") < 25  # 100 write(2)s, a few WRITE requests
        assert os.stat(p).st_size == 409600
        assert p.read_bytes() == chunk * 100
    finally:
        stop(served)


class CachingMemFS(MemFS):
    """Lets the kernel cache everything: listings, and negative entries for 60 s."""

    cache_dirs = True

    def lookup(self, parent: int, name: bytes) -> EntryAttributes:
        try:
            return super().lookup(parent, name)
        except FuseError as err:
            if err.errno != errno.ENOENT:
                raise
            return EntryAttributes(0, entry_timeout=60.0)


def test_notifications_from_inside_a_handler(tmp_path: Path) -> None:
    """With 60 s timeouts, keep_cache and cached directory listings the kernel only sees
    changes made behind its back once told; telling it from inside a handler must work."""
    require_root()
    require_fuse()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    served = serve(
        mnt, tmp_path / "fs.log", fs_factory=CachingMemFS, attr_timeout=60.0,
        entry_timeout=60.0,
    )  # fmt: skip
    try:
        p = mnt / "f"
        p.write_bytes(b"old!")
        assert p.read_bytes() == b"old!"
        os.setxattr(p, "user.ctl.rewrite", b"new!")  # same size: only the notification helps
        deadline = time.monotonic() + 5
        while p.read_bytes() != b"new!" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert p.read_bytes() == b"new!"

        d = mnt / "d"
        d.mkdir()
        assert os.listdir(d) == []
        readdirs = served_counter(mnt, "readdir")
        assert not (d / "quiet").exists()  # now a cached negative entry, too
        assert not (d / "told").exists()
        os.listdir(d)
        assert served_counter(mnt, "readdir") == readdirs  # FOPEN_CACHE_DIR: from the cache
        os.setxattr(mnt, "user.ctl.sneak", b"d/quiet")
        assert "quiet" not in os.listdir(d)  # the kernel was not told
        assert not (d / "quiet").exists()
        os.setxattr(mnt, "user.ctl.tell", b"d/told")
        deadline = time.monotonic() + 5
        while "told" not in os.listdir(d) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(os.listdir(d)) == ["quiet", "told"]
        assert (d / "told").exists()
        os.setxattr(mnt, "user.ctl.delete", b"d/told")  # notify_delete drops the dentry
        deadline = time.monotonic() + 5  # sent right after the reply, by the notifier thread
        while (d / "told").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not (d / "told").exists()
    finally:
        stop(served)


def served_counter(mnt: Path, what: str) -> int:
    return int(os.getxattr(mnt, (STATS + what.encode()).decode()))


# --- unprivileged -----------------------------------------------------------------------

NOBODY = 65534


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    """A temp dir user ``nobody`` can reach (pytest's own tmp root is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="overunder-fuse-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        if _is_mounted(path / "mnt"):
            subprocess.run(["umount", "-l", str(path / "mnt")], capture_output=True, check=False)
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fuse_device_0666() -> Iterator[None]:
    """Debian's default mode for /dev/fuse (these machines have 0600), for the duration;
    shared with other test processes through ``conftest.dev_fuse_mode_0666``."""
    with dev_fuse_mode_0666():
        yield


def _as_nobody(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         sys.executable, "-c", code],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip


def test_unprivileged_mount_through_fusermount3(world_tmp: Path, fuse_device_0666: None) -> None:
    require_root()  # to become nobody, and to set /dev/fuse's mode like Debian does
    require_fuse()
    require_binary("fusermount3")
    require_binary("setpriv")
    mnt = world_tmp / "mnt"
    mnt.mkdir()
    os.chown(mnt, NOBODY, NOBODY)
    log = world_tmp / "fs.log"
    log.touch()
    os.chown(log, NOBODY, NOBODY)
    served = serve(mnt, log, become=NOBODY)
    try:
        with open("/proc/self/mountinfo") as f:
            line = next(ln for ln in f if ln.split()[4] == str(mnt))
        assert line.split(" - ")[1].split()[:2] == ["fuse.overunder", "memfs"]
        assert "user_id=65534" in line
        res = _as_nobody(
            "import os, sys\n"
            f"m = {str(mnt)!r}\n"
            "os.mkdir(m + '/d')\n"
            "open(m + '/d/f', 'w').write('hi')\n"
            "print(sorted(os.listdir(m)), open(m + '/d/f').read(), os.stat(m + '/d/f').st_uid)\n"
        )
        assert res.returncode == 0, res.stderr
        assert res.stdout.split() == ["['d']", "hi", str(NOBODY)]
        res = _as_nobody(
            f"import subprocess\nsubprocess.run(['fusermount3', '-u', {str(mnt)!r}], check=True)\n"
        )
        assert res.returncode == 0, res.stderr
        assert served.wait(10) == 0
        assert not _is_mounted(mnt)
    finally:
        stop(served)
