"""The FUSE kernel protocol on the wire: opcodes, flags and ``struct`` layouts.

Layouts follow ``<linux/fuse.h>`` (``fuse_kernel.h``). Every structure there is padded to 64 bits
and native-endian; we only run on the machine that speaks to its own kernel, so ``=`` (native
order, standard sizes, no implicit padding) is exact. The ``Struct`` objects are compiled once
here, so the request loop never parses a format string.

We speak protocol **7.38** and accept kernels from **7.31** (Linux 5.4). The kernel answers with
the lower of its minor and ours, so on a 7.45 kernel (Linux 6.18) both sides use 7.38. Nothing
we use changed layout between 7.31 and 7.38, except ``fuse_setxattr_in`` (16 bytes once
``FUSE_SETXATTR_EXT`` is negotiated, 8 before) and ``fuse_init_in`` (``flags2`` from 7.36),
both handled where they are read.

Times in ``fuse_attr`` are packed signed (``q``): the field is ``uint64_t`` but the kernel
stores it in a signed ``time64_t``, so two's complement gives pre-1970 times correctly.
"""

from __future__ import annotations

import os
import struct
from enum import IntEnum, IntFlag
from typing import Final

__all__ = [
    "ACCESS_IN",
    "ATTR",
    "ATTR_OUT",
    "BATCH_FORGET_IN",
    "CREATE_IN",
    "DIRENT",
    "ENTRY_OUT",
    "FALLOCATE_IN",
    "FLUSH_IN",
    "FORGET_IN",
    "FORGET_ONE",
    "FSYNC_IN",
    "GETATTR_IN",
    "GETXATTR_IN",
    "GETXATTR_OUT",
    "INIT_IN",
    "INIT_OUT",
    "INTERRUPT_IN",
    "IN_HEADER",
    "KERNEL_MAJOR",
    "KERNEL_MINOR",
    "KSTATFS",
    "LINK_IN",
    "LSEEK_IN",
    "LSEEK_OUT",
    "MIN_KERNEL_MINOR",
    "MKDIR_IN",
    "MKNOD_IN",
    "NOTIFY_DELETE_OUT",
    "NOTIFY_INVAL_ENTRY_OUT",
    "NOTIFY_INVAL_INODE_OUT",
    "OPEN_IN",
    "OPEN_OUT",
    "OUT_HEADER",
    "READ_IN",
    "RELEASE_IN",
    "RENAME2_IN",
    "RENAME_IN",
    "ROOT_ID",
    "SETATTR_IN",
    "SETXATTR_IN",
    "SETXATTR_IN_COMPAT",
    "WRITE_IN",
    "WRITE_OUT",
    "FattrValid",
    "FopenFlags",
    "InitFlags",
    "NotifyCode",
    "Opcode",
    "decode_dev",
    "dirent_type",
    "encode_dev",
    "split_ns",
]

KERNEL_MAJOR: Final = 7
KERNEL_MINOR: Final = 38
MIN_KERNEL_MINOR: Final = 31
ROOT_ID: Final = 1
"""The inode number the kernel uses for the root of the mount (``FUSE_ROOT_ID``)."""


class Opcode(IntEnum):
    LOOKUP = 1
    FORGET = 2
    GETATTR = 3
    SETATTR = 4
    READLINK = 5
    SYMLINK = 6
    MKNOD = 8
    MKDIR = 9
    UNLINK = 10
    RMDIR = 11
    RENAME = 12
    LINK = 13
    OPEN = 14
    READ = 15
    WRITE = 16
    STATFS = 17
    RELEASE = 18
    FSYNC = 20
    SETXATTR = 21
    GETXATTR = 22
    LISTXATTR = 23
    REMOVEXATTR = 24
    FLUSH = 25
    INIT = 26
    OPENDIR = 27
    READDIR = 28
    RELEASEDIR = 29
    FSYNCDIR = 30
    GETLK = 31
    SETLK = 32
    SETLKW = 33
    ACCESS = 34
    CREATE = 35
    INTERRUPT = 36
    BMAP = 37
    DESTROY = 38
    IOCTL = 39
    POLL = 40
    NOTIFY_REPLY = 41
    BATCH_FORGET = 42
    FALLOCATE = 43
    READDIRPLUS = 44
    RENAME2 = 45
    LSEEK = 46
    COPY_FILE_RANGE = 47
    SETUPMAPPING = 48
    REMOVEMAPPING = 49
    SYNCFS = 50
    TMPFILE = 51
    STATX = 52


class NotifyCode(IntEnum):
    """Codes of unsolicited messages (``unique == 0``); sent in ``fuse_out_header.error``."""

    POLL = 1
    INVAL_INODE = 2
    INVAL_ENTRY = 3
    STORE = 4
    RETRIEVE = 5
    DELETE = 6


