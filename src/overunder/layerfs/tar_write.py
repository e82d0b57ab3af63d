"""Write layer tars (from an upper dir) and plain tars of a tree (export, ``cp`` out).

The tar is written by hand, the way Docker's daemon writes layers (``docker-compat.md`` §10,
Go's ``archive/tar``): POSIX ustar headers, a PAX header only when a field does not fit (long or
non-ASCII names, big ids or sizes, xattrs), names without ``./``, dirs with a trailing ``/``,
file-type bits in the mode field (``040755``, ``0100644``), uname/gname ``root`` for id 0
(empty otherwise: host user names would make the bytes depend on the host), mtimes in whole
seconds, and the archive closed by two zero blocks (no padding to 10 KiB records). Python's
``tarfile`` masks the type bits away and pads records, hence the hand-written headers.

:func:`write_layer` turns an upper dir, in any of the on-disk formats of
:mod:`overunder.layerfs.whiteout` (kernel char 0/0 whiteouts and opaque xattrs, xattr whiteouts
in ``opaque="x"`` dirs, fuse-overlayfs ``.wh.`` files and ``.wh..wh..opq`` markers) into an OCI
layer: entries in walk order (each dir's names sorted by bytes, a dir before its children), a
whiteout as ``.wh.<name>`` placed where the deleted name sorts (regular, size 0, mode 0600,
uid/gid 0, mtime = ``whiteout_mtime`` or the whiteout's own mtime), an opaque dir as its dir
entry, then ``<dir>/.wh..wh..opq`` (regular, size 0, the dir's permission bits and owner,
mtime 0), then its children; hard links as type ``1`` entries naming the first path written;
overlay's own xattrs never written. Sockets are skipped (tar cannot hold them).

Everything is read through dir fds opened with ``O_NOFOLLOW``: an upper dir written by a running
container may have a dir swapped for a symlink while we walk it, and that must not make us
archive a host directory.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from overunder.errors import FailedPrecondition, InvalidArgument, NotFound
from overunder.layerfs.safepath import open_dir_in_root, open_root, resolve_in_root
from overunder.layerfs.whiteout import (
    OCI_OPAQUE_MARKER,
    OCI_WHITEOUT_PREFIX,
    is_chardev_whiteout,
    whiteout_target,
)

__all__ = ["WriteResult", "write_layer", "write_tree"]

_BLOCK: Final = 512
_COPY_CHUNK: Final = 1 << 20
_SKIPPED_XATTR_PREFIXES: Final = (
    "trusted.overlay.",
    "user.overlay.",
    "user.fuseoverlayfs.",
    "security.selinux",  # a host label, not content
)
_OPAQUE_XATTRS: Final = (
    "trusted.overlay.opaque",
    "user.overlay.opaque",
    "user.fuseoverlayfs.opaque",
)
_WHITEOUT_XATTRS: Final = ("trusted.overlay.whiteout", "user.overlay.whiteout")
_NO_XATTR: Final = frozenset({errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM})
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# tar type flags and the mode type bits Go's FileInfoHeader adds (c_ISREG, ...)
_REG, _LNK, _SYM, _CHR, _BLK, _DIR, _FIFO = b"0", b"1", b"2", b"3", b"4", b"5", b"6"
_TYPE_BITS: Final = {
    _REG: 0o100000,
    _LNK: 0o100000,
    _SYM: 0o120000,
    _CHR: 0o020000,
    _BLK: 0o060000,
    _DIR: 0o040000,
    _FIFO: 0o010000,
}


@dataclass(frozen=True, slots=True)
class WriteResult:
    """The written tar's diff ID (``sha256:`` of its bytes), size in bytes and entry count."""

    diff_id: str
    size: int
    entries: int


def _octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def _fits(value: int, width: int) -> bool:
    return 0 <= value < 1 << (3 * (width - 1))


def _pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode("utf-8") + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def _split_ustar(name: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) for a long ASCII name that ustar's 155+100 bytes can hold."""
    if len(name) > 256:
        return None
    for i in range(len(name) - 1, 0, -1):
        if name[i : i + 1] == b"/" and i <= 155 and 0 < len(name) - i - 1 <= 100:
            return name[:i], name[i + 1 :]
    return None


