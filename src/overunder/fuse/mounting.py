"""Getting a ``/dev/fuse`` descriptor onto a mountpoint, and taking it off again.

Two ways, chosen by :func:`mount_fd`:

- **As root** (euid 0): open ``/dev/fuse`` and call ``mount(2)`` ourselves (through ``ctypes``)
  with ``fd=N,rootmode=40000,user_id=U,group_id=G`` plus the kernel options asked for
  (``allow_other``, ``default_permissions``, ``max_read=N``); filesystem type
  ``fuse.<subtype>``, source ``fsname``. If the kernel refuses with EPERM (root without
  ``CAP_SYS_ADMIN``, e.g. in a user namespace) we fall back to the unprivileged way.
- **Unprivileged**: run the setuid ``fusermount3 -o OPTIONS -- MNT`` with ``_FUSE_COMMFD`` set to
  one end of a socketpair; it opens ``/dev/fuse``, mounts, and hands the descriptor back over
  ``SCM_RIGHTS``. ``fusermount3`` forces ``nosuid,nodev`` for non-root users and refuses
  ``allow_other`` unless ``user_allow_other`` is set in ``/etc/fuse.conf``.

``auto_unmount`` always goes through ``fusermount3`` (root included): the helper then stays
alive, holding one end of the socketpair, and unmounts once every copy of our end is closed —
when the daemon exits or is killed — so a dead daemon never leaves an ENOTCONN mountpoint.

Mount flags (``ro``, ``nosuid``, ``nodev``, ``noexec``, ``noatime``, ``nodiratime``, ``sync``,
``dirsync`` and their opposites) are not added by default: the kernel overlay does not add them
either, and a container's root filesystem needs set-uid binaries and device nodes to work.

Unmounting: ``umount2(2)`` as root (``MNT_DETACH`` when ``lazy``), ``fusermount3 -u [-z]``
otherwise. Unmounting makes the daemon's next read of ``/dev/fuse`` fail with ENODEV, which is
how :meth:`overunder.fuse.session.Session.run` knows to return.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from overunder.errors import FailedPrecondition, InvalidArgument, NotFound, Unsupported

__all__ = ["FuseMount", "mount_fd", "parse_mount_options", "unmount"]

FUSE_DEVICE = "/dev/fuse"

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_DIRSYNC = 128
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

# option -> (flag set, flag cleared)
_FLAG_OPTIONS: dict[str, tuple[int, int]] = {
    "ro": (MS_RDONLY, 0),
    "rw": (0, MS_RDONLY),
    "nosuid": (MS_NOSUID, 0),
    "suid": (0, MS_NOSUID),
    "nodev": (MS_NODEV, 0),
    "dev": (0, MS_NODEV),
    "noexec": (MS_NOEXEC, 0),
    "exec": (0, MS_NOEXEC),
    "sync": (MS_SYNCHRONOUS, 0),
    "async": (0, MS_SYNCHRONOUS),
    "dirsync": (MS_DIRSYNC, 0),
    "noatime": (MS_NOATIME, 0),
    "atime": (0, MS_NOATIME),
    "nodiratime": (MS_NODIRATIME, 0),
    "diratime": (0, MS_NODIRATIME),
    "relatime": (MS_RELATIME, 0),
    "strictatime": (MS_STRICTATIME, 0),
}
# Options the FUSE kernel module itself understands (beyond fd/rootmode/user_id/group_id).
_KERNEL_OPTIONS = {"allow_other", "default_permissions"}
_KERNEL_VALUE_OPTIONS = {"max_read"}
# Options only fusermount3 understands.
_FUSERMOUNT_OPTIONS = {"auto_unmount"}
_KNOWN = {*_FLAG_OPTIONS, *_KERNEL_OPTIONS, *_FUSERMOUNT_OPTIONS}


@dataclass(frozen=True, slots=True)
class MountOptions:
    """``-o`` items split by who handles them."""

    flags: int = 0
    kernel: tuple[str, ...] = ()
    fusermount: tuple[str, ...] = ()
    items: tuple[str, ...] = ()  # everything, in order, for fusermount3


def parse_mount_options(options: Sequence[str]) -> MountOptions:
    """Split mount(8)-style ``-o`` items; an unknown item is an error naming it."""
    flags = 0
    kernel: list[str] = []
    fusermount: list[str] = []
    items: list[str] = []
    for raw in options:
        for item in raw.split(","):
            if not item:
                continue
            key = item.split("=", 1)[0]
            if item in _FLAG_OPTIONS:
                set_, clear = _FLAG_OPTIONS[item]
                flags = (flags | set_) & ~clear
            elif item in _KERNEL_OPTIONS:
                kernel.append(item)
            elif key in _KERNEL_VALUE_OPTIONS and "=" in item:
                value = item.split("=", 1)[1]
                if not value.isdigit():
                    raise InvalidArgument(
                        f"FUSE mount option {item!r}: the value must be a number of bytes",
                        hint=f"write it as {key}=131072",
                    )
                kernel.append(item)
            elif item in _FUSERMOUNT_OPTIONS:
                fusermount.append(item)
            else:
                raise InvalidArgument(
                    f"unknown FUSE mount option {item!r}",
                    hint="known: " + ", ".join([*sorted(_KNOWN), "max_read=N"]),
                )
            items.append(item)
    return MountOptions(flags, tuple(kernel), tuple(fusermount), tuple(items))


@dataclass(slots=True)
class FuseMount:
    """A live ``/dev/fuse`` connection mounted at ``mountpoint``.

    ``privileged`` says whether ``mount(2)`` was used (so ``umount2`` undoes it) or
    ``fusermount3`` (so ``fusermount3 -u`` does). ``keepalive`` is the socket an
    ``auto_unmount`` fusermount3 watches: it unmounts when the socket closes, i.e. when this
    process (and every child that inherited it) has exited.
    """

    fd: int
    mountpoint: Path
    privileged: bool
    keepalive: socket.socket | None = field(default=None)
    helper: subprocess.Popen[bytes] | None = field(default=None)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL("libc.so.6", use_errno=True)


def _check_mountpoint(mountpoint: Path) -> None:
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError as exc:
        raise NotFound(
            f"mountpoint {mountpoint} does not exist", hint="create the directory first"
        ) from exc
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise FailedPrecondition(
                f"mountpoint {mountpoint} is a dead FUSE mount (transport endpoint is not "
                "connected)",
                hint=f"unmount it first: umount {mountpoint}",
            ) from exc
        raise FailedPrecondition(f"cannot stat mountpoint {mountpoint}: {exc.strerror}") from exc
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(
            f"mountpoint {mountpoint} is not a directory", hint="mount on a directory"
        )


def _check_name(what: str, value: str) -> None:
    if not value or any(c in value for c in ",\n\0") or (what == "subtype" and "." in value):
        raise InvalidArgument(
            f"FUSE {what} {value!r} is not usable in mount options",
            hint=f"choose a {what} without commas, dots, newlines or NUL bytes",
        )


def mount_fd(
    mountpoint: Path,
    *,
    fsname: str,
    subtype: str = "overunder",
    options: Sequence[str] = (),
) -> FuseMount:
    """Mount a new FUSE connection at ``mountpoint``; returns once the kernel accepted it.

    The kernel sends FUSE_INIT right away; until the daemon answers it, processes touching the
    mountpoint block (they do not fail). Raises ``Unsupported`` when FUSE is missing,
    ``FailedPrecondition`` when the mount is refused, ``InvalidArgument`` for a bad option.
    """
    _check_name("fsname", fsname)
    _check_name("subtype", subtype)
    opts = parse_mount_options(options)
    _check_mountpoint(mountpoint)
    if os.geteuid() == 0 and not opts.fusermount:
        try:
            return _mount_privileged(mountpoint, fsname, subtype, opts)
        except _MountPermissionError:
            pass  # root without CAP_SYS_ADMIN here: fusermount3 may still do it
    return _mount_fusermount(mountpoint, fsname, subtype, opts)


class _MountPermissionError(Exception):
    pass


def _mount_privileged(mountpoint: Path, fsname: str, subtype: str, opts: MountOptions) -> FuseMount:
    try:
        fd = os.open(FUSE_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise Unsupported(
            f"{FUSE_DEVICE} does not exist", hint="load the fuse module: modprobe fuse"
        ) from exc
    except PermissionError as exc:
        raise _MountPermissionError from exc
    data = ",".join(
        [
            f"fd={fd}",
            "rootmode=40000",
            f"user_id={os.geteuid()}",
            f"group_id={os.getegid()}",
            *opts.kernel,
        ]
    )
    libc = _libc()
    ret = libc.mount(
        fsname.encode(),
        os.fsencode(mountpoint),
        f"fuse.{subtype}".encode(),
        ctypes.c_ulong(opts.flags),
        data.encode(),
    )
    if ret != 0:
        code = ctypes.get_errno()
        os.close(fd)
        if code == errno.EPERM:
            raise _MountPermissionError
        if code == errno.ENODEV:
            raise Unsupported(
                "the kernel has no FUSE filesystem", hint="load the fuse module: modprobe fuse"
            )
        raise FailedPrecondition(
            f"mount of fuse.{subtype} on {mountpoint} failed: {os.strerror(code)}",
            hint=f"check the mountpoint and the options ({data})",
        )
    return FuseMount(fd=fd, mountpoint=mountpoint, privileged=True)


def _fusermount() -> str:
    path = shutil.which("fusermount3")
    if path is None:
        raise Unsupported(
            "fusermount3 is not installed; an unprivileged FUSE mount needs it",
            hint="install the fuse3 package (apt-get install fuse3), or mount as root",
        )
    return path


def _mount_fusermount(mountpoint: Path, fsname: str, subtype: str, opts: MountOptions) -> FuseMount:
    helper = _fusermount()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    auto_unmount = "auto_unmount" in opts.fusermount
    items = ",".join([f"fsname={fsname}", f"subtype={subtype}", *opts.items])
    with tempfile.TemporaryFile() as errors:
        try:
            proc = subprocess.Popen(
                [helper, "-o", items, "--", os.fspath(mountpoint)],
                env={**os.environ, "_FUSE_COMMFD": str(theirs.fileno())},
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )
        finally:
            theirs.close()
        try:
            _msg, fds, _flags, _addr = socket.recv_fds(ours, 1, 1)
        except OSError:
            fds = []
        if not auto_unmount or not fds:
            proc.wait()
        errors.seek(0)
        message = errors.read().decode(errors="replace").strip()
    if not fds or (not auto_unmount and proc.returncode != 0):
        for fd in fds:
            os.close(fd)
        ours.close()
        raise FailedPrecondition(
            f"fusermount3 could not mount {mountpoint}: {message or 'no descriptor received'}",
            hint=_fusermount_hint(message),
        )
    fd = fds[0]
    os.set_inheritable(fd, False)
    if auto_unmount:
        return FuseMount(fd, mountpoint, privileged=False, keepalive=ours, helper=proc)
    ours.close()
    return FuseMount(fd=fd, mountpoint=mountpoint, privileged=False)


def _fusermount_hint(message: str) -> str:
    if "allow_other" in message:
        return "drop allow_other, or set user_allow_other in /etc/fuse.conf"
    if "/dev/fuse" in message:
        return "this user cannot open /dev/fuse: check its mode (Debian's default is 0666)"
    if "permission" in message.lower():
        return "the mountpoint must be a directory this user owns or may write"
    return "run `fusermount3 -o ... -- MNT` by hand to see why"


def unmount(mountpoint: Path, *, lazy: bool = False, privileged: bool | None = None) -> None:
    """Unmount a FUSE mount: ``umount2`` as root, ``fusermount3 -u`` otherwise.

    ``lazy`` detaches the mount even while files in it are open (``MNT_DETACH`` / ``-z``); the
    connection then lives on until the last of them is closed. A busy mount without ``lazy``
    raises ``FailedPrecondition``; a path that is not mounted raises ``NotFound``.
    """
    if privileged is None:
        privileged = os.geteuid() == 0
    if privileged:
        libc = _libc()
        if libc.umount2(os.fsencode(mountpoint), MNT_DETACH if lazy else 0) == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EPERM:
            privileged = False  # no CAP_SYS_ADMIN after all: fusermount3 may be allowed
        else:
            _raise_unmount(mountpoint, code, os.strerror(code))
    if not privileged:
        cmd = [_fusermount(), "-u", *(["-z"] if lazy else []), "--", os.fspath(mountpoint)]
        res = subprocess.run(cmd, capture_output=True, check=False)
        if res.returncode != 0:
            message = res.stderr.decode(errors="replace").strip()
            code = (
                errno.EBUSY
                if "busy" in message
                else (errno.EINVAL if "not found" in message or "not mounted" in message else 0)
            )
            _raise_unmount(mountpoint, code, message)


def _raise_unmount(mountpoint: Path, err: int, message: str) -> None:
    if err == errno.EBUSY:
        raise FailedPrecondition(
            f"{mountpoint} is busy: {message}",
            hint="close the files and leave the directories open in it, or unmount lazily",
        )
    if err in (errno.EINVAL, errno.ENOENT):
        raise NotFound(f"{mountpoint} is not a mount point: {message}")
    raise FailedPrecondition(f"cannot unmount {mountpoint}: {message}")