class InitFlags(IntFlag):
    """``fuse_init_in.flags`` / ``fuse_init_out.flags`` (the low 32 bits)."""

    ASYNC_READ = 1 << 0
    POSIX_LOCKS = 1 << 1
    FILE_OPS = 1 << 2
    ATOMIC_O_TRUNC = 1 << 3
    EXPORT_SUPPORT = 1 << 4
    BIG_WRITES = 1 << 5
    DONT_MASK = 1 << 6
    SPLICE_WRITE = 1 << 7
    SPLICE_MOVE = 1 << 8
    SPLICE_READ = 1 << 9
    FLOCK_LOCKS = 1 << 10
    HAS_IOCTL_DIR = 1 << 11
    AUTO_INVAL_DATA = 1 << 12
    DO_READDIRPLUS = 1 << 13
    READDIRPLUS_AUTO = 1 << 14
    ASYNC_DIO = 1 << 15
    WRITEBACK_CACHE = 1 << 16
    NO_OPEN_SUPPORT = 1 << 17
    PARALLEL_DIROPS = 1 << 18
    HANDLE_KILLPRIV = 1 << 19
    POSIX_ACL = 1 << 20
    ABORT_ERROR = 1 << 21
    MAX_PAGES = 1 << 22
    CACHE_SYMLINKS = 1 << 23
    NO_OPENDIR_SUPPORT = 1 << 24
    EXPLICIT_INVAL_DATA = 1 << 25
    MAP_ALIGNMENT = 1 << 26
    SUBMOUNTS = 1 << 27
    HANDLE_KILLPRIV_V2 = 1 << 28
    SETXATTR_EXT = 1 << 29
    INIT_EXT = 1 << 30
    INIT_RESERVED = 1 << 31


class FopenFlags(IntFlag):
    """``fuse_open_out.open_flags``: how the kernel treats an open file or directory."""

    DIRECT_IO = 1 << 0
    KEEP_CACHE = 1 << 1
    NONSEEKABLE = 1 << 2
    CACHE_DIR = 1 << 3
    STREAM = 1 << 4
    NOFLUSH = 1 << 5


class FattrValid(IntFlag):
    """``fuse_setattr_in.valid``: which fields of a SETATTR request are set."""

    MODE = 1 << 0
    UID = 1 << 1
    GID = 1 << 2
    SIZE = 1 << 3
    ATIME = 1 << 4
    MTIME = 1 << 5
    FH = 1 << 6
    ATIME_NOW = 1 << 7
    MTIME_NOW = 1 << 8
    LOCKOWNER = 1 << 9
    CTIME = 1 << 10
    KILL_SUIDGID = 1 << 11


GETATTR_FH: Final = 1 << 0
FSYNC_FDATASYNC: Final = 1 << 0
WRITE_CACHE: Final = 1 << 0
"""``fuse_write_in.write_flags``: a delayed write from the page cache (writeback)."""
WRITE_KILL_SUIDGID: Final = 1 << 2
"""``fuse_write_in.write_flags`` (HANDLE_KILLPRIV_V2): the writer lacks CAP_FSETID, clear
set-user-ID (and set-group-ID if group-executable)."""
OPEN_KILL_SUIDGID: Final = 1 << 0
"""``fuse_open_in.open_flags`` (HANDLE_KILLPRIV_V2): as WRITE_KILL_SUIDGID, for O_TRUNC."""

# --- headers -------------------------------------------------------------------------------
IN_HEADER: Final = struct.Struct("=IIQQIIIHH")  # len opcode unique nodeid uid gid pid extlen pad
OUT_HEADER: Final = struct.Struct("=IiQ")  # len error unique
IN_HEADER_SIZE: Final = IN_HEADER.size  # 40
OUT_HEADER_SIZE: Final = OUT_HEADER.size  # 16

# --- attributes and entries ----------------------------------------------------------------
# ino size blocks atime mtime ctime atimensec mtimensec ctimensec mode nlink uid gid rdev
# blksize flags
ATTR: Final = struct.Struct("=QQQqqqIIIIIIIIII")  # 88 bytes
# nodeid generation entry_valid attr_valid entry_valid_nsec attr_valid_nsec + fuse_attr
ENTRY_OUT: Final = struct.Struct("=QQQQII" + ATTR.format[1:])  # 128 bytes
# attr_valid attr_valid_nsec dummy + fuse_attr
ATTR_OUT: Final = struct.Struct("=QII" + ATTR.format[1:])  # 104 bytes
KSTATFS: Final = struct.Struct(
    "=QQQQQIII4x24x"
)  # blocks bfree bavail files ffree bsize namelen frsize

