"""Layer dirs read fast, for the explorer views (``layers``, ``explain``, ``tree``, ``cat``).

:func:`overunder.layerfs.reader.read_layer` reads everything a layer can hold (every xattr, a
content hash per file) because ``diff`` and ``commit`` need it. The explorer does not, and it
must answer on images of tens of thousands of files in well under a second, so this reader
does less: one ``scandir`` per dir, one ``lstat`` per entry, xattrs **only on directories**
(opaque and redirect markers) and, inside ``opaque="x"`` dirs, on zero-size files (xattr
whiteouts). Whiteouts and opaque dirs come out exactly as ``read_layer`` has them (char 0/0,
``.wh.<name>`` files, xattr whiteouts, ``.wh..wh..opq``, opaque xattrs in the ``trusted.``
and ``user.`` namespaces); the differential test in ``tests/explain`` holds it to that.

Gaps, on purpose: ``Entry.data`` is None (no hashing) and ``Meta.xattrs`` is empty (files'
own xattrs are not read), so two entries that differ only in content of the same size, or
only in xattrs, look alike here.

:func:`probe` reads only the entries on one path (the path and its ancestors) in each layer:
``explain`` and ``cat`` need nothing else, whatever the size of the image.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from overunder.errors import FailedPrecondition, InvalidArgument, NotFound
from overunder.layerfs.whiteout import OCI_OPAQUE_MARKER, OCI_WHITEOUT_PREFIX, whiteout_target
from overunder.semantics import WHITEOUT, Entry, Kind, Layer, Meta, join

__all__ = ["NO_META", "ScannedLayer", "probe", "scan_layer"]

_OPAQUE_NAMES = ("trusted.overlay.opaque", "user.overlay.opaque", "user.fuseoverlayfs.opaque")
_WHITEOUT_NAMES = ("trusted.overlay.whiteout", "user.overlay.whiteout")
_REDIRECT_NAMES = ("trusted.overlay.redirect", "user.overlay.redirect")
_NO_XATTRS = frozenset(
    {errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.ENODATA, errno.EINVAL}
)

FORM_CHARDEV = "char 0/0"
FORM_WH_FILE = ".wh. file"
FORM_XATTR = "xattr"


@dataclass(frozen=True, slots=True)
class ScannedLayer:
    """One layer dir read into semantics terms, with the on-disk form of each whiteout
    (``char 0/0``, ``.wh. file`` or ``xattr``) for the views that show it."""

    layer: Layer
    whiteout_forms: dict[str, str] = field(default_factory=dict)


def _xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as err:
        if err.errno in _NO_XATTRS:
            return {}
        raise
    out: dict[str, bytes] = {}
    for name in names:
        if name in _OPAQUE_NAMES or name in _REDIRECT_NAMES or name in _WHITEOUT_NAMES:
            try:
                out[name] = os.getxattr(path, name, follow_symlinks=False)
            except OSError as err:
                if err.errno not in _NO_XATTRS:
                    raise
    return out


def _first(values: dict[str, bytes], names: Sequence[str]) -> bytes | None:
    for name in names:
        if name in values:
            return values[name]
    return None


_METAS: dict[tuple[int, int, int, int], Meta] = {}


def _meta(st: os.stat_result) -> Meta:
    # Image layers share a handful of (mode, owner, mtime) combinations across thousands of
    # files: one frozen Meta each saves most of the object churn.
    key = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns)
    meta = _METAS.get(key)
    if meta is None:
        if len(_METAS) > 65536:
            _METAS.clear()
        meta = _METAS[key] = Meta(*key)
    return meta


NO_META = Meta(0)
"""The metadata of entries read with ``meta=False`` (a placeholder: mode 0, owner 0:0)."""


def _dir_entry(abspath: str, st: os.stat_result | None) -> tuple[Entry, bytes | None]:
    """A dir's entry and its raw opaque value (``b"x"`` means: holds xattr whiteouts)."""
    values = _xattrs(abspath)
    opq = _first(values, _OPAQUE_NAMES)
    redirect = _first(values, _REDIRECT_NAMES)
    entry = Entry(
        Kind.DIR,
        _meta(st) if st is not None else NO_META,
        opaque=opq == b"y",
        redirect=os.fsdecode(redirect) if redirect is not None else None,
    )
    return entry, opq


