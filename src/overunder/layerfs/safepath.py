"""Paths inside a root that a hostile tree controls: resolved as the container sees them, and
opened without ever leaving the root.

Two families:

* :func:`resolve_in_root` answers *which* host path a container path means (Docker's
  ``FollowSymlinkInScope``): every symlink, absolute or relative, chained, is resolved relative to
  the root, and ``..`` above the root stays at the root. It works on names, so its answer can be
  stale by the time it is used: use it for decisions and messages, not for the write itself.
* The fd helpers do the operation race-free (the CVE-2018-15664 fix): every component is opened
  relative to a dir fd we already hold, with ``O_NOFOLLOW``, so a symlink swapped in during the
  operation can at most be *resolved inside the root*, never followed out of it.
  :func:`open_in_root` uses ``openat2(RESOLVE_IN_ROOT)`` (kernel >= 5.6) through ctypes and falls
  back to the same component walk done in Python. Missing parent dirs are created with
  ``mkdirat`` on those fds, never by path (CVE-2021-41089).
  :func:`open_dir_nofollow` refuses symlinks outright: the rule for unpacking layer tars.

``..`` is never opened: we pop our own stack of dir fds, so a dir renamed out of the root under
us cannot walk us out with it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from overunder.errors import FailedPrecondition, InvalidArgument, NotFound

__all__ = [
    "MAX_SYMLINKS",
    "have_openat2",
    "open_dir_in_root",
    "open_dir_nofollow",
    "open_in_root",
    "open_root",
    "resolve_in_root",
    "split_path",
]

MAX_SYMLINKS: Final = 255
"""Symlinks followed in one resolution before giving up (Docker's FollowSymlinkInScope limit)."""

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# openat2(2): <linux/openat2.h>
_SYS_OPENAT2: Final = 437  # same number on x86_64 and aarch64 (the unified syscall table)
_RESOLVE_NO_MAGICLINKS: Final = 0x02
_RESOLVE_IN_ROOT: Final = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


_libc: ctypes.CDLL | None = None
_openat2_ok: bool | None = None


def _syscall() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _openat2(dir_fd: int, path: str, flags: int, mode: int, resolve: int) -> int:
    """openat2(2); OSError on failure (ENOSYS when the kernel lacks it)."""
    how = _OpenHow(
        flags | os.O_CLOEXEC, mode if flags & (os.O_CREAT | os.O_TMPFILE) else 0, resolve
    )
    raw = os.fsencode(path)
    libc = _syscall()
    for _ in range(64):
        fd = int(libc.syscall(_SYS_OPENAT2, dir_fd, raw, ctypes.byref(how), ctypes.sizeof(how)))
        if fd >= 0:
            return fd
        err = ctypes.get_errno()
        # EAGAIN: a rename raced the lookup; the kernel asks us to try again (a bounded
        # number of times: a process renaming in a loop must not keep us here forever).
        if err not in (errno.EAGAIN, errno.EINTR):
            raise OSError(err, os.strerror(err), path)
    raise OSError(errno.EAGAIN, "lookup kept racing with renames", path)


def have_openat2() -> bool:
    """True when this kernel implements openat2 with RESOLVE_IN_ROOT (probed once)."""
    global _openat2_ok
    if _openat2_ok is None:
        root = os.open("/", _DIR_FLAGS)
        try:
            fd = _openat2(root, ".", _DIR_FLAGS, 0, _RESOLVE_IN_ROOT)
        except OSError:
            _openat2_ok = False
        else:
            os.close(fd)
            _openat2_ok = True
        finally:
            os.close(root)
    return _openat2_ok


def _no_nul(path: str) -> None:
    if "\0" in path:
        raise InvalidArgument(f"{path!r} contains a NUL byte", hint="no file name can hold one")


def split_path(path: str) -> list[str]:
    """Components of ``path`` without empty and ``.`` parts (``..`` kept: resolution decides)."""
    return [p for p in path.split("/") if p not in ("", ".")]


def resolve_in_root(root: Path, path: str, *, follow_last: bool) -> Path:
    """The host path that ``path`` names inside ``root``, as a process chrooted there sees it.

    Symlinks (absolute and relative, chained) resolve relative to ``root``; ``..`` at the root
    stays at the root; a component that does not exist ends resolution and the rest is taken
    literally (so a missing destination can be named). The last component is followed only when
    ``follow_last`` is true or ``path`` ends in ``/``. More than :data:`MAX_SYMLINKS` links:
    InvalidArgument. The answer is a name: see the module docstring about races.
    """
    _no_nul(path)
    follow_last = follow_last or path.endswith("/")
    todo = deque(path.split("/"))
    done: list[str] = []
    links = 0
    missing = False
    while todo:
        name = todo.popleft()
        if name in ("", "."):
            continue
        if name == "..":
            if done:
                done.pop()
            continue
        last = not any(p not in ("", ".") for p in todo)
        if missing or (last and not follow_last):
            done.append(name)
            continue
        candidate = root.joinpath(*done, name)
        try:
            st = os.lstat(candidate)
        except OSError:
            missing = True
            done.append(name)
            continue
        if not stat.S_ISLNK(st.st_mode):
            done.append(name)
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise InvalidArgument(
                f"too many levels of symbolic links resolving {path!r} inside {root}",
                hint="the path runs into a symlink loop; fix or remove the links",
            )
        try:
            target = os.readlink(candidate)
        except OSError:
            # Swapped for a non-link (EINVAL) or removed since the lstat: take it as found.
            missing = not os.path.lexists(candidate)
            done.append(name)
            continue
        if target.startswith("/"):
            done = []
        todo.extendleft(reversed(target.split("/")))
    return root.joinpath(*done)


def open_root(root: Path) -> int:
    """An fd for ``root`` itself (trusted: the caller chose it), for the helpers below."""
    try:
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError as err:
        raise NotFound(f"{root} does not exist", hint="create the directory first") from err
    except NotADirectoryError as err:
        raise InvalidArgument(f"{root} is not a directory") from err


def _is_symlink_at(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def open_dir_nofollow(
    root_fd: int,
    parts: Sequence[str],
    *,
    create: bool,
    mode: int = 0o755,
    created: list[str] | None = None,
) -> int:
    """Open the dir ``root/parts...`` refusing any symlink on the way (the tar-unpack rule).

    ``parts`` must be clean names (no ``..``, ``.`` or ``/``). Missing dirs are created (mode
    ``mode``, via mkdirat on the parent's fd) when ``create``, and their relative paths appended
    to ``created``; otherwise NotFound. A symlink component: InvalidArgument naming it; a
    non-dir component: InvalidArgument. Returns a new fd the caller closes.
    """
    fd = os.dup(root_fd)
    try:
        for i, name in enumerate(parts):
            while True:
                try:
                    nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)
                    break
                except FileNotFoundError as err:
                    if not create:
                        raise NotFound(f"{'/'.join(parts[: i + 1])} does not exist") from err
                    try:
                        os.mkdir(name, mode, dir_fd=fd)
                    except FileExistsError:
                        continue  # raced with another creator: open what is there
                    if created is not None:
                        created.append("/".join(parts[: i + 1]))
                except OSError as err:
                    where = "/".join(parts[: i + 1])
                    if err.errno in (errno.ELOOP, errno.ENOTDIR) and _is_symlink_at(fd, name):
                        raise InvalidArgument(
                            f"{where} is a symlink; refusing to follow it",
                            hint="a layer may not write through a symlink (in this layer or "
                            "a lower one); the archive is malformed or hostile",
                        ) from err
                    if err.errno == errno.ENOTDIR:
                        raise InvalidArgument(f"{where} is not a directory") from err
                    raise
            os.close(fd)
            fd = nfd
        return fd
    except BaseException:
        os.close(fd)
        raise


def _walk_in_root(
    root_fd: int,
    path: str,
    *,
    follow_last: bool,
    final: tuple[int, int] | None,
    create_dirs: bool,
    dir_mode: int,
) -> int:
    """The Python fallback of openat2(RESOLVE_IN_ROOT), plus optional mkdir of missing dirs.

    ``final`` = (flags, mode) opens the last component with those flags; None opens it as a dir
    (created when ``create_dirs``).
    """
    stack = [os.dup(root_fd)]
    todo = deque(path.split("/"))
    links = 0
    try:
        while True:
            while todo and todo[0] in ("", "."):
                todo.popleft()
            if not todo:
                # The path named the current dir ("", "/", "a/.."): open it as such.
                flags = final[0] if final else _DIR_FLAGS
                return os.open(
                    ".", (flags & ~(os.O_CREAT | os.O_EXCL)) | os.O_CLOEXEC, dir_fd=stack[-1]
                )
            name = todo.popleft()
            if name == "..":
                if len(stack) > 1:
                    os.close(stack.pop())
                continue
            last = not any(p not in ("", ".") for p in todo)
            cur = stack[-1]
            try:
                if last and final is not None:
                    flags, mode = final
                    return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=cur)
                stack.append(os.open(name, _DIR_FLAGS, dir_fd=cur))
                continue
            except FileNotFoundError:
                if last and final is not None:
                    raise
                if not create_dirs:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(name, dir_mode, dir_fd=cur)
                todo.appendleft(name)  # open what is there now (it may be a racing symlink)
                continue
            except OSError as err:
                if err.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                if not _is_symlink_at(cur, name) or (last and not follow_last):
                    raise
            links += 1
            if links > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            target = os.readlink(name, dir_fd=cur)
            if target.startswith("/"):
                for fd in stack[1:]:
                    os.close(fd)
                del stack[1:]
            todo.extendleft(reversed(target.split("/")))
    finally:
        for fd in stack:
            os.close(fd)