# --- requests ------------------------------------------------------------------------------
INIT_IN: Final = struct.Struct("=IIII")  # major minor max_readahead flags (flags2 follows, 7.36+)
INIT_IN_FLAGS2: Final = struct.Struct("=I")
# major minor max_readahead flags max_background congestion_threshold max_write time_gran
# max_pages map_alignment flags2 unused[7]
INIT_OUT: Final = struct.Struct("=IIIIHHIIHHI28x")  # 64 bytes
FORGET_IN: Final = struct.Struct("=Q")
BATCH_FORGET_IN: Final = struct.Struct("=II")
FORGET_ONE: Final = struct.Struct("=QQ")
GETATTR_IN: Final = struct.Struct("=IIQ")  # getattr_flags dummy fh
# valid padding fh size lock_owner atime mtime ctime atimensec mtimensec ctimensec mode
# unused4 uid gid unused5
SETATTR_IN: Final = struct.Struct("=IIQQQqqqIIIIIIII")  # 88 bytes
MKNOD_IN: Final = struct.Struct("=IIII")  # mode rdev umask padding
MKDIR_IN: Final = struct.Struct("=II")  # mode umask
RENAME_IN: Final = struct.Struct("=Q")  # newdir
RENAME2_IN: Final = struct.Struct("=QII")  # newdir flags padding
LINK_IN: Final = struct.Struct("=Q")  # oldnodeid
OPEN_IN: Final = struct.Struct("=II")  # flags open_flags
CREATE_IN: Final = struct.Struct("=IIII")  # flags mode umask open_flags
OPEN_OUT: Final = struct.Struct("=QII")  # fh open_flags padding
RELEASE_IN: Final = struct.Struct("=QIIQ")  # fh flags release_flags lock_owner
FLUSH_IN: Final = struct.Struct("=QIIQ")  # fh unused padding lock_owner
READ_IN: Final = struct.Struct("=QQIIQII")  # fh offset size read_flags lock_owner flags padding
WRITE_IN: Final = struct.Struct("=QQIIQII")  # fh offset size write_flags lock_owner flags padding
WRITE_OUT: Final = struct.Struct("=II")  # size padding
FSYNC_IN: Final = struct.Struct("=QII")  # fh fsync_flags padding
SETXATTR_IN: Final = struct.Struct("=IIII")  # size flags setxattr_flags padding (SETXATTR_EXT)
SETXATTR_IN_COMPAT: Final = struct.Struct("=II")  # size flags
GETXATTR_IN: Final = struct.Struct("=II")  # size padding
GETXATTR_OUT: Final = struct.Struct("=II")  # size padding
ACCESS_IN: Final = struct.Struct("=II")  # mask padding
INTERRUPT_IN: Final = struct.Struct("=Q")  # unique
FALLOCATE_IN: Final = struct.Struct("=QQQII")  # fh offset length mode padding
LSEEK_IN: Final = struct.Struct("=QQII")  # fh offset whence padding
LSEEK_OUT: Final = struct.Struct("=Q")

# --- directory entries ---------------------------------------------------------------------
DIRENT: Final = struct.Struct("=QQII")  # ino off namelen type; name follows, record 8-aligned

# --- notifications -------------------------------------------------------------------------
NOTIFY_INVAL_INODE_OUT: Final = struct.Struct("=Qqq")  # ino off len
NOTIFY_INVAL_ENTRY_OUT: Final = struct.Struct("=QII")  # parent namelen flags; name + NUL follow
NOTIFY_DELETE_OUT: Final = struct.Struct("=QQII")  # parent child namelen padding; name + NUL

NAME_MAX: Final = 1024
"""``FUSE_NAME_MAX``: the longest name the kernel accepts in a directory entry."""


def dirent_type(mode: int) -> int:
    """The ``DT_*`` value of a ``st_mode`` (what ``fuse_dirent.type`` carries)."""
    return (mode & 0o170000) >> 12


def encode_dev(rdev: int) -> int:
    """A userspace ``dev_t`` (``os.makedev``) as the kernel's 32-bit ``new_encode_dev`` form,
    which is what ``fuse_attr.rdev`` carries."""
    major, minor = os.major(rdev), os.minor(rdev)
    return ((minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)) & 0xFFFFFFFF


def decode_dev(dev: int) -> int:
    """The kernel's 32-bit device number (``fuse_mknod_in.rdev``) as a userspace ``dev_t``."""
    return os.makedev((dev & 0xFFF00) >> 8, (dev & 0xFF) | ((dev >> 12) & 0xFFF00))


def split_ns(ns: int) -> tuple[int, int]:
    """Nanoseconds since the epoch as the (seconds, nanoseconds) pair FUSE carries."""
    return divmod(ns, 1_000_000_000)
