"""The on-disk forms of whiteouts and opaque directories, read and written.

Which forms exist (``/work/shared/reference/overlay-semantics.md`` §3):

* **char device 0/0** with the deleted name: what the kernel overlay (and fuse-overlayfs when it
  may mknod) writes into an upper dir. The kernel reads it in every layer.
* **opaque dir**: xattr ``trusted.overlay.opaque="y"`` (``user.overlay.opaque`` for a
  ``userxattr`` mount); lower children of that dir are hidden.
* **xattr whiteout**: a zero-size regular file carrying ``*.overlay.whiteout`` inside a dir whose
  ``*.overlay.opaque`` is ``"x"`` (the ``"x"`` means "look for xattr whiteouts here", *not*
  opaque). Layer tools write these; overlayfs never does.
* **``.wh.<name>`` files and ``.wh..wh..opq``**: the OCI tar markers, which fuse-overlayfs also
  uses on disk as its rootless fallback. They are always honoured when reading a layer dir.
  Gap: a user file that really is called ``.wh.something`` in a kernel upper dir is read as a
  whiteout too (the kernel would show it); fuse-overlayfs has the same ambiguity.
"""

from __future__ import annotations

import errno
import os
import stat
import uuid
from enum import StrEnum
from pathlib import Path

from overunder.errors import AlreadyExists, InvalidArgument, NotFound, Unsupported

__all__ = [
    "OCI_OPAQUE_MARKER",
    "OCI_WHITEOUT_PREFIX",
    "WhiteoutStyle",
    "XattrNS",
    "is_chardev_whiteout",
    "is_opaque",
    "is_xattr_whiteout",
    "list_dir_layer",
    "make_opaque",
    "make_whiteout",
    "opaque_value",
    "probe_capabilities",
    "whiteout_target",
]

OCI_WHITEOUT_PREFIX = ".wh."
OCI_OPAQUE_MARKER = ".wh..wh..opq"
# fuse-overlayfs writes a char 0/0 ".wh..opq" next to its ".wh..wh..opq" file; AUFS kept its
# hard-link dir as ".wh..wh.plnk". Neither is a whiteout of anything: skip them when reading.
_IGNORED_MARKERS = frozenset({".wh..opq", ".wh..wh.plnk", ".wh..wh.aufs", ".wh..wh.orph"})


class XattrNS(StrEnum):
    """Namespace of overlay xattrs: ``trusted.`` (root, default) or ``user.`` (``userxattr``)."""

    TRUSTED = "trusted.overlay."
    USER = "user.overlay."


class WhiteoutStyle(StrEnum):
    """How a whiteout is written: char device 0/0, or a ``.wh.<name>`` file (rootless)."""

    CHARDEV = "chardev"
    WH_FILE = "wh-file"


# Read order for the opaque flag, as fuse-overlayfs 1.10 does it.
_OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque", "user.fuseoverlayfs.opaque")
_WHITEOUT_XATTRS = ("trusted.overlay.whiteout", "user.overlay.whiteout")
# "no such xattr" and "this fs / file type has no such namespace" both mean: not set.
_NO_XATTR = frozenset(
    {errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.EINVAL}
)