def _other_entry(abspath: str, st: os.stat_result, parent_opq: bytes | None) -> tuple[Entry, str]:
    """A non-dir's entry, and the whiteout form when it is a whiteout (else "")."""
    mode = st.st_mode
    link_id = f"{st.st_dev}:{st.st_ino}" if st.st_nlink > 1 else None
    if stat.S_ISREG(mode):
        if (
            parent_opq == b"x"
            and st.st_size == 0
            and _first(_xattrs(abspath), _WHITEOUT_NAMES) is not None
        ):
            return WHITEOUT, FORM_XATTR
        return Entry(Kind.FILE, _meta(st), size=st.st_size, link_id=link_id), ""
    if stat.S_ISLNK(mode):
        target = os.readlink(abspath)
        return Entry(Kind.SYMLINK, _meta(st), size=st.st_size, target=target), ""
    if stat.S_ISCHR(mode) and st.st_rdev == 0:
        return WHITEOUT, FORM_CHARDEV
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = Kind.CHARDEV if stat.S_ISCHR(mode) else Kind.BLOCKDEV
        rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
        return Entry(kind, _meta(st), rdev=rdev, link_id=link_id), ""
    kind = Kind.FIFO if stat.S_ISFIFO(mode) else Kind.SOCKET
    return Entry(kind, _meta(st), link_id=link_id), ""


def _opaque(entry: Entry) -> Entry:
    return Entry(entry.kind, entry.meta, opaque=True, redirect=entry.redirect)


def _walk(
    top: str,
    rel: str,
    root_opq: bytes | None,
    out: dict[str, Entry],
    forms: dict[str, str],
    *,
    meta: bool,
) -> None:
    """Read the subtree of the dir ``top/rel`` (its own entry is already in ``out``). Without
    ``meta``, the dirent type decides and ``lstat`` is skipped for dirs, files and symlinks."""
    todo: list[tuple[str, str, bytes | None]] = [(rel, os.path.join(top, rel), root_opq)]
    while todo:
        rel_dir, absdir, opq = todo.pop()
        markers: set[str] = set()
        seen: set[str] = set()
        try:
            it = os.scandir(absdir)
        except FileNotFoundError:
            if rel_dir == rel:
                raise
            del out[rel_dir]  # removed since its parent was read (a live upper dir)
            continue
        with it:
            for dent in it:
                name = dent.name
                if name.startswith(OCI_WHITEOUT_PREFIX):
                    if name == OCI_OPAQUE_MARKER:
                        out[rel_dir] = _opaque(out[rel_dir])
                        continue
                    try:
                        target = whiteout_target(name)
                    except InvalidArgument:
                        target = None  # ".wh." alone names nothing: not content either
                    if target is not None:
                        markers.add(target)
                    continue
                child = join(rel_dir, name)
                if not meta:
                    try:
                        if dent.is_dir(follow_symlinks=False):
                            seen.add(name)
                            entry, child_opq = _dir_entry(dent.path, None)
                            out[child] = entry
                            todo.append((child, dent.path, child_opq))
                            continue
                        if dent.is_symlink():
                            seen.add(name)
                            target = os.readlink(dent.path)
                            out[child] = Entry(
                                Kind.SYMLINK, NO_META, size=len(os.fsencode(target)), target=target
                            )
                            continue
                        if opq != b"x" and dent.is_file(follow_symlinks=False):
                            seen.add(name)
                            out[child] = Entry(Kind.FILE, NO_META)
                            continue
                    except FileNotFoundError:
                        continue  # gone since scandir (a running container's upper dir)
                try:
                    st = dent.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # gone since scandir (a running container's upper dir)
                seen.add(name)
                if stat.S_ISDIR(st.st_mode):
                    entry, child_opq = _dir_entry(dent.path, st)
                    out[child] = entry
                    todo.append((child, dent.path, child_opq))
                    continue
                entry, form = _other_entry(dent.path, st, opq)
                out[child] = entry
                if form:
                    forms[child] = form
        for name in markers:
            child = join(rel_dir, name)
            if name not in seen:
                out[child] = WHITEOUT
                forms[child] = FORM_WH_FILE
            elif out[child].kind is Kind.DIR:
                # ".wh.x" beside a dir "x": lower "x" deleted, this layer's "x" kept = opaque
                out[child] = _opaque(out[child])


