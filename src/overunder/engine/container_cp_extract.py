"""Unpack a ``cp`` tar stream into a directory, never writing outside it.

Two policies for the parent dirs of each entry:

* **in the container** (:class:`InRoot`): the destination is a path inside a container root
  held as a dir fd; every parent is opened from that fd with
  :func:`overunder.layerfs.safepath.open_dir_in_root` (``openat2(RESOLVE_IN_ROOT)`` or its
  component walk), so symlinks - the container's own, or one swapped in while we copy (the
  CVE-2018-15664 race) - resolve *inside the root*, as Docker's chrooted extractor resolves
  them, and can never lead to a host path. Missing parents are made with ``mkdirat`` on those
  fds (never by path: CVE-2021-41089). Owners come from the archive.
* **on the host** (:class:`OnHost`): the destination dir is the caller's; below it, every
  component is opened with ``O_NOFOLLOW`` (:func:`~overunder.layerfs.safepath.open_dir_nofollow`):
  an archive made from a container can never write through a symlink it created. Files are
  owned by the caller (Docker's ``cp`` out does not keep the container's owners).

Each entry is made with the ``*at`` calls on the parent's fd and ``O_NOFOLLOW``/``O_EXCL``:
what is there already is removed first unless both are dirs (tar's and Docker's rule), a
symlink at the name is replaced, never followed. Hard links must point at an entry of the
same archive. No process is started and nothing from the tree is executed or loaded: this is
plain Python (the CVE-2019-14271 class cannot happen).

Gaps: GNU sparse members are written dense; xattrs are restored (except overlay's own) only
in the container.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tarfile
from typing import BinaryIO, Final, Protocol

from overunder.errors import FailedPrecondition, InvalidArgument, OverunderError
from overunder.layerfs.safepath import open_dir_in_root, open_dir_nofollow

__all__ = ["InRoot", "OnHost", "TarStreamError", "extract"]

_FILE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK: Final = 1 << 20
_SKIP_XATTRS: Final = ("trusted.overlay.", "user.overlay.", "user.fuseoverlayfs.")


class TarStreamError(InvalidArgument):
    """The stream is not a (complete) tar archive."""


class Policy(Protocol):
    """Where entries go: ``open_parent(parts)`` gives a new fd of the dir ``parts`` below the
    destination (made if missing); ``owners`` says whether archive uids/gids are applied."""

    owners: bool
    xattrs: bool

    def open_parent(self, parts: list[str]) -> int: ...

    def label(self, parts: list[str]) -> str: ...


class InRoot:
    """Entries go under ``base`` (a clean relative path) inside the root ``root_fd``."""

    owners = True
    xattrs = True

    def __init__(self, root_fd: int, base: str) -> None:
        self.root_fd = root_fd
        self.base = base.strip("/")

    def _rel(self, parts: list[str]) -> str:
        return "/".join(p for p in [self.base, *parts] if p)

    def open_parent(self, parts: list[str]) -> int:
        # The base was checked to exist before the copy started; never re-create it. If it
        # vanished (a container process swapping it out mid-copy), creating a fresh one would
        # quietly redirect the copy, so the copy fails instead (NotFound names it).
        os.close(open_dir_in_root(self.root_fd, self.base))
        if not parts:
            return open_dir_in_root(self.root_fd, self.base)
        return open_dir_in_root(self.root_fd, self._rel(parts), create=True)

    def label(self, parts: list[str]) -> str:
        return "/" + self._rel(parts)


class OnHost:
    """Entries go under the host dir held by ``dest_fd`` (the caller's choice)."""

    owners = False
    xattrs = False

    def __init__(self, dest_fd: int, dest: str) -> None:
        self.dest_fd = dest_fd
        self.dest = dest

    def open_parent(self, parts: list[str]) -> int:
        return open_dir_nofollow(self.dest_fd, parts, create=True)

    def label(self, parts: list[str]) -> str:
        return os.path.join(self.dest, *parts)


def _clean(name: str) -> list[str]:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts:
        raise InvalidArgument(
            f"archive entry {name!r} points outside the destination",
            hint="the archive is malformed or hostile; nothing was written for it",
        )
    return parts


def _remove(pfd: int, name: str) -> None:
    try:
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=pfd)  # fd-based: does not follow symlinks inside
    else:
        os.unlink(name, dir_fd=pfd)


def _mtime(m: tarfile.TarInfo) -> int:
    return int(m.mtime * 1_000_000_000)