class _TarOut:
    """Headers and data onto ``out``, hashed and counted as written."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0
        self.entries = 0

    def _emit(self, data: bytes | memoryview) -> None:
        self.out.write(data)
        self.hash.update(data)
        self.size += len(data)

    def _pad(self, n: int) -> None:
        if n % _BLOCK:
            self._emit(b"\0" * (_BLOCK - n % _BLOCK))

    def _block(
        self,
        *,
        name: bytes,
        typeflag: bytes,
        mode: int,
        uid: int,
        gid: int,
        size: int,
        mtime: int,
        linkname: bytes,
        uname: bytes,
        gname: bytes,
        devmajor: int,
        devminor: int,
        prefix: bytes = b"",
    ) -> bytes:
        h = bytearray(_BLOCK)
        h[0:100] = name[:100].ljust(100, b"\0")
        h[100:108] = _octal(mode, 8)
        h[108:116] = _octal(uid, 8)
        h[116:124] = _octal(gid, 8)
        h[124:136] = _octal(size, 12)
        h[136:148] = _octal(mtime, 12)
        h[148:156] = b" " * 8
        h[156:157] = typeflag
        h[157:257] = linkname[:100].ljust(100, b"\0")
        h[257:265] = b"ustar\x0000"
        h[265:297] = uname[:32].ljust(32, b"\0")
        h[297:329] = gname[:32].ljust(32, b"\0")
        h[329:337] = _octal(devmajor, 8)
        h[337:345] = _octal(devminor, 8)
        h[345:500] = prefix[:155].ljust(155, b"\0")
        h[148:156] = b"%06o\0 " % sum(h)
        return bytes(h)

    def header(
        self,
        name: str,
        typeflag: bytes,
        *,
        mode: int,
        uid: int = 0,
        gid: int = 0,
        size: int = 0,
        mtime: int = 0,
        linkname: str = "",
        devmajor: int = 0,
        devminor: int = 0,
        xattrs: list[tuple[str, bytes]] | None = None,
        type_bits: bool = True,
    ) -> None:
        """One entry's header (a PAX header first when a field needs one)."""
        pax: list[bytes] = []
        bname = name.encode("utf-8", "surrogateescape")
        blink = linkname.encode("utf-8", "surrogateescape")
        prefix = b""
        if len(bname) > 100 or not bname.isascii():
            split = _split_ustar(bname) if bname.isascii() else None
            if split is None:
                pax.append(_pax_record("path", bname))
            else:
                prefix, bname = split
        if len(blink) > 100 or not blink.isascii():
            pax.append(_pax_record("linkpath", blink))
        for key, value, width in (("uid", uid, 8), ("gid", gid, 8), ("size", size, 12)):
            if not _fits(value, width):
                pax.append(_pax_record(key, str(value).encode()))
        if not _fits(mtime, 12):
            pax.append(_pax_record("mtime", str(mtime).encode()))
        for xname, xvalue in xattrs or ():
            pax.append(_pax_record("SCHILY.xattr." + xname, xvalue))
        if pax:
            records = b"".join(pax)
            base = bname.rsplit(b"/", 1)[-1] or b"entry"
            parent = (prefix + b"/" if prefix else b"") + bname[: len(bname) - len(base)]
            self._emit(
                self._block(
                    name=(parent + b"PaxHeaders.0/" + base)[:100],
                    typeflag=b"x",
                    mode=0o644,
                    uid=0,
                    gid=0,
                    size=len(records),
                    mtime=0,
                    linkname=b"",
                    uname=b"",
                    gname=b"",
                    devmajor=0,
                    devminor=0,
                )
            )
            self._emit(records)
            self._pad(len(records))
        full_mode = mode | (_TYPE_BITS.get(typeflag, 0) if type_bits else 0)
        self._emit(
            self._block(
                name=bname,
                typeflag=typeflag,
                mode=full_mode if _fits(full_mode, 8) else mode & 0o7777,
                uid=uid if _fits(uid, 8) else 0,
                gid=gid if _fits(gid, 8) else 0,
                size=size if _fits(size, 12) else 0,
                mtime=mtime if _fits(mtime, 12) else 0,
                linkname=blink,
                uname=b"root" if uid == 0 else b"",
                gname=b"root" if gid == 0 else b"",
                devmajor=devmajor if _fits(devmajor, 8) else 0,
                devminor=devminor if _fits(devminor, 8) else 0,
                prefix=prefix,
            )
        )
        self.entries += 1

    def data_from_fd(self, fd: int, size: int) -> None:
        """Exactly ``size`` bytes from ``fd``: zero-filled if it shrank under us, cut if it
        grew (GNU tar's "file changed as we read it", without failing the archive)."""
        remaining = size
        while remaining:
            chunk = os.read(fd, min(remaining, _COPY_CHUNK))
            if not chunk:
                break
            self._emit(chunk)
            remaining -= len(chunk)
        while remaining:
            n = min(remaining, _COPY_CHUNK)
            self._emit(b"\0" * n)
            remaining -= n
        self._pad(size)

    def close(self) -> None:
        self._emit(b"\0" * (2 * _BLOCK))

    def result(self) -> WriteResult:
        return WriteResult("sha256:" + self.hash.hexdigest(), self.size, self.entries)


