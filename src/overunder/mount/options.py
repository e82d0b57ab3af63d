"""Overlay mount options: parsing them like the kernel and checking them before mounting.

The kernel refuses a bad overlay mount with mount(8)'s generic "wrong fs type, bad option …"
and writes the real reason to the kernel log. :func:`validate_overlay` applies the same rules
first (measured on 6.18, ``/work/shared/reference/overlay-semantics.md`` §2) and says what is
wrong in plain words, naming the option and the path, so nothing is mounted after a refusal.
The FUSE overlay validates with the same code, so both drivers refuse the same mounts.

Where we are stricter than the kernel, on purpose:

* a non-empty workdir: the kernel accepts any content, but the documentation asks for an empty
  dir, and litter there is a sign of a wrong path. We accept what the kernel itself leaves
  behind and re-uses (``work/`` and ``index/``) and refuse anything else;
* ``workdir=`` without ``upperdir=``: the kernel ignores it with a log line; it is almost
  always a typo, so we refuse it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from overunder.errors import FailedPrecondition, InvalidArgument, NotFound, Unsupported

__all__ = [
    "KERNEL_WORKDIR_NAMES",
    "OverlayOptions",
    "format_overlay_options",
    "parse_overlay_options",
    "split_options",
    "validate_overlay",
]

# What the kernel creates inside a workdir and re-uses on the next mount of the same upper:
# ``work`` always (its scratch dir, emptied at mount), ``index`` with index=on/nfs_export.
KERNEL_WORKDIR_NAMES = frozenset({"work", "index"})

_PATH_OPTIONS = ("lowerdir", "upperdir", "workdir")


@dataclass
class OverlayOptions:
    """Parsed overlay options. ``lowerdirs`` are top first, as in ``lowerdir=top:…:bottom``.

    Paths are kept as given (possibly relative); :meth:`resolved` makes them absolute the way
    mount(8) does, against the current directory.
    """

    lowerdirs: list[Path] = field(default_factory=list)
    upperdir: Path | None = None
    workdir: Path | None = None
    extra: list[str] = field(default_factory=list)

    @property
    def readonly(self) -> bool:
        """No upper layer (or an explicit ``ro``): the kernel mounts it read-only."""
        return self.upperdir is None or "ro" in self.extra

    def resolved(self, base: Path | None = None) -> OverlayOptions:
        """The same options with every path absolute (against ``base``, default the cwd) and
        normalized (``..`` removed, symlinks kept, like the kernel's own path walk would see)."""
        root = base if base is not None else Path.cwd()

        def absolute(p: Path) -> Path:
            return Path(os.path.normpath(root / p))

        return OverlayOptions(
            lowerdirs=[absolute(p) for p in self.lowerdirs],
            upperdir=absolute(self.upperdir) if self.upperdir is not None else None,
            workdir=absolute(self.workdir) if self.workdir is not None else None,
            extra=list(self.extra),
        )

    def to_options(self) -> list[str]:
        """mount(8) ``-o`` items, with ``:``, ``,`` and ``\\`` in paths escaped for the kernel."""
        return format_overlay_options(self)


def split_options(opts: str) -> list[str]:
    """Split a ``-o`` string on commas, keeping ``\\,`` escapes and double-quoted values
    together (libmount's rule)."""
    items: list[str] = []
    cur: list[str] = []
    quoted = False
    i = 0
    while i < len(opts):
        c = opts[i]
        if c == "\\" and i + 1 < len(opts):
            cur.append(opts[i : i + 2])
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == "," and not quoted:
            items.append("".join(cur))
            cur = []
            i += 1
            continue
        cur.append(c)
        i += 1
    items.append("".join(cur))
    return [item for item in items if item]


def _unescape(value: str) -> str:
    """``\\x`` -> ``x`` (the kernel's ovl_unescape), and strip libmount's double quotes."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    out: list[str] = []
    it = iter(value)
    for c in it:
        if c == "\\":
            out.append(next(it, "\\"))
        else:
            out.append(c)
    return "".join(out)


def _split_lowerdir(value: str) -> Iterator[str]:
    """Split ``a:b\\:c:d`` on unescaped colons; yields the raw (still escaped) pieces."""
    cur: list[str] = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            cur.append(value[i : i + 2])
            i += 2
            continue
        if c == ":":
            yield "".join(cur)
            cur = []
        else:
            cur.append(c)
        i += 1
    yield "".join(cur)


def parse_overlay_options(opts: str | Sequence[str]) -> OverlayOptions:
    """Parse ``lowerdir=…,upperdir=…,workdir=…[,other]`` (a string or mount(8) items).

    ``\\:`` in a lowerdir is a colon inside a path. ``lowerdir+=`` (the fsconfig form) appends
    one layer below the ones given so far. Options other than the three paths are kept in
    ``extra`` in order and passed to the kernel as they are.
    """
    items = split_options(opts) if isinstance(opts, str) else [i for i in opts if i]
    parsed = OverlayOptions()
    for item in items:
        key, sep, value = item.partition("=")
        if key == "lowerdir" and sep:
            pieces = list(_split_lowerdir(value))
            if any(p == "" for p in pieces):
                if "::" in value:
                    raise Unsupported(
                        f"lowerdir={value}: data-only lower layers ('::') are not supported",
                        hint="list every layer with single colons, top first",
                    )
                raise InvalidArgument(
                    f"lowerdir={value}: empty layer path",
                    hint="separate layers with single colons, top first: lowerdir=/top:/bottom",
                )
            parsed.lowerdirs = [Path(_unescape(p)) for p in pieces]
        elif key == "lowerdir+" and sep:
            if not value:
                raise InvalidArgument("lowerdir+= needs a path", hint="lowerdir+=/path/to/layer")
            parsed.lowerdirs.append(Path(_unescape(value)))
        elif key in ("upperdir", "workdir") and sep:
            if not value:
                raise InvalidArgument(f"{key}= needs a path", hint=f"{key}=/path/to/dir")
            setattr(parsed, key, Path(_unescape(value)))
        elif key in _PATH_OPTIONS:
            raise InvalidArgument(f"{key} needs a value", hint=f"write {key}=/path")
        else:
            parsed.extra.append(item)
    return parsed


def _escape(path: Path, *, colon: bool) -> str:
    s = str(path).replace("\\", "\\\\").replace(",", "\\,")
    return s.replace(":", "\\:") if colon else s


def format_overlay_options(opts: OverlayOptions) -> list[str]:
    """The mount(2) data items for ``opts`` (the inverse of :func:`parse_overlay_options`)."""
    items = ["lowerdir=" + ":".join(_escape(p, colon=True) for p in opts.lowerdirs)]
    if opts.upperdir is not None:
        items.append("upperdir=" + _escape(opts.upperdir, colon=False))
    if opts.workdir is not None:
        items.append("workdir=" + _escape(opts.workdir, colon=False))
    items.extend(opts.extra)
    return items


# --- validation -----------------------------------------------------------------------------


def _require_dir(option: str, path: Path) -> os.stat_result:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise NotFound(
            f"{option} {path} does not exist",
            hint=f"create it first (mkdir -p {path}) or fix the {option.rstrip('=')} path",
        ) from None
    except PermissionError as err:
        raise FailedPrecondition(
            f"{option} {path}: permission denied",
            hint="every parent directory must be searchable by the mounting user",
        ) from err
    except OSError as err:
        raise InvalidArgument(f"{option} {path}: {err.strerror}") from err
    if not path.is_dir():
        raise InvalidArgument(
            f"{option} {path} is not a directory", hint="overlay layers are directories"
        )
    return st


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _mount_point_of(path: Path) -> str | None:
    """The mount point (from /proc/self/mountinfo) that holds ``path``: the longest target
    that is a prefix of its real path. Two bind mounts of one filesystem share ``st_dev`` but
    are different mounts, and the kernel wants upper and work under the same one."""
    from overunder.mount.mountinfo import read_mountinfo

    real = Path(os.path.realpath(path))
    best: str | None = None
    try:
        entries = read_mountinfo()
    except OSError:
        return None
    for entry in entries:
        target = Path(entry.target)
        if _is_within(real, target) and (best is None or len(entry.target) >= len(best)):
            best = entry.target
    return best


def _probe_xattrs(workdir: Path, upperdir: Path, *, user_ns: bool) -> None:
    """Set and remove one xattr of the namespace overlay will use, on a scratch file in the
    workdir (same filesystem as the upper; nothing is left in the upper)."""
    name = "user.overlay.overunder-probe" if user_ns else "trusted.overlay.overunder-probe"
    probe = workdir / f".overunder-xattr-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM) and os.geteuid() != 0:
            return  # not root: mount(2) will refuse with "needs root", a clearer reason
        raise FailedPrecondition(
            f"workdir {workdir} is not writable: {err.strerror}",
            hint="the workdir must be a writable directory",
        ) from err
    try:
        os.setxattr(fd, name, b"y")
        os.removexattr(fd, name)
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            ns = "user.*" if user_ns else "trusted.*"
            raise Unsupported(
                f"upperdir {upperdir}: its filesystem does not support {ns} extended "
                "attributes, which overlay needs for whiteouts and opaque dirs",
                hint="put upperdir and workdir on ext4, xfs, btrfs or tmpfs",
            ) from err
        if err.errno == errno.EPERM:
            # Not root: the filesystem may well support them; mount(2) itself will say that
            # root is needed, and a FUSE overlay can fall back to user.* xattrs.
            return
        raise FailedPrecondition(
            f"upperdir {upperdir}: cannot set a test xattr in the workdir ({err.strerror})",
            hint="check that the upperdir's filesystem is writable and supports xattrs",
        ) from err
    finally:
        os.close(fd)
        probe.unlink(missing_ok=True)


def validate_overlay(opts: OverlayOptions, target: Path, *, xattrs: bool = True) -> None:
    """Refuse what the kernel would refuse, naming the option and the path.

    ``xattrs=False`` skips the xattr probe on the upper filesystem (for a driver that can
    store whiteouts and opaque dirs without xattrs).

    Raises NotFound (a missing dir), InvalidArgument (a missing or contradictory option,
    overlapping dirs), FailedPrecondition (non-empty workdir, a volatile mount's leftovers,
    upper and work on different mounts) or Unsupported (no xattrs on the upper filesystem).
    """
    if not opts.lowerdirs:
        raise InvalidArgument(
            "overlay needs lowerdir=",
            hint="give at least one lower layer: -o lowerdir=./lower,upperdir=./upper,"
            "workdir=./work",
        )
    if opts.upperdir is not None and opts.workdir is None:
        raise InvalidArgument(
            f"upperdir={opts.upperdir} needs workdir=",
            hint="add workdir=DIR: an empty directory on the same filesystem as the upperdir",
        )
    if opts.workdir is not None and opts.upperdir is None:
        raise InvalidArgument(
            f"workdir={opts.workdir} is given without upperdir=",
            hint="add upperdir=DIR for a writable overlay, or drop workdir= for a read-only one",
        )
    if opts.upperdir is None and len(opts.lowerdirs) < 2:
        raise InvalidArgument(
            f"lowerdir={opts.lowerdirs[0]}: a read-only overlay (no upperdir) needs at least "
            "2 lowerdirs",
            hint="add another lowerdir (an empty directory will do), or give upperdir= and "
            "workdir= for a writable overlay",
        )
    _require_dir("mount point", target)
    for lower in opts.lowerdirs:
        _require_dir("lowerdir", lower)
    if opts.upperdir is None or opts.workdir is None:
        return
    upper_st = _require_dir("upperdir", opts.upperdir)
    work_st = _require_dir("workdir", opts.workdir)

    upper = Path(os.path.realpath(opts.upperdir))
    work = Path(os.path.realpath(opts.workdir))
    if _is_within(work, upper) or _is_within(upper, work):
        inner, outer = ("workdir", "upperdir")
        if not _is_within(work, upper):
            inner, outer = outer, inner
        raise InvalidArgument(
            f"workdir {opts.workdir} and upperdir {opts.upperdir} must be separate subtrees "
            f"(the {inner} is inside the {outer})",
            hint="use sibling directories, e.g. upperdir=./upper,workdir=./work",
        )
    # The kernel compares mounts, not st_dev (btrfs subvolumes of one mount differ in
    # st_dev; two bind mounts of one filesystem share it); st_dev decides only when
    # mountinfo cannot (no /proc).
    upper_mnt, work_mnt = _mount_point_of(upper), _mount_point_of(work)
    if (upper_mnt is None and upper_st.st_dev != work_st.st_dev) or upper_mnt != work_mnt:
        raise FailedPrecondition(
            f"workdir {opts.workdir} and upperdir {opts.upperdir} must reside under the same mount",
            hint="create the workdir next to the upperdir, on the same filesystem",
        )
    for lower in opts.lowerdirs:
        real = Path(os.path.realpath(lower))
        for option, layer in (("upperdir", upper), ("workdir", work)):
            if _is_within(real, layer) or _is_within(layer, real):
                raise InvalidArgument(
                    f"lowerdir {lower} and {option} {layer} overlap (one is inside the other)",
                    hint="layers must be separate directory trees",
                )

    leftovers = sorted(os.listdir(opts.workdir))
    if (opts.workdir / "work" / "incompat" / "volatile").exists():
        raise FailedPrecondition(
            f"workdir {opts.workdir} holds work/incompat/volatile, left by a 'volatile' mount: "
            "the upper may be inconsistent, so the kernel refuses to mount it again",
            hint=f"if the upper is fine, remove {opts.workdir / 'work' / 'incompat'} "
            "(or start over with a fresh upper and workdir)",
        )
    litter = [n for n in leftovers if n not in KERNEL_WORKDIR_NAMES]
    if litter:
        shown = ", ".join(litter[:5]) + (" …" if len(litter) > 5 else "")
        raise FailedPrecondition(
            f"workdir {opts.workdir} is not empty (holds {shown})",
            hint="the workdir must be an empty directory the overlay owns; use a new one",
        )
    if xattrs:
        _probe_xattrs(opts.workdir, opts.upperdir, user_ns="userxattr" in opts.extra)
