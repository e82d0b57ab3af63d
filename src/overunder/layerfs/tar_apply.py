"""Unpack a layer tar (gzip, zstd or plain) into a layer dir, safely and in one pass.

The stream is read once, as it arrives (:mod:`overunder.layerfs.tarstream`, a strict streaming
reader; never an ``extractall``), and hashed after decompression: the diff ID covers the whole
tar to its last byte, trailing zero blocks included. File data goes from the decompressed
chunk to ``write(2)`` without copies; memory stays at a few MiB whatever the layer size.

**Hostile input.** Every name is cleaned (``./`` stripped; absolute names and ``..`` components
refused). Every parent dir is opened from the layer root one component at a time with
``O_NOFOLLOW`` on dir fds (:func:`overunder.layerfs.safepath.open_dir_nofollow`), so a symlink
(planted earlier in this layer, present in ``dest`` from a lower layer, or swapped in during the
unpack) is never written through: **an entry whose parent path holds a symlink fails** with
InvalidArgument naming the entry and the symlink, and nothing is written for it. (Docker and
containerd instead resolve such a path inside the layer root; a well-formed layer never needs
either, since tar writers do not descend symlinks.) Hard links must point at a non-directory
already extracted by this same tar. Device nodes are made only by root (``devices``). Symlink
targets are data, written verbatim and never resolved here.

**Whiteouts** (OCI image-spec ``layer.md``): ``<dir>/.wh.<name>`` becomes an overlay whiteout
via :func:`overunder.layerfs.whiteout.make_whiteout` (char 0/0, or a ``.wh.`` file for the
rootless style); ``<dir>/.wh..wh..opq`` marks ``<dir>`` opaque (``<ns>opaque = "y"``). Both
are applied in a final pass, so entry order does not matter, and markers are never extracted.
Whiteouts and opaque markers only hide *lower* layers: a whiteout naming a file this tar also
creates is dropped, and one naming a dir this tar creates makes that dir opaque (the lower dir
is gone, this layer's content stays); an opaque marker never hides entries of its own layer.
``.wh.``, ``.wh..`` and ``.wh...`` are refused, as are markers that are not regular files;
AUFS metadata (``.wh..wh.plnk`` and friends) is skipped with everything below it.

With ``flatten=True`` the tar is applied onto a tree that already holds the lower layers (an
export, a plain copy): whiteouts delete the lower entry, and an opaque marker deletes the lower
content of its dir, leaving entries of this layer alone.

**Duplicates**: the later entry wins, like tar, Docker (``archive.createTarFile``) and
containerd (``applyNaive``): a dir over a dir merges (the later metadata wins); anything else
replaces what is there, a directory with its whole subtree.

**Metadata**: mode including setuid/setgid/sticky, uid/gid (when running as root; a rootless
unpack keeps the caller's ids), mtime (dirs in a final pass, each after everything below
it), xattrs from PAX ``SCHILY.xattr.*`` except overlay ones (``trusted.overlay.*``,
``user.overlay.*``, ``user.fuseoverlayfs.*``): a layer must not forge overlay metadata. Setuid
files are kept as data: the layer store is root-only (0700), so no unprivileged user can run
them from there; only a container sees them.

A char device 0/0 *in the tar* is created like any device node (root only), and the kernel
then reads it as a whiteout, as it does for Docker: it hides no more than a ``.wh.`` entry.

Gaps: AUFS hard links into ``.wh..wh.plnk`` are not resolved (such a hard link fails as
missing); GNU sparse members are refused; uid/gid are not remapped for rootless stores.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from overunder.errors import (
    AlreadyExists,
    FailedPrecondition,
    IntegrityError,
    InvalidArgument,
    OverunderError,
    Unsupported,
)
from overunder.layerfs.compression import DEFAULT_MAX_BYTES, LayerReader
from overunder.layerfs.safepath import open_dir_nofollow, open_root
from overunder.layerfs.tarstream import BLOCKDEV, CHARDEV, FIFO, Member, TarStream, TruncatedTar
from overunder.layerfs.whiteout import (
    OCI_OPAQUE_MARKER,
    OCI_WHITEOUT_PREFIX,
    WhiteoutStyle,
    XattrNS,
    is_chardev_whiteout,
    make_whiteout,
    whiteout_target,
)

__all__ = ["ApplyResult", "apply_layer", "verify_diff_id"]

_AUFS_META_PREFIX: Final = ".wh..wh."
_FORBIDDEN_XATTR_PREFIXES: Final = ("trusted.overlay.", "user.overlay.", "user.fuseoverlayfs.")
_COPY_CHUNK: Final = 1 << 20
_CACHE_LIMIT: Final = 128
_READAHEAD_FROM: Final = 8 << 20
_FILE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class ApplyResult:
    """What an unpack produced: the diff ID (``sha256:`` of the uncompressed tar, to its end),
    the uncompressed size in bytes, and the number of tar members read."""

    diff_id: str
    size: int
    entries: int


def verify_diff_id(result: ApplyResult, expected: str, *, layer: str) -> None:
    """IntegrityError unless the unpacked tar hashed to ``expected`` (the image config's
    ``rootfs.diff_ids`` entry). The caller then discards the layer dir."""
    if result.diff_id != expected:
        raise IntegrityError(
            f"layer {layer}: uncompressed content has diff ID {result.diff_id}, "
            f"but the image config says {expected}",
            hint="the layer blob does not belong to this image, or was altered; "
            "delete it and pull or load the image again",
        )


def _current_umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _clean_name(raw: str) -> list[str]:
    """Components of an entry name; ValueError with the reason when it is not acceptable."""
    if raw.startswith("/"):
        raise ValueError("absolute names are not allowed in a layer")
    if "\0" in raw:
        raise ValueError("names may not contain NUL bytes")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError("'..' components are not allowed in a layer")
    return parts


class _Applier:
    def __init__(
        self,
        dest: Path,
        reader: LayerReader,
        *,
        style: WhiteoutStyle,
        ns: XattrNS,
        devices: bool,
        flatten: bool,
    ) -> None:
        self.dest = dest
        self.reader = reader
        self.layer = reader.name
        self.style = style
        self.ns = ns
        self.devices = devices
        self.flatten = flatten
        self.root_fd = open_root(dest)
        self.is_root = os.geteuid() == 0
        self.umask = _current_umask()
        self.mine: set[str] = set()  # paths this tar created (whiteouts never hide them)
        self.mine_parents: set[str] = set()  # dirs holding entries of this tar
        self.whiteouts: dict[str, str] = {}  # path -> the marker entry's name (final pass)
        self.dir_meta: dict[str, tuple[int, int]] = {}  # path -> (mode, mtime_ns), final pass
        self.opaque: dict[str, str] = {}  # dir path -> the marker entry's name
        self.cache: dict[str, int] = {}

    # -- errors ------------------------------------------------------------------------------

    def _bad(self, m: Member, why: str, hint: str | None = None) -> InvalidArgument:
        return InvalidArgument(
            f"layer {self.layer}: entry {m.name!r}: {why}",
            hint=hint
            or "the layer archive is malformed or hostile; nothing outside "
            f"{self.dest} was touched",
        )

    def _wrap(self, m: Member, err: OverunderError) -> OverunderError:
        new = type(err)(f"layer {self.layer}: entry {m.name!r}: {err.message}", hint=err.hint)
        new.__cause__ = err
        return new

    def _os_error(self, m: Member, rel: str, err: OSError) -> FailedPrecondition:
        return FailedPrecondition(
            f"layer {self.layer}: entry {m.name!r}: cannot create {self.dest / rel}: "
            f"{err.strerror or err}",
            hint="check free space and that the layer dir is writable",
        )

    # -- dir fds -----------------------------------------------------------------------------

    def close(self) -> None:
        for fd in self.cache.values():
            os.close(fd)
        self.cache.clear()
        os.close(self.root_fd)

    def _forget(self, rel: str) -> None:
        """Drop cached fds of ``rel`` and below (it is being removed or replaced)."""
        prefix = rel + "/"
        for key in [k for k in self.cache if k == rel or k.startswith(prefix)]:
            os.close(self.cache.pop(key))

    def dir_fd(self, rel: str, *, create: bool = True) -> int:
        """An fd for the dir ``rel`` (no symlink on the way), created when missing.

        Cached, least recently used evicted: the fd returned by one call stays open across the
        next call (callers rely on holding a parent while opening a child)."""
        if not rel:
            return self.root_fd
        fd = self.cache.pop(rel, None)
        if fd is not None:
            self.cache[rel] = fd  # most recently used goes last
            return fd
        base = rel
        while True:
            base = base.rpartition("/")[0]
            if not base or base in self.cache:
                break
        start = self.cache[base] if base else self.root_fd
        todo = rel[len(base) + 1 :] if base else rel
        created: list[str] = []
        fd = open_dir_nofollow(start, todo.split("/"), create=create, created=created)
        for c in created:
            self.mine.add(f"{base}/{c}" if base else c)
        if len(self.cache) >= _CACHE_LIMIT:
            os.close(self.cache.pop(next(iter(self.cache))))
        self.cache[rel] = fd
        return fd

    def _remove(self, parent: int, name: str, rel: str, st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode):
            import shutil  # rarely needed: keep it off the import path of every unpack

            self._forget(rel)
            # fd-based rmtree: never follows a symlink found inside the tree.
            shutil.rmtree(name, dir_fd=parent)
        else:
            os.unlink(name, dir_fd=parent)

    # -- entries -----------------------------------------------------------------------------

    def apply(self, m: Member, ts: TarStream) -> None:
        try:
            parts = _clean_name(m.name)
        except ValueError as err:
            raise self._bad(m, str(err)) from None
        for comp in parts[:-1]:
            if comp.startswith(_AUFS_META_PREFIX):
                return  # inside AUFS metadata (.wh..wh.plnk/...): not content
            if comp.startswith(OCI_WHITEOUT_PREFIX):
                raise self._bad(m, f"a whiteout marker ({comp!r}) cannot be a directory")
        if not parts:
            if not m.isdir():
                raise self._bad(m, "it would change the type of the layer root")
            self._dir_metadata(m, self.root_fd, "")
            return
        base = parts[-1]
        parent_rel = "/".join(parts[:-1])
        rel = "/".join(parts)
        if base.startswith(OCI_WHITEOUT_PREFIX):
            self._marker(m, parent_rel, base)
            return
        try:
            parent = self.dir_fd(parent_rel)
        except OverunderError as err:
            raise self._wrap(m, err) from None
        except OSError as err:
            raise self._os_error(m, parent_rel, err) from None
        try:
            self._create(m, ts, parent, base, rel)
        except OSError as err:
            raise self._os_error(m, rel, err) from None
        self.mine.add(rel)
        p = parent_rel
        while p and p not in self.mine_parents:
            self.mine_parents.add(p)
            p = p.rpartition("/")[0]

    def _marker(self, m: Member, parent_rel: str, base: str) -> None:
        if base == OCI_OPAQUE_MARKER:
            if not m.isreg():
                raise self._bad(m, "the opaque marker must be a regular file")
            if self.flatten:
                self._flatten_opaque(m, parent_rel)
            else:
                self.opaque.setdefault(parent_rel, m.name)
            return
        if base.startswith(_AUFS_META_PREFIX):
            return  # .wh..wh.plnk, .wh..wh.aufs, .wh..wh.orph: AUFS bookkeeping
        try:
            target = whiteout_target(base)
        except InvalidArgument as err:
            raise self._bad(m, err.message) from None
        if target is None:  # pragma: no cover - whiteout_target's other None cases are above
            return
        if not m.isreg():
            raise self._bad(m, "a whiteout marker must be a regular file")
        rel = f"{parent_rel}/{target}" if parent_rel else target
        if self.flatten:
            self._flatten_whiteout(m, parent_rel, target, rel)
        else:
            # Deferred to the final pass, when this layer's own entries are all known.
            self.whiteouts.setdefault(rel, m.name)

    def _flatten_whiteout(self, m: Member, parent_rel: str, target: str, rel: str) -> None:
        try:
            parent = self.dir_fd(parent_rel, create=False)
        except OverunderError as err:
            if err.category == "not-found":
                return  # nothing below to delete (apptainer/singularity#1261: not an error)
            raise self._wrap(m, err) from None
        try:
            try:
                st = os.stat(target, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                return
            if stat.S_ISDIR(st.st_mode) and (rel in self.mine or rel in self.mine_parents):
                # The lower dir goes; what this layer put in it stays (as if opaque).
                fd = self.dir_fd(rel, create=False)
                self._prune(fd, rel)
            elif rel not in self.mine:  # a whiteout never hides this layer's own entry
                self._remove(parent, target, rel, st)
        except OverunderError as err:
            raise self._wrap(m, err) from None
        except OSError as err:
            raise self._os_error(m, rel, err) from None

    def _layer_whiteout(self, rel: str, entry: str) -> None:
        """Final pass: the overlay whiteout for ``rel`` (an entry of this layer is never hidden;
        a dir of this layer that a whiteout names becomes opaque: the lower one is gone)."""
        parent_rel, _, target = rel.rpartition("/")
        if rel in self.mine or rel in self.mine_parents:
            try:
                self.dir_fd(rel, create=False)
            except (OverunderError, OSError):
                return  # a non-dir of this layer: it hides the lower entry by itself
            self.opaque.setdefault(rel, entry)
            return
        try:
            parent = self.dir_fd(parent_rel, create=True)
            try:
                st: os.stat_result | None = os.stat(target, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None:
                if self.style is WhiteoutStyle.CHARDEV and is_chardev_whiteout(st):
                    return
                # dest was not empty: the whiteout replaces what is there.
                self._remove(parent, target, rel, st)
            with contextlib.suppress(AlreadyExists):
                make_whiteout(Path(f"/proc/self/fd/{parent}"), target, style=self.style)
        except OverunderError as err:
            raise type(err)(
                f"layer {self.layer}: entry {entry!r}: {err.message}", hint=err.hint
            ) from None
        except OSError as err:
            raise FailedPrecondition(
                f"layer {self.layer}: entry {entry!r}: cannot make a whiteout at "
                f"{self.dest / rel}: {err.strerror or err}",
            ) from None

    def _flatten_opaque(self, m: Member, rel: str) -> None:
        """Delete what the lower layers put under ``rel``; keep this layer's entries."""
        try:
            fd = self.dir_fd(rel, create=True)
        except OverunderError as err:
            raise self._wrap(m, err) from None
        try:
            self._prune(fd, rel)
        except OSError as err:
            raise self._os_error(m, rel, err) from None

    def _prune(self, fd: int, rel: str) -> None:
        """Remove everything under the dir ``rel`` (open as ``fd``) that this layer did not
        create, keeping the dirs that hold this layer's entries. Iterative: a deep tree must
        not exhaust the stack, and dirs are reopened one at a time so a wide one cannot
        exhaust the fds."""
        todo = [rel]
        while todo:
            cur = todo.pop()
            dfd = (
                os.dup(fd)
                if cur == rel
                else open_dir_nofollow(self.root_fd, cur.split("/"), create=False)
            )
            try:
                for name in os.listdir(dfd):
                    child = f"{cur}/{name}" if cur else name
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    if child in self.mine or child in self.mine_parents:
                        if stat.S_ISDIR(st.st_mode):
                            todo.append(child)
                    else:
                        self._remove(dfd, name, child, st)
            finally:
                os.close(dfd)

    def _replace_existing(self, parent: int, name: str, rel: str, want_dir: bool) -> bool:
        """Make room for a new entry; True when an existing dir should be merged instead."""
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if want_dir and stat.S_ISDIR(st.st_mode):
            return True
        self._remove(parent, name, rel, st)
        return False

    def _create(self, m: Member, ts: TarStream, parent: int, name: str, rel: str) -> None:
        mode = m.mode & 0o7777
        if m.isreg():
            while True:
                try:
                    fd = os.open(name, _FILE_FLAGS, mode & 0o777, dir_fd=parent)
                    break
                except FileExistsError:
                    self._replace_existing(parent, name, rel, False)
            try:
                self._write_data(m, ts, fd)
                if self.is_root:
                    os.fchown(fd, m.uid, m.gid)
                self._set_xattrs(m, fd)
                # chown clears setuid/setgid, and umask trimmed the create mode: fix both.
                if mode & 0o7000 or mode & self.umask:
                    os.fchmod(fd, mode)
                os.utime(fd, ns=(m.mtime_ns, m.mtime_ns))
            finally:
                os.close(fd)
            return
        if m.isdir():
            merge = False
            try:
                os.mkdir(name, 0o700, dir_fd=parent)
            except FileExistsError:
                merge = self._replace_existing(parent, name, rel, True)
                if not merge:
                    os.mkdir(name, 0o700, dir_fd=parent)
            fd = self.dir_fd(rel)
            self._dir_metadata(m, fd, rel)
            return
        if m.issym():
            if "\0" in m.linkname:
                raise self._bad(m, "a symlink target may not contain NUL bytes")
            self._make(parent, name, rel, lambda: os.symlink(m.linkname, name, dir_fd=parent))
        elif m.islnk():
            self._hardlink(m, parent, name, rel)
            return  # a hard link shares its target's inode and metadata
        elif m.type in (CHARDEV, BLOCKDEV):
            if not self.devices:
                raise Unsupported(
                    f"layer {self.layer}: entry {m.name!r}: refusing to create a device node "
                    f"({'char' if m.type == CHARDEV else 'block'} {m.devmajor}:{m.devminor}) "
                    "without root",
                    hint="unpack as root, or use an image without device nodes in its layers",
                )
            kind = stat.S_IFCHR if m.type == CHARDEV else stat.S_IFBLK
            dev = os.makedev(m.devmajor, m.devminor)
            self._make(parent, name, rel, lambda: os.mknod(name, kind | 0o600, dev, dir_fd=parent))
        elif m.type == FIFO:
            self._make(parent, name, rel, lambda: os.mkfifo(name, 0o600, dir_fd=parent))
        else:
            raise self._bad(m, f"unsupported tar entry type {m.type!r}")
        if self.is_root:
            os.chown(name, m.uid, m.gid, dir_fd=parent, follow_symlinks=False)
        if not m.issym():
            os.chmod(name, mode, dir_fd=parent)
        self._set_xattrs_by_name(m, parent, name)
        os.utime(name, ns=(m.mtime_ns, m.mtime_ns), dir_fd=parent, follow_symlinks=False)

    def _make(self, parent: int, name: str, rel: str, make: Callable[[], None]) -> None:
        while True:
            try:
                make()
                return
            except FileExistsError:
                self._replace_existing(parent, name, rel, False)

    def _hardlink(self, m: Member, parent: int, name: str, rel: str) -> None:
        try:
            target_parts = _clean_name(m.linkname)
        except ValueError as err:
            raise self._bad(m, f"hard link target {m.linkname!r}: {err}") from None
        target = "/".join(target_parts)
        if not target_parts or target not in self.mine:
            raise self._bad(
                m,
                f"hard link target {m.linkname!r} is not an entry of this layer "
                "(missing, or after the link)",
            )
        if target == rel:
            return  # a link to itself: the file is already there
        # Not from the cache: opening it there could evict (close) ``parent``.
        try:
            src_parent = open_dir_nofollow(self.root_fd, target_parts[:-1], create=False)
        except OverunderError as err:
            raise self._wrap(m, err) from None
        src = target_parts[-1]
        try:
            try:
                st = os.stat(src, dir_fd=src_parent, follow_symlinks=False)
            except FileNotFoundError:
                raise self._bad(m, f"hard link target {m.linkname!r} no longer exists") from None
            if stat.S_ISDIR(st.st_mode):
                raise self._bad(m, f"hard link target {m.linkname!r} is a directory")
            self._make(
                parent,
                name,
                rel,
                lambda: os.link(
                    src, name, src_dir_fd=src_parent, dst_dir_fd=parent, follow_symlinks=False
                ),
            )
        finally:
            os.close(src_parent)

    def _write_data(self, m: Member, ts: TarStream, fd: int) -> None:
        if m.size >= _READAHEAD_FROM:
            # A big file ahead: inflate on a thread while we write. Not for small files,
            # where handing the GIL back and forth costs more than the overlap gains.
            self.reader.start_readahead()
        try:
            for chunk in ts.data():
                view = chunk
                while view:
                    view = view[os.write(fd, view) :]
            ts.pad()
        except TruncatedTar as err:
            raise IntegrityError(
                f"layer {self.layer}: the tar ends inside entry {m.name!r}", hint=err.hint
            ) from None

    def _xattrs(self, m: Member) -> list[tuple[str, bytes]]:
        # a layer must not forge overlay metadata (whiteouts, redirects, opaque flags)
        return [
            (k, v)
            for k, v in m.xattrs
            if not k.startswith(_FORBIDDEN_XATTR_PREFIXES) and k and "\0" not in k
        ]

    def _setx(self, target: int | str, name: str, value: bytes) -> None:
        try:
            os.setxattr(target, name, value, follow_symlinks=isinstance(target, int))
        except OSError as err:
            # A filesystem or user that cannot hold this namespace: the data still unpacks,
            # as Docker does for everything but security.capability.
            if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP) or (
                err.errno == errno.EPERM and not self.is_root
            ):
                return
            raise

    def _set_xattrs(self, m: Member, fd: int) -> None:
        for name, value in self._xattrs(m):
            self._setx(fd, name, value)

    def _set_xattrs_by_name(self, m: Member, parent: int, name: str) -> None:
        for key, value in self._xattrs(m):
            self._setx(f"/proc/self/fd/{parent}/{name}", key, value)

    def _dir_metadata(self, m: Member, fd: int, rel: str) -> None:
        if self.is_root:
            os.fchown(fd, m.uid, m.gid)
        self._set_xattrs(m, fd)
        # mode and mtime wait for the final pass: a 0500 dir must still take its children,
        # and every child created bumps the dir's mtime.
        self.dir_meta[rel] = (m.mode & 0o7777, m.mtime_ns)

    # -- final pass --------------------------------------------------------------------------

    def finish(self) -> None:
        for rel, entry in self.whiteouts.items():
            self._layer_whiteout(rel, entry)
        for rel, entry in self.opaque.items():
            try:
                fd = self.dir_fd(rel, create=True)
                os.setxattr(fd, f"{self.ns.value}opaque", b"y")
            except OverunderError as err:
                raise InvalidArgument(
                    f"layer {self.layer}: entry {entry!r}: {err.message}", hint=err.hint
                ) from None
            except OSError as err:
                raise Unsupported(
                    f"layer {self.layer}: entry {entry!r}: cannot set {self.ns.value}opaque "
                    f"on {self.dest / rel}: {err.strerror}",
                    hint="trusted.* needs root; use the user.overlay. namespace (userxattr)",
                ) from None
        self._dir_metadata_pass()

    def _dir_metadata_pass(self) -> None:
        """Dir modes and mtimes, each dir after everything below it: a depth-first walk over
        the recorded dirs with a stack of open fds (linear in the number of dirs, however deep
        the tree)."""
        stack: list[tuple[str, int]] = [("", os.dup(self.root_fd))]

        def leave() -> None:
            rel, fd = stack.pop()
            try:
                meta = self.dir_meta.get(rel)
                if meta is not None:
                    os.fchmod(fd, meta[0])
                    os.utime(fd, ns=(meta[1], meta[1]))
            finally:
                os.close(fd)

        try:
            for rel in sorted(self.dir_meta, key=lambda r: r.split("/") if r else []):
                if not rel:
                    continue
                while stack[-1][0] and not rel.startswith(stack[-1][0] + "/"):
                    leave()
                top = stack[-1][0]
                for comp in (rel[len(top) + 1 :] if top else rel).split("/"):
                    try:
                        fd = os.open(comp, _DIR_FLAGS, dir_fd=stack[-1][1])
                    except OSError:
                        break  # replaced later in the tar by a non-dir: nothing to stamp
                    path = f"{stack[-1][0]}/{comp}" if stack[-1][0] else comp
                    stack.append((path, fd))
            while stack:
                leave()
        finally:
            for _, fd in stack:
                os.close(fd)