def _getx(target: int | str, name: str) -> bytes | None:
    try:
        # An fd names the file itself; a name is read without following a final symlink.
        return os.getxattr(target, name, follow_symlinks=isinstance(target, int))
    except OSError as err:
        if err.errno in _NO_XATTR:
            return None
        raise


def _xattrs(target: int | str) -> list[tuple[str, bytes]]:
    try:
        names = os.listxattr(target, follow_symlinks=isinstance(target, int))
    except OSError as err:
        if err.errno in _NO_XATTR:
            return []
        raise
    out = []
    for name in sorted(names):
        if name.startswith(_SKIPPED_XATTR_PREFIXES):
            continue
        value = _getx(target, name)
        if value is not None:
            out.append((name, value))
    return out


class _Frame:
    """One dir being walked: its fd, archive prefix, sorted children and the next index."""

    __slots__ = ("fd", "i", "items", "owned", "prefix", "xattr_whiteouts")

    def __init__(
        self,
        fd: int,
        prefix: str,
        items: list[tuple[bytes, str, bool]],
        xattr_whiteouts: bool,
        owned: bool,
    ) -> None:
        self.fd = fd
        self.prefix = prefix
        self.items = items
        self.xattr_whiteouts = xattr_whiteouts
        self.owned = owned
        self.i = 0