class _Extractor:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.dirs: list[tuple[list[str], int, tarfile.TarInfo]] = []  # mtimes set at the end
        self.written = 0

    def entry(self, m: tarfile.TarInfo, tf: tarfile.TarFile) -> None:
        parts = _clean(m.name)
        if not parts:
            return  # "./": the destination itself keeps its metadata
        if m.type in (tarfile.XHDTYPE, tarfile.XGLTYPE):
            return
        parent, name = parts[:-1], parts[-1]
        pfd = self.policy.open_parent(parent)
        try:
            self._make(m, tf, pfd, name, parts)
        finally:
            os.close(pfd)
        self.written += 1

    def _make(
        self, m: tarfile.TarInfo, tf: tarfile.TarFile, pfd: int, name: str, parts: list[str]
    ) -> None:
        mode = m.mode & 0o7777
        if m.isdir():
            try:
                st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    _remove(pfd, name)
                    os.mkdir(name, 0o700, dir_fd=pfd)
            except FileNotFoundError:
                os.mkdir(name, 0o700, dir_fd=pfd)
            fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
            try:
                self._meta_fd(fd, m, mode)
            finally:
                os.close(fd)
            self.dirs.append((parts, 0, m))
            return
        _remove(pfd, name)
        if m.isreg():
            fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=pfd)
            try:
                src = tf.extractfile(m)
                if src is not None:
                    while chunk := src.read(_CHUNK):
                        os.write(fd, chunk)
                self._meta_fd(fd, m, mode)
                os.utime(fd, ns=(_mtime(m), _mtime(m)))
            finally:
                os.close(fd)
            return
        if m.issym():
            os.symlink(m.linkname, name, dir_fd=pfd)
            if self.policy.owners:
                os.chown(name, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
            with contextlib.suppress(OSError):
                os.utime(name, ns=(_mtime(m), _mtime(m)), dir_fd=pfd, follow_symlinks=False)
            return
        if m.islnk():
            tparts = _clean(m.linkname)
            if not tparts:
                raise InvalidArgument(f"hard link {m.name!r} has no target")
            tfd = self.policy.open_parent(tparts[:-1])
            try:
                os.link(tparts[-1], name, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
            finally:
                os.close(tfd)
            return
        if m.ischr() or m.isblk() or m.isfifo():
            if m.isfifo():
                os.mkfifo(name, mode, dir_fd=pfd)
            else:
                kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
                os.mknod(name, kind | mode, os.makedev(m.devmajor, m.devminor), dir_fd=pfd)
            if self.policy.owners:
                os.chown(name, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
            with contextlib.suppress(OSError):
                os.utime(name, ns=(_mtime(m), _mtime(m)), dir_fd=pfd, follow_symlinks=False)
            return
        # anything else (GNU volume headers, unknown types): nothing to make

    def _meta_fd(self, fd: int, m: tarfile.TarInfo, mode: int) -> None:
        if self.policy.owners:
            os.fchown(fd, m.uid, m.gid)
        os.fchmod(fd, mode)  # after chown: chown clears setuid bits
        if self.policy.xattrs:
            for key, value in (m.pax_headers or {}).items():
                if not key.startswith("SCHILY.xattr."):
                    continue
                xname = key.removeprefix("SCHILY.xattr.")
                if xname.startswith(_SKIP_XATTRS):
                    continue
                raw = value.encode("utf-8", "surrogateescape")
                with contextlib.suppress(OSError):
                    os.setxattr(fd, xname, raw)

    def finish(self) -> None:
        for parts, _, m in reversed(self.dirs):
            try:
                pfd = self.policy.open_parent(parts[:-1])
            except (OverunderError, OSError):
                continue
            try:
                with contextlib.suppress(OSError):
                    os.utime(
                        parts[-1], ns=(_mtime(m), _mtime(m)), dir_fd=pfd, follow_symlinks=False
                    )
            finally:
                os.close(pfd)


def extract(stream: BinaryIO, policy: Policy) -> int:
    """Unpack the tar ``stream`` with ``policy`` (module docstring); returns the number of
    entries written. TarStreamError (message ``Error processing tar file(exit status 1): …``,
    Docker's wording) when the stream is not a complete tar; FailedPrecondition naming the
    path when the filesystem refuses a write."""
    ex = _Extractor(policy)
    try:
        tf = tarfile.open(  # noqa: SIM115  # stream mode: nothing of ours to close
            fileobj=stream, mode="r|", encoding="utf-8", errors="surrogateescape"
        )
        for m in tf:
            try:
                ex.entry(m, tf)
            except OSError as err:
                raise FailedPrecondition(
                    f"Error processing tar file(exit status 1): {_op(err)} "
                    f"{policy.label(_clean(m.name))}: {(err.strerror or str(err)).lower()}",
                    hint="the destination refused the write",
                ) from err
    except (tarfile.ReadError, EOFError, tarfile.HeaderError) as err:
        raise TarStreamError(
            "Error processing tar file(exit status 1): unexpected EOF",
            hint=f"the input is not a complete tar archive ({err})",
        ) from None
    ex.finish()
    return ex.written


def _op(err: OSError) -> str:
    return {errno.EBUSY: "unlinkat", errno.EEXIST: "mkdirat"}.get(err.errno or 0, "open")