def _probe_one(
    top: str, rel: str, parent_opq: bytes | None
) -> tuple[Entry | None, str, bytes | None]:
    """The entry at ``rel`` in the layer dir ``top`` (its parent known to be a dir of the
    layer): (entry or None, whiteout form, the dir's raw opaque value)."""
    parent, _, name = rel.rpartition("/")
    if name.startswith(OCI_WHITEOUT_PREFIX):
        return None, "", None  # markers are never content
    abspath = os.path.join(top, rel)
    marker = os.path.join(top, parent, OCI_WHITEOUT_PREFIX + name)
    try:
        st = os.lstat(abspath)
    except (FileNotFoundError, NotADirectoryError):
        if os.path.lexists(marker):
            return WHITEOUT, FORM_WH_FILE, None
        return None, "", None
    if stat.S_ISDIR(st.st_mode):
        entry, opq = _dir_entry(abspath, st)
        if not entry.opaque and (
            os.path.lexists(marker) or os.path.lexists(os.path.join(abspath, OCI_OPAQUE_MARKER))
        ):
            entry = _opaque(entry)
        return entry, "", opq
    entry, form = _other_entry(abspath, st, parent_opq)
    return entry, form, None


def _root(top: str) -> tuple[Entry, bytes | None]:
    try:
        st = os.lstat(top)
    except FileNotFoundError as err:
        raise NotFound(
            f"layer dir {top} does not exist", hint="the store is damaged; pull or load again"
        ) from err
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"layer dir {top} is not a directory")
    entry, opq = _dir_entry(top, st)
    if not entry.opaque and os.path.lexists(os.path.join(top, OCI_OPAQUE_MARKER)):
        entry = _opaque(entry)
    return entry, opq


def _failed(err: OSError, top: str) -> FailedPrecondition:
    return FailedPrecondition(
        f"cannot read {err.filename or top}: {err.strerror}",
        hint="read layer dirs as root (whiteouts and trusted.* xattrs need it)",
    )


def scan_layer(path: Path, *, under: str = "", meta: bool = True) -> ScannedLayer:
    """Read the layer dir ``path``: everything, or with ``under`` (a clean relative path) only
    that subtree plus the entries on the way to it. ``meta=False`` (for views that need only
    kinds, names, symlink targets, whiteouts and opaque dirs) skips ``lstat`` where the dirent
    type tells the kind: files then have size 0 and every such entry has :data:`NO_META`."""
    top = os.fspath(path)
    out: dict[str, Entry] = {}
    forms: dict[str, str] = {}
    try:
        root, opq = _root(top)
        out[""] = root
        rel = ""
        if under:
            for part in under.split("/"):
                child = join(rel, part)
                entry, form, child_opq = _probe_one(top, child, opq)
                if entry is None:
                    return ScannedLayer(Layer.trusted(out), forms)
                out[child] = entry
                if form:
                    forms[child] = form
                if entry.kind is not Kind.DIR:
                    return ScannedLayer(Layer.trusted(out), forms)
                rel, opq = child, child_opq
        _walk(top, rel, opq, out, forms, meta=meta)
    except OSError as err:
        raise _failed(err, top) from err
    return ScannedLayer(Layer.trusted(out), forms)


def probe(path: Path, rel: str) -> ScannedLayer:
    """Only the entries on ``rel`` (``"a/b/c"``: ``""``, ``a``, ``a/b``, ``a/b/c``) in the layer
    dir ``path``, as far as they exist; a non-dir or whiteout ends the walk."""
    top = os.fspath(path)
    out: dict[str, Entry] = {}
    forms: dict[str, str] = {}
    try:
        root, opq = _root(top)
        out[""] = root
        cur = ""
        for part in rel.split("/") if rel else []:
            child = join(cur, part)
            entry, form, child_opq = _probe_one(top, child, opq)
            if entry is None:
                break
            out[child] = entry
            if form:
                forms[child] = form
            if entry.kind is not Kind.DIR:
                break
            cur, opq = child, child_opq
    except OSError as err:
        raise _failed(err, top) from err
    return ScannedLayer(Layer.trusted(out), forms)