def _getxattr(path: str | Path, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError as err:
        if err.errno in _NO_XATTR:
            return None
        raise


def is_chardev_whiteout(st: os.stat_result) -> bool:
    """True for the kernel's whiteout: a character device with device number 0/0."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_xattr_whiteout(path: str | Path, st: os.stat_result) -> bool:
    """True for a zero-size regular file carrying ``trusted.overlay.whiteout`` (or ``user.``).

    The kernel honours it only inside a dir marked ``opaque="x"``;
    :func:`list_dir_layer` checks that, this function looks at the file alone.
    """
    if not stat.S_ISREG(st.st_mode) or st.st_size != 0:
        return False
    return any(_getxattr(path, name) is not None for name in _WHITEOUT_XATTRS)


def opaque_value(path: str | Path) -> bytes | None:
    """The dir's opaque xattr: ``trusted.overlay.opaque``, else ``user.overlay.opaque`` (else
    fuse-overlayfs's ``user.fuseoverlayfs.opaque``); None when none is set."""
    for name in _OPAQUE_XATTRS:
        value = _getxattr(path, name)
        if value is not None:
            return value
    return None


def is_opaque(path: str | Path) -> bool:
    """True when the dir's opaque xattr is ``"y"``. ``"x"`` (holds xattr whiteouts) is not opaque.

    Only the xattr is looked at; a ``.wh..wh..opq`` file inside is seen by
    :func:`list_dir_layer`.
    """
    return opaque_value(path) == b"y"


def whiteout_target(name: str) -> str | None:
    """The name a ``.wh.<name>`` marker deletes; None when ``name`` is not such a marker.

    The opaque marker and the legacy AUFS markers are not whiteouts (None). Markers that would
    name the dir itself or its parent (``.wh.``, ``.wh..``, ``.wh...``) raise InvalidArgument.
    """
    if not name.startswith(OCI_WHITEOUT_PREFIX):
        return None
    if name == OCI_OPAQUE_MARKER or name in _IGNORED_MARKERS:
        return None
    target = name[len(OCI_WHITEOUT_PREFIX) :]
    if target in ("", ".", "..") or "/" in target:
        raise InvalidArgument(
            f"whiteout marker {name!r} does not name an entry",
            hint="a .wh. marker must be followed by the name it deletes; remove this entry",
        )
    return target


def _check_name(name: str) -> None:
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise InvalidArgument(
            f"{name!r} is not a single file name",
            hint="pass the parent dir and one path component",
        )


def make_whiteout(parent: Path, name: str, *, style: WhiteoutStyle) -> None:
    """Create a whiteout for ``name`` in the layer dir ``parent``.

    ``CHARDEV`` makes a char device 0/0 with mode 0000 (needs CAP_MKNOD); ``WH_FILE`` makes an
    empty ``.wh.<name>`` file, mode 0600 (Docker's tar convention). An existing entry of the same
    name is left alone and AlreadyExists is raised: the caller decides what replaces what.
    """
    _check_name(name)
    if style is WhiteoutStyle.CHARDEV:
        target = parent / name
        try:
            os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        except FileExistsError as err:
            raise AlreadyExists(
                f"cannot make whiteout {target}: the name exists",
                hint="remove the entry first; a whiteout replaces it",
            ) from err
        except FileNotFoundError as err:
            raise NotFound(
                f"cannot make whiteout {target}: {parent} does not exist",
                hint="create the parent dir first",
            ) from err
        except PermissionError as err:
            raise Unsupported(
                f"cannot mknod a 0/0 whiteout at {target}: {err.strerror}",
                hint="run as root, or use the wh-file whiteout style (see probe_capabilities)",
            ) from err
        # mknod's mode is masked by umask only downwards; 0000 is already minimal.
        return
    target = parent / (OCI_WHITEOUT_PREFIX + name)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError as err:
        raise AlreadyExists(
            f"cannot make whiteout {target}: it exists", hint="the name is already whited out"
        ) from err
    except FileNotFoundError as err:
        raise NotFound(
            f"cannot make whiteout {target}: {parent} does not exist",
            hint="create the parent dir first",
        ) from err
    os.close(fd)


def make_opaque(path: Path, *, ns: XattrNS) -> None:
    """Mark the dir ``path`` opaque: ``<ns>opaque = "y"``."""
    try:
        os.setxattr(path, f"{ns.value}opaque", b"y", follow_symlinks=False)
    except FileNotFoundError as err:
        raise NotFound(f"cannot mark {path} opaque: it does not exist") from err
    except OSError as err:
        if err.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES):
            raise Unsupported(
                f"cannot set {ns.value}opaque on {path}: {err.strerror}",
                hint="trusted.* needs root; use the user.overlay. namespace (userxattr), "
                "or a filesystem with xattr support (see probe_capabilities)",
            ) from err
        raise


def probe_capabilities(directory: Path) -> tuple[WhiteoutStyle, XattrNS]:
    """What this user can create in ``directory``'s filesystem: the whiteout style (CHARDEV if a
    0/0 mknod works, else WH_FILE) and the xattr namespace (TRUSTED if settable, else USER).

    Works in a scratch subdir that is always removed. Raises Unsupported when neither
    ``trusted.*`` nor ``user.*`` xattrs can be set (no overlay can use such a filesystem).
    """
    scratch = directory / f".overunder-probe-{uuid.uuid4().hex}"
    try:
        scratch.mkdir()
    except OSError as err:
        raise Unsupported(
            f"cannot probe {directory}: {err.strerror}",
            hint="the directory must exist and be writable",
        ) from err
    try:
        try:
            os.mknod(scratch / "w", stat.S_IFCHR, os.makedev(0, 0))
            style = WhiteoutStyle.CHARDEV
        except OSError:
            style = WhiteoutStyle.WH_FILE
        found: XattrNS | None = None
        for ns in (XattrNS.TRUSTED, XattrNS.USER):
            try:
                os.setxattr(scratch, f"{ns.value}opaque", b"y")
            except OSError:
                continue
            # A FUSE fs may accept trusted.* and drop it: believe only what reads back.
            if _getxattr(scratch, f"{ns.value}opaque") == b"y":
                found = ns
                break
        if found is None:
            raise Unsupported(
                f"the filesystem of {directory} keeps neither trusted.* nor user.* xattrs",
                hint="put layers on ext4, xfs, btrfs or tmpfs",
            )
        return style, found
    finally:
        for child in scratch.iterdir():
            child.unlink()
        scratch.rmdir()


def list_dir_layer(path: Path) -> tuple[list[str], set[str], bool]:
    """Names in one layer's dir, whiteouts resolved: ``(visible, whited_out, opaque)``.

    ``visible`` is sorted and holds the entries this layer contributes; ``whited_out`` the names
    it deletes from the layers below; ``opaque`` whether lower children are hidden (xattr "y" or
    a ``.wh..wh..opq`` file). Marker files themselves are never visible. Xattr whiteouts count
    only when the dir's opaque xattr is "x", as the kernel reads them. A visible name may also
    be in ``whited_out`` (a ``.wh.x`` next to ``x``): ``x`` of this layer shows, lower ``x``
    does not.
    """
    value = opaque_value(path)
    opaque = value == b"y"
    xattr_whiteouts = value == b"x"
    visible: list[str] = []
    gone: set[str] = set()
    with os.scandir(path) as it:
        for entry in it:
            name = entry.name
            st = entry.stat(follow_symlinks=False)
            if name == OCI_OPAQUE_MARKER:
                opaque = True
                continue
            if name in _IGNORED_MARKERS:
                continue
            target = whiteout_target(name)
            if target is not None:
                gone.add(target)
                continue
            if is_chardev_whiteout(st) or (xattr_whiteouts and is_xattr_whiteout(entry.path, st)):
                gone.add(name)
                continue
            visible.append(name)
    visible.sort()
    return visible, gone, opaque
