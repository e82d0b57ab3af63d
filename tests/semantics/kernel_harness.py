"""Run the same operations on the pure OverlayModel and on a real kernel overlay, and compare.

Used by this package's kernel tests; the FUSE scenario suite can use it too (``Mounted`` only
needs a merged dir, an upper dir and the lower dirs). ``materialize`` writes a
:class:`Layer` to disk in the kernel's format.
"""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import stat
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from overunder.layerfs.reader import read_layer
from overunder.layerfs.whiteout import WhiteoutStyle, XattrNS, make_opaque, make_whiteout
from overunder.semantics import Entry, Kind, Layer, OverlayModel, normalize_links

T_LOW = 978_307_200_000_000_000  # 2001-01-01: every fixture mtime is at or before this


def materialize(layer: Layer, dest: Path, contents: Mapping[str, bytes]) -> None:
    """Write ``layer`` under the (existing, empty) dir ``dest`` as an overlay layer dir."""
    links: dict[str, Path] = {}
    dirs: list[tuple[Path, Entry]] = []
    for path, e in layer.items():
        p = dest / path if path else dest
        if e.kind is Kind.DIR:
            if path:
                p.mkdir()
            if e.opaque:
                make_opaque(p, ns=XattrNS.TRUSTED)
            if e.redirect is not None:
                os.setxattr(p, "trusted.overlay.redirect", os.fsencode(e.redirect))
            dirs.append((p, e))
            continue
        if e.kind is Kind.WHITEOUT:
            make_whiteout(p.parent, p.name, style=WhiteoutStyle.CHARDEV)
            continue
        if e.link_id is not None and e.link_id in links:
            os.link(links[e.link_id], p)
            continue
        if e.kind is Kind.FILE:
            data = contents[e.data] if e.data is not None else b"\0" * e.size
            p.write_bytes(data)
        elif e.kind is Kind.SYMLINK:
            assert e.target is not None
            os.symlink(e.target, p)
        else:
            fmt = {
                Kind.FIFO: stat.S_IFIFO,
                Kind.SOCKET: stat.S_IFSOCK,
                Kind.CHARDEV: stat.S_IFCHR,
                Kind.BLOCKDEV: stat.S_IFBLK,
            }[e.kind]
            os.mknod(p, fmt | e.meta.mode, os.makedev(*(e.rdev or (0, 0))))
        _set_meta(p, e)
        if e.link_id is not None:
            links[e.link_id] = p
    for p, e in reversed(dirs):  # children change a dir's mtime: set dirs last, deepest first
        _set_meta(p, e)


def _set_meta(p: Path, e: Entry) -> None:
    for name, value in e.meta.xattrs:
        os.setxattr(p, name, value, follow_symlinks=False)
    os.chown(p, e.meta.uid, e.meta.gid, follow_symlinks=False)
    if e.kind is not Kind.SYMLINK:
        os.chmod(p, e.meta.mode)
    os.utime(p, ns=(e.meta.mtime_ns, e.meta.mtime_ns), follow_symlinks=False)


def comparable(layer: Layer, *, merged_view: bool = False) -> Layer:
    """Hide what differs by nature between the model and a real mount: mtimes set during the
    test (the model's clock vs the real one; mtimes kept from the fixtures must agree) and
    hard-link labels."""

    def norm(e: Entry) -> Entry:
        if e.meta.mtime_ns > T_LOW:
            e = replace(e, meta=replace(e.meta, mtime_ns=-1))
        if merged_view and any(k.startswith("trusted.overlay.") for k, _ in e.meta.xattrs):
            # the mount shows escaped xattrs unescaped, and the reader drops those names
            kept = tuple(kv for kv in e.meta.xattrs if not kv[0].startswith("trusted.overlay."))
            e = replace(e, meta=replace(e.meta, xattrs=kept))
        return e

    return normalize_links(Layer((p, norm(e)) for p, e in layer.items()))


_libc = ctypes.CDLL(None, use_errno=True)


def renameat2(old: str, new: str, flags: int) -> None:
    AT_FDCWD = -100
    rc = _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags)
    if rc != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), old, None, new)


