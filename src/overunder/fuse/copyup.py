"""Copy-up: a lower object copied into the upper dir through the workdir (temp, then rename),
keeping data, mode, owner, timestamps, xattrs and symlink targets, as the kernel does."""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import uuid

from overunder.fuse.layers import is_private_xattr

__all__ = [
    "RENAME_EXCHANGE",
    "RENAME_NOREPLACE",
    "RENAME_WHITEOUT",
    "copy_attrs",
    "copy_object",
    "renameat2",
    "temp_name",
]

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
RENAME_WHITEOUT = 4
_AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = _libc.renameat2
_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_renameat2.restype = ctypes.c_int


def renameat2(old: str, new: str, flags: int) -> None:
    """rename(2) with flags (Python's os.rename has none); raises OSError."""
    if _renameat2(_AT_FDCWD, os.fsencode(old), _AT_FDCWD, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), old, None, new)


def temp_name(work: str) -> str:
    return f"{work}/#{uuid.uuid4().hex[:16]}"


def copy_xattrs(src: str, dst: str) -> None:
    """Copy user-visible xattrs (overlay's own are not copied: they describe the layer)."""
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EPERM):
            return
        raise
    for name in names:
        # Escaped ones (set through a mount, overlay.overlay.*) belong to the file: copy.
        if is_private_xattr(name) and ".overlay.overlay." not in name:
            continue
        try:
            value = os.getxattr(src, name, follow_symlinks=False)
            os.setxattr(dst, name, value, follow_symlinks=False)
        except OSError as err:
            # security.* / trusted.* may be refused to an unprivileged daemon: the kernel
            # copies what the mounter may write, so do the same.
            if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EACCES):
                raise


def copy_attrs(st: os.stat_result, dst: str, *, is_link: bool) -> None:
    """Owner, then mode (chown clears set-id bits), then times."""
    if os.geteuid() == 0:
        os.lchown(dst, st.st_uid, st.st_gid)
    if not is_link:
        os.chmod(dst, stat.S_IMODE(st.st_mode))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def copy_object(src: str, dst_tmp: str, *, with_data: bool = True) -> tuple[os.stat_result, int]:
    """Create ``dst_tmp`` as a copy of ``src`` (any type but a dir); returns the source stat and
    the number of data bytes copied. The data is fsynced before the caller renames it in."""
    st = os.lstat(src)
    fmt = stat.S_IFMT(st.st_mode)
    copied = 0
    if fmt == stat.S_IFREG:
        fd_in = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            fd_out = os.open(dst_tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                if with_data:
                    remaining = st.st_size
                    while remaining > 0:
                        try:
                            n = os.copy_file_range(fd_in, fd_out, min(remaining, 1 << 30))
                        except OSError as err:
                            if err.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL):
                                raise
                            n = os.sendfile(fd_out, fd_in, None, min(remaining, 1 << 30))
                        if n == 0:
                            break
                        remaining -= n
                        copied += n
                    os.fsync(fd_out)
            finally:
                os.close(fd_out)
        finally:
            os.close(fd_in)
    elif fmt == stat.S_IFLNK:
        os.symlink(os.readlink(src), dst_tmp)
    else:
        os.mknod(dst_tmp, fmt | 0o600, st.st_rdev)
    copy_xattrs(src, dst_tmp)
    copy_attrs(st, dst_tmp, is_link=fmt == stat.S_IFLNK)
    return st, copied


def copy_dir_shell(src: str, dst_tmp: str) -> os.stat_result:
    """An empty dir with ``src``'s owner, mode, xattrs and times (its children stay below)."""
    st = os.lstat(src)
    os.mkdir(dst_tmp, 0o700)
    copy_xattrs(src, dst_tmp)
    copy_attrs(st, dst_tmp, is_link=False)
    return st