class _Walker:
    def __init__(self, tar: _TarOut, *, layer: bool, whiteout_mtime: int | None) -> None:
        self.tar = tar
        self.layer = layer  # read whiteouts and opaque dirs (an upper dir), or a plain tree
        self.whiteout_mtime = whiteout_mtime
        self.links: dict[tuple[int, int], str] = {}

    def entry(self, parent: int, name: str, arc: str, st: os.stat_result) -> _Frame | None:
        """Archive ``parent/name`` as ``arc``. A dir's header is written and its frame
        returned: the caller walks its children (see :meth:`run`)."""
        mode = stat.S_IMODE(st.st_mode)
        uid, gid, mtime = st.st_uid, st.st_gid, int(st.st_mtime)
        fmt = stat.S_IFMT(st.st_mode)
        if fmt == stat.S_IFDIR:
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):
                    return None  # swapped or removed while we walked: not there any more
                raise
            try:
                return self.frame(fd, arc, os.fstat(fd), emit=True, owned=True)
            except BaseException:
                os.close(fd)
                raise
        if fmt == stat.S_IFREG:
            if st.st_nlink > 1:
                first = self.links.get((st.st_dev, st.st_ino))
                if first is not None:
                    self.tar.header(
                        arc, _LNK, linkname=first, mode=mode, uid=uid, gid=gid, mtime=mtime
                    )
                    return None
            try:
                fd = os.open(name, _FILE_FLAGS, dir_fd=parent)
            except OSError as err:
                if err.errno in (errno.ELOOP, errno.ENOENT, errno.ENXIO):
                    return None
                raise
            try:
                fst = os.fstat(fd)
                if not stat.S_ISREG(fst.st_mode):
                    return None  # swapped for something else under us
                self.tar.header(
                    arc,
                    _REG,
                    size=fst.st_size,
                    xattrs=_xattrs(fd),
                    mode=mode,
                    uid=uid,
                    gid=gid,
                    mtime=mtime,
                )
                self.tar.data_from_fd(fd, fst.st_size)
                if fst.st_nlink > 1:
                    self.links[(fst.st_dev, fst.st_ino)] = arc
            finally:
                os.close(fd)
            return None
        by_name = f"/proc/self/fd/{parent}/{name}"
        if fmt == stat.S_IFLNK:
            try:
                target = os.readlink(name, dir_fd=parent)
            except OSError:
                return None
            self.tar.header(
                arc,
                _SYM,
                linkname=target,
                xattrs=_xattrs(by_name),
                mode=mode,
                uid=uid,
                gid=gid,
                mtime=mtime,
            )
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            self.tar.header(
                arc,
                _CHR if fmt == stat.S_IFCHR else _BLK,
                devmajor=os.major(st.st_rdev),
                devminor=os.minor(st.st_rdev),
                xattrs=_xattrs(by_name),
                mode=mode,
                uid=uid,
                gid=gid,
                mtime=mtime,
            )
        elif fmt == stat.S_IFIFO:
            self.tar.header(
                arc, _FIFO, xattrs=_xattrs(by_name), mode=mode, uid=uid, gid=gid, mtime=mtime
            )
        # sockets (and anything else): tar cannot hold them; Docker skips them too
        return None

    def frame(self, fd: int, arc: str, st: os.stat_result, *, emit: bool, owned: bool) -> _Frame:
        """Start a dir: its header (``arc/``) unless ``emit`` is false, the opaque marker if it
        is an opaque upper dir; returns its children in order, to be walked."""
        prefix = arc + "/" if arc else ""
        if emit:
            self.tar.header(
                prefix,
                _DIR,
                mode=stat.S_IMODE(st.st_mode),
                uid=st.st_uid,
                gid=st.st_gid,
                mtime=int(st.st_mtime),
                xattrs=_xattrs(fd),
            )
        names = os.listdir(fd)
        opaque = False
        xattr_whiteouts = False
        if self.layer:
            value = next((v for n in _OPAQUE_XATTRS if (v := _getx(fd, n)) is not None), None)
            opaque = value == b"y" or OCI_OPAQUE_MARKER in names
            xattr_whiteouts = value == b"x"
        # (sort key, name, whiteout?) -- a whiteout sorts under the name it deletes
        items: list[tuple[bytes, str, bool]] = []
        wh_names: set[str] = set()
        for name in names:
            if self.layer and name.startswith(OCI_WHITEOUT_PREFIX):
                try:
                    target = whiteout_target(name)
                except InvalidArgument:
                    continue  # ".wh." / ".wh..": names no whiteout can mean
                if target is not None:
                    wh_names.add(target)
                continue  # markers (opaque, AUFS, fuse-overlayfs .wh..opq) are not content
            items.append((os.fsencode(name), name, False))
        present = {name for _, name, _ in items}
        items.extend((os.fsencode(t), t, True) for t in wh_names - present)
        items.sort()
        if opaque and arc:
            self.tar.header(
                prefix + OCI_OPAQUE_MARKER,
                _REG,
                mode=stat.S_IMODE(st.st_mode),
                uid=st.st_uid,
                gid=st.st_gid,
                mtime=0,
                type_bits=False,
            )
        return _Frame(fd, prefix, items, xattr_whiteouts, owned)

    def child(self, fr: _Frame, name: str, is_wh: bool) -> _Frame | None:
        fd, arc = fr.fd, fr.prefix + name
        if is_wh:
            self.whiteout(fd, name, arc, None)
            return None
        try:
            cst = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if self.layer and (
            is_chardev_whiteout(cst)
            or (
                fr.xattr_whiteouts
                and stat.S_ISREG(cst.st_mode)
                and cst.st_size == 0
                and any(
                    _getx(f"/proc/self/fd/{fd}/{name}", x) is not None for x in _WHITEOUT_XATTRS
                )
            )
        ):
            self.whiteout(fd, name, arc, cst)
            return None
        return self.entry(fd, name, arc, cst)

    def run(self, first: _Frame | None) -> None:
        """Walk depth-first, children in order, with an explicit stack (no recursion limit
        on deep trees; one open fd per level)."""
        stack = [first] if first is not None else []
        try:
            while stack:
                fr = stack[-1]
                if fr.i == len(fr.items):
                    stack.pop()
                    if fr.owned:
                        os.close(fr.fd)
                    continue
                _, name, is_wh = fr.items[fr.i]
                fr.i += 1
                sub = self.child(fr, name, is_wh)
                if sub is not None:
                    stack.append(sub)
        finally:
            for fr in stack:
                if fr.owned:
                    os.close(fr.fd)

    def dir(self, fd: int, arc: str, st: os.stat_result, *, emit: bool) -> None:
        """Archive the open dir ``fd`` as ``arc`` (header unless ``emit`` is false) and all
        below it. ``fd`` stays the caller's."""
        self.run(self.frame(fd, arc, st, emit=emit, owned=False))

    def whiteout(self, parent: int, name: str, arc: str, st: os.stat_result | None) -> None:
        head, _, base = arc.rpartition("/")
        marker = f"{head}/{OCI_WHITEOUT_PREFIX}{base}" if head else OCI_WHITEOUT_PREFIX + base
        if self.whiteout_mtime is not None:
            mtime = self.whiteout_mtime
        elif st is not None:
            mtime = int(st.st_mtime)
        else:
            try:
                wst = os.stat(OCI_WHITEOUT_PREFIX + name, dir_fd=parent, follow_symlinks=False)
                mtime = int(wst.st_mtime)
            except OSError:
                mtime = 0
        self.tar.header(marker, _REG, mode=0o600, uid=0, gid=0, mtime=mtime, type_bits=False)