def kernel_op(m: Path, op: str, args: Sequence[Any], kw: Mapping[str, Any]) -> None:
    """Run one operation in a child chrooted into the mount, so that absolute symlinks resolve
    inside it (as in a container, and as the model resolves them), never on the host."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.chroot(m)
            os.chdir("/")
            _do_op(Path("/"), op, args, kw)
        except OSError as err:
            code = err.errno or 255
        except BaseException:
            code = 254
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 254:
        raise RuntimeError(f"{op}{tuple(args)}: the operation crashed in the chrooted child")
    if code:
        raise OSError(code, os.strerror(code), args[0] if args else None)


def _do_op(m: Path, op: str, args: Sequence[Any], kw: Mapping[str, Any]) -> None:
    def p(x: str) -> str:
        return str(m / x.lstrip("/"))

    if op == "create":
        path, data = args[0], args[1] if len(args) > 1 else b""
        flags = os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_NONBLOCK
        flags |= os.O_EXCL if kw.get("exclusive") else 0
        fd = os.open(p(path), flags, kw.get("mode", 0o644))
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    elif op == "write":
        fd = os.open(p(args[0]), os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.pwrite(fd, args[1], kw.get("offset", 0))
        finally:
            os.close(fd)
    elif op == "append":
        fd = os.open(p(args[0]), os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)
        try:
            os.write(fd, args[1])
        finally:
            os.close(fd)
    elif op == "truncate":
        os.truncate(p(args[0]), args[1])
    elif op == "unlink":
        os.unlink(p(args[0]))
    elif op == "rmdir":
        os.rmdir(p(args[0]))
    elif op == "mkdir":
        os.mkdir(p(args[0]), args[1] if len(args) > 1 else 0o755)
    elif op == "symlink":
        os.symlink(args[0], p(args[1]))
    elif op == "link":
        os.link(p(args[0]), p(args[1]), follow_symlinks=False)
    elif op == "rename":
        renameat2(p(args[0]), p(args[1]), args[2] if len(args) > 2 else 0)
    elif op == "chmod":
        os.chmod(p(args[0]), args[1])
    elif op == "chown":
        os.chown(p(args[0]), args[1], args[2], follow_symlinks=kw.get("follow_symlinks", True))
    elif op == "utime":
        os.utime(p(args[0]), ns=(args[1], args[1]), follow_symlinks=kw.get("follow_symlinks", True))
    elif op == "setxattr":
        follow = kw.get("follow_symlinks", True)
        os.setxattr(p(args[0]), args[1], args[2], follow_symlinks=follow)
    elif op == "removexattr":
        os.removexattr(p(args[0]), args[1], follow_symlinks=kw.get("follow_symlinks", True))
    elif op == "mknod":
        kind, mode = args[1], args[2] if len(args) > 2 else 0o644
        rdev = args[3] if len(args) > 3 else (0, 0)
        fmt = {
            Kind.FIFO: stat.S_IFIFO,
            Kind.SOCKET: stat.S_IFSOCK,
            Kind.CHARDEV: stat.S_IFCHR,
            Kind.BLOCKDEV: stat.S_IFBLK,
            Kind.FILE: stat.S_IFREG,
        }[kind]
        os.mknod(p(args[0]), fmt | mode, os.makedev(*rdev))
    else:
        raise ValueError(op)


Op = tuple[str, tuple[Any, ...], dict[str, Any]]


def op(name: str, *args: Any, **kw: Any) -> Op:
    return (name, args, kw)


@dataclass
class Mounted:
    lowers: list[Path]
    upper: Path | None
    merged: Path


@contextmanager
def kernel_overlay(
    root: Path,
    lowers: Sequence[Layer],
    upper: Layer | None,
    contents: Mapping[str, bytes],
    *,
    options: str = "",
) -> Iterator[Mounted]:
    """Materialize the layers under ``root`` and mount them; unmount on the way out."""
    lower_dirs = []
    for i, layer in enumerate(lowers):
        d = root / f"l{i}"
        d.mkdir()
        materialize(layer, d, contents)
        lower_dirs.append(d)
    m = root / "m"
    m.mkdir()
    opts = "lowerdir=" + ":".join(str(d) for d in lower_dirs)
    up_dir = None
    if upper is not None:
        up_dir, work = root / "u", root / "w"
        up_dir.mkdir()
        work.mkdir()
        materialize(upper, up_dir, contents)
        opts += f",upperdir={up_dir},workdir={work}"
    if options:
        opts += "," + options
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(m)], check=True)
    old_umask = os.umask(0)
    try:
        yield Mounted(lower_dirs, up_dir, m)
    finally:
        os.umask(old_umask)
        subprocess.run(["umount", str(m)], check=True)


def _errno_of(fn: Callable[..., None], *args: Any, **kw: Any) -> int:
    try:
        fn(*args, **kw)
    except OSError as err:
        return err.errno or -1
    return 0


def _name(code: int) -> str:
    return errno.errorcode.get(code, str(code))


def run_and_compare(
    root: Path,
    lowers: Sequence[Layer],
    upper: Layer | None,
    ops: Sequence[Op],
    *,
    contents: Mapping[str, bytes],
    redirect_dir: bool = False,
) -> OverlayModel:
    """Apply ``ops`` to the model and to a kernel overlay; after each one the errno, the merged
    tree and the upper dir must agree. Returns the model."""
    ticks = itertools.count(T_LOW + 1_000_000_000, 1_000_000_000)
    model = OverlayModel(
        lowers, upper, contents=contents, redirect_dir=redirect_dir, clock=lambda: next(ticks)
    )
    options = "redirect_dir=on" if redirect_dir else ""
    with kernel_overlay(root, lowers, upper, contents, options=options) as mnt:
        for step, (name, args, kw) in enumerate(ops):
            want = _errno_of(kernel_op, mnt.merged, name, args, kw)
            got = _errno_of(getattr(model, name), *args, **kw)
            where = f"step {step}: {name}{args}{kw or ''}"
            assert got == want, f"{where}: model errno {_name(got)}, kernel {_name(want)}"
            merged = comparable(read_layer(mnt.merged), merged_view=True)
            mine_merged = comparable(model.merged(), merged_view=True)
            assert mine_merged == merged, (
                f"{where}: merged trees differ\n{_diff(mine_merged, merged)}"
            )
            if mnt.upper is not None:
                real = comparable(read_layer(mnt.upper))
                mine = model.upper
                assert mine is not None
                assert comparable(mine) == real, (
                    f"{where}: upper dirs differ\n{_diff(comparable(mine), real)}"
                )
    return model


def _diff(model: Layer, real: Layer) -> str:
    lines = []
    for path in sorted(set(model) | set(real)):
        a, b = model.get(path), real.get(path)
        if a != b:
            lines.append(f"  /{path}:\n    model {a}\n    real  {b}")
    return "\n".join(lines)