def apply_layer(
    stream: BinaryIO,
    dest: Path,
    *,
    whiteout_style: WhiteoutStyle = WhiteoutStyle.CHARDEV,
    xattr_ns: XattrNS = XattrNS.TRUSTED,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    name: str | None = None,
    devices: bool | None = None,
    flatten: bool = False,
) -> ApplyResult:
    """Unpack the layer tar ``stream`` (gzip, zstd or plain: sniffed) into the dir ``dest``.

    ``dest`` must exist; normally it is empty (one layer dir of the store). ``name`` names the
    layer in errors (default: the stream's file name). ``devices`` allows char/block device
    nodes (default: when running as root). ``flatten`` applies onto a tree holding the lower
    layers (see the module docstring). The result's diff ID is *not* checked here: pass it to
    :func:`verify_diff_id`. On error ``dest`` holds a partial layer: the caller discards it.

    Errors: InvalidArgument (a hostile or malformed entry, or more than ``max_bytes``
    uncompressed), IntegrityError (corrupt or truncated compression or tar), Unsupported (a
    device node without root, a whiteout format this user cannot make), FailedPrecondition
    (the filesystem refused a write).
    """
    label = name or str(getattr(stream, "name", "") or "stream")
    reader = LayerReader(stream, name=label, max_bytes=max_bytes)
    applier = _Applier(
        dest,
        reader,
        style=whiteout_style,
        ns=xattr_ns,
        devices=os.geteuid() == 0 if devices is None else devices,
        flatten=flatten,
    )
    entries = 0
    stream_ = TarStream(reader)
    try:
        while (member := stream_.next()) is not None:
            entries += 1
            applier.apply(member, stream_)
        reader.drain()
        applier.finish()
    finally:
        reader.close()
        applier.close()
    return ApplyResult(diff_id=reader.diff_id, size=reader.size, entries=entries)
