"""The kernel side: mount(2), umount2(2) and the new mount API, called through ctypes.

We call libc directly instead of running mount(8) so that the options reach the kernel exactly
as given (no helper lookup, no fstab, no mtab) and errors come back as errno values we can
explain.

**Long layer lists.** mount(2) copies its option string into one 4 KiB page; a longer string is
cut off (moby reports "max depth exceeded" at about 122 layers). When the options do not fit,
we use the new mount API instead (fsopen/fsconfig/fsmount/move_mount, Linux 5.2+) and pass
each layer with ``fsconfig(FSCONFIG_SET_STRING, "lowerdir+", path)`` (overlay accepts
``lowerdir+`` since Linux 6.8), which has no overall size limit and keeps absolute paths, so
``/proc/self/mountinfo`` still names every layer. We chose this over moby's short-symlink
trick (``l/<id>`` links plus ``chdir``) because that needs a writable common parent for the
links and leaves relative paths in mountinfo, which ``overunder overlay tree`` could not
resolve later. On kernels before 6.8 a too-long option string is refused with Unsupported.

**Why a mount was refused.** mount(2) only returns an errno; overlayfs logs the reason
(``overlayfs: workdir and upperdir must be separate subtrees``) to the kernel log. We note the
end of ``/dev/kmsg`` before the call and read the new ``overlayfs:`` lines after a failure.
The new mount API hands the same messages back on the filesystem-context fd, which we read.
Kernel-log records carry no pid: on a host where other overlay mounts fail at the same
moment, their lines can be reported with ours (the fs-context log has no such race).
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from overunder.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OverunderError,
    Unsupported,
)

__all__ = [
    "MOUNT_DATA_MAX",
    "bind_mount",
    "kernel_mount",
    "kernel_umount",
    "split_flags",
]

# The option string plus its NUL must fit one page (copy_mount_options).
MOUNT_DATA_MAX = os.sysconf("SC_PAGE_SIZE") - 1

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_DIRSYNC = 128
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25

MNT_DETACH = 2

# mount(8)'s generic options that are mount flags, not filesystem data (libmount's table).
_FLAG_OPTIONS: dict[str, tuple[int, bool]] = {
    "ro": (MS_RDONLY, True),
    "rw": (MS_RDONLY, False),
    "nosuid": (MS_NOSUID, True),
    "suid": (MS_NOSUID, False),
    "nodev": (MS_NODEV, True),
    "dev": (MS_NODEV, False),
    "noexec": (MS_NOEXEC, True),
    "exec": (MS_NOEXEC, False),
    "sync": (MS_SYNCHRONOUS, True),
    "async": (MS_SYNCHRONOUS, False),
    "dirsync": (MS_DIRSYNC, True),
    "noatime": (MS_NOATIME, True),
    "atime": (MS_NOATIME, False),
    "nodiratime": (MS_NODIRATIME, True),
    "diratime": (MS_NODIRATIME, False),
    "relatime": (MS_RELATIME, True),
    "norelatime": (MS_RELATIME, False),
    "strictatime": (MS_STRICTATIME, True),
    "lazytime": (MS_LAZYTIME, True),
    "nolazytime": (MS_LAZYTIME, False),
    "defaults": (0, True),
}

# mount attributes for fsmount(2) (MOUNT_ATTR_*), for the flags that have one.
_MOUNT_ATTRS = {MS_RDONLY: 0x1, MS_NOSUID: 0x2, MS_NODEV: 0x4, MS_NOEXEC: 0x8, MS_NOATIME: 0x10}
MOUNT_ATTR_NODIRATIME = 0x80

# x86_64 and aarch64 share these numbers (the new mount API was added after the tables merged).
_SYS_MOVE_MOUNT = 429
_SYS_FSOPEN = 430
_SYS_FSCONFIG = 431
_SYS_FSMOUNT = 432
FSOPEN_CLOEXEC = 1
FSMOUNT_CLOEXEC = 1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
MOVE_MOUNT_F_EMPTY_PATH = 4
AT_FDCWD = -100

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        # The soname, not find_library("c"): that forks ldconfig -p (~5 ms per mount).
        lib = ctypes.CDLL("libc.so.6", use_errno=True)
        lib.mount.argtypes = [
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_ulong,
            ctypes.c_char_p,
        ]
        lib.mount.restype = ctypes.c_int
        lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        lib.umount2.restype = ctypes.c_int
        lib.syscall.restype = ctypes.c_long
        _libc = lib
    return _libc


def split_flags(options: Sequence[str]) -> tuple[int, list[str]]:
    """mount(8) items -> (MS_* flags, the rest as filesystem data items)."""
    flags = 0
    data: list[str] = []
    for item in options:
        known = _FLAG_OPTIONS.get(item)
        if known is None:
            data.append(item)
            continue
        bit, on = known
        flags = flags | bit if on else flags & ~bit
    return flags, data


class _KernelLog:
    """New ``overlayfs:`` lines in the kernel log since this object was created."""

    def __init__(self) -> None:
        self._fd: int | None = None
        try:
            self._fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self._fd, 0, os.SEEK_END)
        except OSError:
            self.close()

    def overlay_lines(self) -> list[str]:
        if self._fd is None:
            return []
        lines: list[str] = []
        while True:
            try:
                record = os.read(self._fd, 8192)
            except BlockingIOError:
                break
            except OSError as err:
                if err.errno == errno.EPIPE:  # records overwritten while we read: skip on
                    continue
                break
            if not record:
                break
            text = record.decode("utf-8", "replace").split(";", 1)[-1].split("\n", 1)[0]
            # "overlayfs: …" from the driver, "overlay: Bad value for …" from the option parser.
            if text.startswith(("overlayfs:", "overlay:")):
                lines.append(text)
        return lines

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _refusal(
    err_no: int, what: str, target: Path, reasons: Sequence[str], *, data_len: int = 0
) -> OverunderError:
    reason = "; ".join(r.split(":", 1)[-1].strip() for r in reasons)
    detail = f": {reason}" if reason else ""
    strerror = os.strerror(err_no)
    if err_no == errno.EPERM:
        return FailedPrecondition(
            f"mounting {what} on {target} was refused: {strerror} (needs root)",
            hint="run as root (CAP_SYS_ADMIN in the initial user namespace)",
        )
    if err_no == errno.ENODEV:
        return Unsupported(
            f"this kernel has no {what} filesystem",
            hint="load it with 'modprobe overlay' (package kmod), or use -t fuse.overunder",
        )
    if err_no == errno.ENOENT and not reason:
        return NotFound(f"mount point {target} or a layer does not exist ({strerror})")
    hint = (
        "that reason is the kernel's own (its overlayfs log line); fix the option it names"
        if reason
        else "run 'dmesg | grep overlayfs' for the kernel's reason"
    )
    if data_len:
        hint += f" (option string was {data_len} bytes)"
    cls = InvalidArgument if err_no in (errno.EINVAL, errno.ELOOP) else FailedPrecondition
    return cls(f"the kernel refused to mount {what} on {target}{detail} ({strerror})", hint=hint)


def kernel_mount(
    fstype: str, source: str, target: Path, options: Sequence[str], *, fsconfig_lowerdirs: bool
) -> None:
    """mount(2) ``fstype`` on ``target`` with mount(8)-style ``options``.

    For overlay, ``fsconfig_lowerdirs`` says the caller may split ``lowerdir=`` into
    ``lowerdir+`` items when the data does not fit one page.
    """
    flags, data_items = split_flags(options)
    data = ",".join(data_items)
    if len(os.fsencode(data)) > MOUNT_DATA_MAX:
        if not fsconfig_lowerdirs:
            raise InvalidArgument(
                f"mount options for {target} are {len(data)} bytes; the kernel takes at most "
                f"{MOUNT_DATA_MAX}",
                hint="shorten the paths",
            )
        _fsconfig_mount(fstype, source, target, flags, data_items)
        return
    log = _KernelLog()
    try:
        rc = _lib().mount(
            os.fsencode(source),
            os.fsencode(str(target)),
            os.fsencode(fstype),
            flags,
            os.fsencode(data) if data else None,
        )
        if rc != 0:
            err_no = ctypes.get_errno()
            raise _refusal(err_no, fstype, target, log.overlay_lines())
    finally:
        log.close()


def _expand_lowerdir(items: Sequence[str]) -> Iterator[tuple[str, str | None]]:
    """fsconfig parameters for our items: ``lowerdir=a:b`` becomes one ``lowerdir+`` per
    layer (unescaped: fsconfig takes each path whole)."""
    from overunder.mount.options import parse_overlay_options

    for item in items:
        key, sep, _value = item.partition("=")
        if key == "lowerdir" and sep:
            for layer in parse_overlay_options([item]).lowerdirs:
                yield "lowerdir+", str(layer)
        elif key in ("upperdir", "workdir") and sep:
            parsed = parse_overlay_options([item])
            path = parsed.upperdir if key == "upperdir" else parsed.workdir
            yield key, str(path)
        elif sep:
            yield key, _value
        else:
            yield key, None


def _read_fc_log(fd: int) -> list[str]:
    """Messages the kernel queued on a filesystem-context fd (``e overlayfs: …``)."""
    lines: list[str] = []
    for _ in range(32):
        try:
            msg = os.read(fd, 1024)
        except OSError:
            break
        if not msg:
            break
        text = msg.decode("utf-8", "replace").strip()
        lines.append(text[2:] if text[:2] in ("e ", "w ", "i ") else text)
    return lines


def _fsconfig_mount(
    fstype: str, source: str, target: Path, flags: int, items: Sequence[str]
) -> None:
    lib = _lib()
    fs_fd = lib.syscall(_SYS_FSOPEN, ctypes.c_char_p(os.fsencode(fstype)), FSOPEN_CLOEXEC)
    if fs_fd < 0:
        err_no = ctypes.get_errno()
        if err_no == errno.ENOSYS:
            raise Unsupported(
                "the option string does not fit one page and this kernel has no fsopen(2)",
                hint="use fewer or shorter layer paths (Linux 6.8+ takes any number)",
            )
        raise _refusal(err_no, fstype, target, [])
    mnt_fd = -1
    try:

        def config(cmd: int, key: str | None, value: str | None) -> None:
            rc = lib.syscall(
                _SYS_FSCONFIG,
                ctypes.c_int(fs_fd),
                ctypes.c_uint(cmd),
                ctypes.c_char_p(os.fsencode(key) if key is not None else None),
                ctypes.c_char_p(os.fsencode(value) if value is not None else None),
                ctypes.c_int(0),
            )
            if rc < 0:
                err_no = ctypes.get_errno()
                reasons = _read_fc_log(fs_fd)
                if err_no == errno.EINVAL and key == "lowerdir+" and not reasons:
                    raise Unsupported(
                        f"{len(items)} options do not fit one page and this kernel does not "
                        "take lowerdir+ (Linux 6.8+)",
                        hint="use fewer or shorter layer paths",
                    )
                raise _refusal(err_no, fstype, target, reasons)

        config(FSCONFIG_SET_STRING, "source", source)
        for key, value in _expand_lowerdir(items):
            if value is None:
                config(FSCONFIG_SET_FLAG, key, None)
            else:
                config(FSCONFIG_SET_STRING, key, value)
        config(FSCONFIG_CMD_CREATE, None, None)
        attrs = 0
        for bit, attr in _MOUNT_ATTRS.items():
            if flags & bit:
                attrs |= attr
        if flags & MS_NODIRATIME:
            attrs |= MOUNT_ATTR_NODIRATIME
        mnt_fd = lib.syscall(
            _SYS_FSMOUNT, ctypes.c_int(fs_fd), ctypes.c_uint(FSMOUNT_CLOEXEC), ctypes.c_uint(attrs)
        )
        if mnt_fd < 0:
            raise _refusal(ctypes.get_errno(), fstype, target, _read_fc_log(fs_fd))
        rc = lib.syscall(
            _SYS_MOVE_MOUNT,
            ctypes.c_int(mnt_fd),
            ctypes.c_char_p(b""),
            ctypes.c_int(AT_FDCWD),
            ctypes.c_char_p(os.fsencode(str(target))),
            ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
        )
        if rc < 0:
            raise _refusal(ctypes.get_errno(), fstype, target, [])
    finally:
        if mnt_fd >= 0:
            os.close(mnt_fd)
        os.close(fs_fd)


def bind_mount(source: Path, target: Path, options: Sequence[str]) -> None:
    """``mount --bind`` (``rbind`` for recursive); ``ro`` needs a second, remount call."""
    flags, _data = split_flags(options)
    bind_flags = MS_BIND | (MS_REC if "rbind" in options else 0)
    lib = _lib()
    if lib.mount(os.fsencode(str(source)), os.fsencode(str(target)), None, bind_flags, None):
        raise _refusal(ctypes.get_errno(), "bind", target, [])
    if flags & ~MS_RELATIME:
        rc = lib.mount(None, os.fsencode(str(target)), None, MS_REMOUNT | MS_BIND | flags, None)
        if rc:
            err_no = ctypes.get_errno()
            kernel_umount(target, lazy=True)
            raise _refusal(err_no, "bind", target, [])


def kernel_umount(target: Path, *, lazy: bool = False) -> int:
    """umount2(2); returns 0 or the errno (the caller explains EBUSY with the holders)."""
    rc = _lib().umount2(os.fsencode(str(target)), MNT_DETACH if lazy else 0)
    return 0 if rc == 0 else ctypes.get_errno()