def open_in_root(
    root_fd: int, path: str, flags: int, mode: int = 0o644, *, follow_last: bool = True
) -> int:
    """``open(path, flags, mode)`` as a process chrooted at ``root_fd`` would, race-free.

    Symlinks resolve inside the root; ``..`` stops at it. With ``follow_last=False`` a symlink
    as the last component is not followed (ELOOP unless ``O_PATH``). OS errors propagate as
    OSError (ENOENT, ELOOP, ...) for the caller to word.
    """
    _no_nul(path)
    path = path or "."
    if not follow_last:
        flags |= os.O_NOFOLLOW
    if have_openat2():
        # EAGAIN (BlockingIOError): renames kept racing; the component walk is as safe.
        with contextlib.suppress(BlockingIOError):
            return _openat2(root_fd, path, flags, mode, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
    return _walk_in_root(
        root_fd, path, follow_last=follow_last, final=(flags, mode), create_dirs=False, dir_mode=0
    )


def open_dir_in_root(root_fd: int, path: str, *, create: bool = False, mode: int = 0o755) -> int:
    """Open the dir ``path`` inside the root (symlinks resolved in the root), creating missing
    components with mkdirat when ``create`` (never outside the root: CVE-2021-41089).

    NotFound / FailedPrecondition name the path.
    """
    _no_nul(path)
    path = path or "."
    try:
        if not create and have_openat2():
            with contextlib.suppress(BlockingIOError):  # EAGAIN: fall back to the walk
                return _openat2(
                    root_fd,
                    path,
                    _DIR_FLAGS & ~os.O_NOFOLLOW,
                    0,
                    _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS,
                )
        return _walk_in_root(
            root_fd, path, follow_last=True, final=None, create_dirs=create, dir_mode=mode
        )
    except FileNotFoundError as err:
        raise NotFound(f"{path} does not exist inside the root") from err
    except NotADirectoryError as err:
        raise FailedPrecondition(f"{path} is not a directory inside the root") from err
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise InvalidArgument(
                f"too many levels of symbolic links resolving {path!r} inside the root"
            ) from err
        raise