def write_layer(upper: Path, out: BinaryIO, *, whiteout_mtime: float | None = None) -> WriteResult:
    """Write the upper dir ``upper`` to ``out`` as an OCI layer tar (module docstring).

    ``whiteout_mtime`` (seconds) stamps every ``.wh.`` entry, as Docker stamps them with the
    commit time; None keeps each whiteout's own mtime. Returns the tar's diff ID and size.
    The root of ``upper`` is not an entry (Docker's layers have no ``./``).
    """
    tar = _TarOut(out)
    walker = _Walker(
        tar, layer=True, whiteout_mtime=None if whiteout_mtime is None else int(whiteout_mtime)
    )
    fd = open_root(upper)
    try:
        walker.dir(fd, "", os.fstat(fd), emit=False)
    finally:
        os.close(fd)
    tar.close()
    return tar.result()


def write_tree(
    src: str | Path,
    out: BinaryIO,
    *,
    root: Path | None = None,
    name: str | None = None,
    follow: bool = False,
) -> WriteResult:
    """Write the tree at ``src`` to ``out`` as a plain tar (``docker export``, ``docker cp``).

    ``src`` is a host path, or with ``root`` a path *inside* ``root`` resolved as the container
    sees it (symlinks in intermediate components resolve inside ``root``; the last one is
    followed only with ``follow`` or a trailing ``/``, like ``docker cp``'s ``-L``).
    ``name`` is the archive name of ``src``: by default its base name (``keep`` gives
    ``keep/``, ``keep/a.txt``), ``"."`` when ``src`` ends in ``/.`` (``./``, ``./a.txt``), and
    ``""`` archives only the contents, without a root entry (``export``). A symlink is archived
    as a symlink unless followed; whiteouts are not interpreted (a merged tree has none).
    NotFound when ``src`` does not exist.
    """
    text = str(src)
    contents = text.endswith("/.") or text in (".", "/")
    follow_last = follow or text.endswith("/") or contents
    if root is not None:
        resolved = resolve_in_root(root, text, follow_last=follow_last)
        rel = resolved.relative_to(root)
        parent_rel, base = str(rel.parent), rel.name
        base_fd = open_root(root)
        try:
            parent = open_dir_in_root(base_fd, "" if parent_rel == "." else parent_rel)
        finally:
            os.close(base_fd)
    else:
        path = Path(os.path.realpath(text)) if follow_last else Path(os.path.abspath(text))
        parent_path, base = path.parent, path.name
        try:
            parent = os.open(parent_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError as err:
            raise NotFound(f"{parent_path} does not exist") from err
    if name is None:
        name = "." if contents else (base or ".")
    tar = _TarOut(out)
    walker = _Walker(tar, layer=False, whiteout_mtime=None)
    try:
        if not base:  # the root itself
            st = os.fstat(parent)
            walker.dir(parent, name.rstrip("/"), st, emit=bool(name))
        else:
            try:
                st = os.stat(base, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError as err:
                raise NotFound(f"{text} does not exist") from err
            if name == "" and stat.S_ISDIR(st.st_mode):
                fd = os.open(base, _DIR_FLAGS, dir_fd=parent)
                try:
                    walker.dir(fd, "", os.fstat(fd), emit=False)
                finally:
                    os.close(fd)
            elif name == "":
                raise InvalidArgument(f"{text} is not a directory; give it an archive name")
            else:
                walker.run(walker.entry(parent, base, name.rstrip("/") or ".", st))
    except OSError as err:
        raise FailedPrecondition(f"cannot archive {text}: {err.strerror or err}") from err
    finally:
        os.close(parent)
    tar.close()
    return tar.result()
