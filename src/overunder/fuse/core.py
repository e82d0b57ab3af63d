"""The overlay itself, independent of the FUSE wire: node-level operations that raise OSError
with the errno the kernel overlay would give.

Layout on disk is the kernel's (overlay-semantics.md §3): whiteouts are char 0/0 devices (or
``.wh.<name>`` files when this process may not mknod), opaque dirs carry ``<ns>opaque=y``, a
renamed lower dir carries ``<ns>redirect`` (relative name within the same parent, absolute
``/path`` across dirs, as the kernel with ``redirect_dir=on`` writes it), copy-up goes through
``<workdir>/work`` and hard-linked lower files are copied once into ``<workdir>/index`` and
linked from there (like ``index=on``), so their links stay one file.

We behave like the kernel mounted with ``redirect_dir=on,index=on`` (the scenario and
differential tests compare with exactly that): renaming a lower dir succeeds (the default
kernel says EXDEV), hard links survive copy-up, and a new dir in a merged dir is made opaque.
Overlay xattrs set through the mount (``trusted.overlay.X``) are stored escaped
(``trusted.overlay.overlay.X``), as the kernel does since 6.7.

Unprivileged: whiteouts are char 0/0 devices when the kernel lets this user make them (Linux
5.8+ does), else ``.wh.<name>`` files; overlay xattrs go to ``user.overlay.*`` when
``trusted.*`` cannot be written. Both forms are read back by this overlay and fuse-overlayfs
(the kernel reads only the first: use ``userxattr`` there).

Gaps: no ``trusted.overlay.origin``/``impure`` xattrs are written (the kernel copes without
them); a hard link is one node, so a write through any of its names copies up the name the
kernel looked up first (the kernel copies the name used); nlink of a partly copied-up hard
link is approximate (the larger of the lower and upper counts); lower layers are read once
per directory and cached, so names added to a lower layer while mounted stay unseen until a
remount (changed *contents* of lower files are seen, as with the kernel); st_ino may collide
when layers sit on different filesystems (another node id is then used).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

from overunder.fuse.copyup import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    copy_dir_shell,
    copy_object,
    renameat2,
    temp_name,
)
from overunder.fuse.layers import Stack
from overunder.fuse.nodes import ROOT_ID, Node, NodeTable
from overunder.fuse.trace import Tracer
from overunder.layerfs.whiteout import WhiteoutStyle

__all__ = ["Caller", "DirEntry", "OverlayCore"]

_CAPS = "security.capability"
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND
_KIND = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}


def _in_group(caller: Caller, gid: int) -> bool:
    """Whether the caller's fs gid or one of its supplementary groups is ``gid`` (read from
    /proc: FUSE requests carry only the fs gid)."""
    if caller.gid == gid:
        return True
    try:
        with open(f"/proc/{caller.pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Groups:"):
                    return str(gid) in line.split()[1:]
    except OSError:
        pass
    return False


def _err(code: int, what: str = "") -> OSError:
    return OSError(code, os.strerror(code), what)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asked (from the FUSE request header)."""

    uid: int
    gid: int
    pid: int = 0


@dataclass(slots=True)
class DirEntry:
    name: str
    fmt: int
    ino: int


class OverlayCore:
    """The merged tree over a :class:`Stack`, one node per object the kernel references."""

    def __init__(self, stack: Stack, tracer: Tracer | None = None) -> None:
        self.stack = stack
        self.tracer = tracer or Tracer(None)
        self.ns = stack.xattr_ns.value
        self._is_root = os.geteuid() == 0
        root_lowers = [(i, "") for i in range(len(stack.lowers))]
        top = stack.upper if stack.upper is not None else stack.lowers[0]
        # Held open so the root keeps answering stat even if its dir is removed under us
        # (rm -rf of a project dir removes upper/ before reaching merged/, as the kernel
        # overlay, which holds the dentry, survives).
        self.root_fd = os.open(top, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(self.root_fd)
        root = Node(
            ROOT_ID,
            None,
            "",
            stat.S_IFDIR,
            ino=st.st_ino,
            in_upper=stack.upper is not None,
            lowers=root_lowers,
        )
        self.root = root
        self.nodes = NodeTable(root)
        # Bumped whenever a merged path may change (rename): invalidates the cached paths.
        self.gen = 0
        self.last_st: os.stat_result | None = None
        self.work: str | None = None
        self.index: str | None = None
        if stack.work is not None:
            self.work = f"{stack.work}/work"
            self.index = f"{stack.work}/index"
            # index/ is made on the first hard-link copy-up, so a workdir that never needed
            # one looks like the kernel's (index=off): just work/.
            os.makedirs(self.work, exist_ok=True)

    # ----------------------------------------------------------------- resolution
    def node(self, nid: int) -> Node:
        try:
            return self.nodes.by_id[nid]
        except KeyError:
            raise _err(errno.ESTALE) from None

    def upath(self, node: Node) -> str:
        if node.cgen == self.gen:
            return node.cpath
        path = self.stack.upper_path(node.path)
        node.cpath = path
        node.cgen = self.gen
        return path

    def real(self, node: Node) -> str:
        """The path holding the node's current content and metadata."""
        if node.in_upper:
            return self.upath(node)
        if node.lower_real is not None:
            return node.lower_real
        li, rel = node.lowers[0]
        return self.stack.lower_path(li, rel)

    def _upper_dir_flags(self, path: str) -> tuple[bool, str | None]:
        try:
            names = os.listxattr(path, follow_symlinks=False)
        except OSError:
            return False, None
        # fuse-overlayfs also marks opaque dirs with a .wh..wh..opq file.
        opaque = self.stack.upper_has_wh_files and os.path.lexists(f"{path}/.wh..wh..opq")
        redirect: str | None = None
        for name in names:
            if not name.startswith(("trusted.overlay.", "user.overlay.")):
                continue
            if name.endswith(".opaque"):
                opaque = opaque or os.getxattr(path, name, follow_symlinks=False) == b"y"
            elif name.endswith(".redirect"):
                value = os.getxattr(path, name, follow_symlinks=False)
                redirect = value.decode("utf-8", "surrogateescape")
        return opaque, redirect

    def _lower_dirs(
        self, parent_lowers: list[tuple[int, str]], name: str, start: int, redirect: str | None
    ) -> list[tuple[int, str]]:
        """The lower dirs merged into a dir ``name`` of a parent with ``parent_lowers``, from
        layer index ``start`` on, following a redirect (relative or absolute)."""
        out: list[tuple[int, str]] = []
        if redirect is not None and redirect.startswith("/"):
            target = redirect.strip("/")
            candidates = [(li, target) for li in range(len(self.stack.lowers)) if li >= start]
        else:
            child = redirect if redirect is not None else name
            candidates = [
                (li, f"{rel}/{child}" if rel else child) for li, rel in parent_lowers if li >= start
            ]
        i = 0
        while i < len(candidates):
            li, rel = candidates[i]
            hit = self.stack.lower_entry(li, rel)
            if hit is False or (
                hit is not None and not isinstance(hit, bool) and hit[0] != stat.S_IFDIR
            ):
                break
            if hit is not None:
                out.append((li, rel))
                ld = self.stack.lower_dir(li, rel)
                if ld is None or ld.opaque:
                    break
                if ld.redirect is not None:
                    # A lower layer that was once an upper: its renamed dir continues below
                    # at the redirect target.
                    base = rel.rpartition("/")[0]
                    target = (
                        ld.redirect.strip("/")
                        if ld.redirect.startswith("/")
                        else (f"{base}/{ld.redirect}" if base else ld.redirect)
                    )
                    candidates = candidates[: i + 1] + [
                        (lj, target) for lj in range(li + 1, len(self.stack.lowers))
                    ]
            i += 1
        return out

    def _lower_positive(self, parent: Node, name: str) -> bool:
        """Whether a lower layer shows ``name`` in ``parent`` (so removing it needs a whiteout)."""
        for li, rel in parent.lowers:
            hit = self.stack.lower_entry(li, f"{rel}/{name}" if rel else name)
            if hit is False:
                return False
            if hit is not None:
                return True
        return False

    def _make_primary(self, node: Node, parent: Node, name: str) -> None:
        """Make (parent, name) the name a hard-linked node works through (its upper path),
        so an operation on one of its names acts on that name."""
        if node.parent is parent and node.name == name:
            return
        if not node.aliases or node.parent is None:
            return
        node.aliases = [
            (node.parent, node.name) if (p is parent and n == name) else (p, n)
            for p, n in node.aliases
        ]
        node.parent, node.name = parent, name
        self.gen += 1
        self._sync_upper(node)

    def _sync_upper(self, node: Node) -> None:
        """After a hard-linked node's name changed: is that name in the upper dir yet?"""
        if node.fmt == stat.S_IFDIR:
            return
        node.in_upper = self.stack.upper is not None and os.path.lexists(self.upath(node))

    def resolve(self, parent: Node, name: str) -> Node | None:
        """The node for ``name`` in ``parent`` (cached, else resolved), or None. When it was
        resolved just now with a stat of its current object, that stat is left in
        ``last_st`` (saves the caller a second lstat)."""
        self.last_st = None
        key = (parent.nid, name)
        cached = self.nodes.children.get(key)
        if cached is not None:
            if cached.parent is parent or any(p is parent for p, _ in cached.aliases):
                return cached
            # Left over from an earlier node with this id: a child made here without a kernel
            # reference (nlookup 0) outlives its parent's FORGET, and the parent, looked up
            # again, gets the same id (its inode number). Its parent link is dead: resolve anew.
            del self.nodes.children[key]
        if parent.fmt != stat.S_IFDIR:
            raise _err(errno.ENOTDIR)
        if name.startswith(".wh.") and self.stack.upper_has_wh_files:
            return None
        in_upper = False
        st: os.stat_result | None = None
        if parent.in_upper:
            upper = f"{self.upath(parent)}/{name}"
            try:
                st = os.lstat(upper)
            except FileNotFoundError:
                if self.stack.upper_has_wh_files and os.path.lexists(
                    f"{self.upath(parent)}/.wh.{name}"
                ):
                    return None
            else:
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    return None
                in_upper = True
        if in_upper:
            assert st is not None
            fmt = stat.S_IFMT(st.st_mode)
            if fmt == stat.S_IFDIR:
                opaque, redirect = self._upper_dir_flags(
                    self.stack.upper_path(f"{parent.path}/{name}" if parent.path else name)
                )
                lowers = [] if opaque else self._lower_dirs(parent.lowers, name, 0, redirect)
                ino = st.st_ino
                if lowers:
                    hit = self.stack.lower_entry(*lowers[0])
                    if isinstance(hit, tuple):
                        ino = hit[1]
                node = Node(
                    self.nodes.new_id(ino),
                    parent,
                    name,
                    fmt,
                    ino=ino,
                    in_upper=True,
                    lowers=lowers,
                    opaque=opaque,
                    redirect=redirect,
                )
            else:
                origin: list[tuple[int, str]] = []
                ino = st.st_ino
                for li, rel in parent.lowers:
                    lrel = f"{rel}/{name}" if rel else name
                    hit = self.stack.lower_entry(li, lrel)
                    if hit is False:
                        break
                    if isinstance(hit, tuple):
                        if hit[0] == fmt:
                            origin = [(li, lrel)]
                            ino = hit[1]
                        break
                if st.st_nlink > 1:
                    shared = self.nodes.by_real.get((st.st_dev, st.st_ino))
                    if shared is not None and shared.nid in self.nodes.by_id:
                        shared.aliases.append((parent, name))
                        self.nodes.children[(parent.nid, name)] = shared
                        return shared
                node = Node(
                    self.nodes.new_id(ino),
                    parent,
                    name,
                    fmt,
                    ino=ino,
                    in_upper=True,
                    lowers=origin,
                )
                if st.st_nlink > 1:
                    node.index_key = "upper"
                    self.nodes.by_real[(st.st_dev, st.st_ino)] = node
            self.nodes.add(node)
            self.last_st = st
            return node
        # Not in upper: the lowers decide.
        for pos, (li, rel) in enumerate(parent.lowers):
            lrel = f"{rel}/{name}" if rel else name
            hit = self.stack.lower_entry(li, lrel)
            if hit is False:
                return None
            if hit is None:
                continue
            assert not isinstance(hit, bool)
            fmt, ino = hit
            if fmt == stat.S_IFDIR:
                lowers = self._lower_dirs(parent.lowers[pos:], name, li, None)
                node = Node(
                    self.nodes.new_id(ino),
                    parent,
                    name,
                    fmt,
                    ino=ino,
                    in_upper=False,
                    lowers=lowers,
                )
            else:
                path = self.stack.lower_path(li, lrel)
                lower_real = None
                index_key = None
                if fmt == stat.S_IFREG:
                    lst = os.lstat(path)
                    if lst.st_nlink > 1:
                        index_key = f"{lst.st_dev:x}-{lst.st_ino:x}"
                        shared = self.nodes.by_real.get((lst.st_dev, lst.st_ino))
                        if shared is not None and shared.nid in self.nodes.by_id:
                            shared.aliases.append((parent, name))
                            self.nodes.children[(parent.nid, name)] = shared
                            return shared
                        if self.index is not None and os.path.lexists(f"{self.index}/{index_key}"):
                            lower_real = f"{self.index}/{index_key}"
                node = Node(
                    self.nodes.new_id(ino),
                    parent,
                    name,
                    fmt,
                    ino=ino,
                    in_upper=False,
                    lowers=[(li, lrel)],
                    lower_real=lower_real,
                    index_key=index_key,
                )
                if index_key is not None:
                    self.nodes.by_real[(lst.st_dev, lst.st_ino)] = node
                    if lower_real is not None:
                        lst = os.lstat(lower_real)
                if fmt == stat.S_IFREG:
                    self.last_st = lst
            self.nodes.add(node)
            return node
        return None

    def lookup(self, parent: Node, name: str) -> Node:
        node = self.resolve(parent, name)
        if node is None:
            raise _err(errno.ENOENT, name)
        return node

    # ----------------------------------------------------------------- attributes
    def stat(self, node: Node) -> os.stat_result:
        if node is self.root:
            return os.fstat(self.root_fd)
        return os.lstat(self.real(node))

    def nlink(self, node: Node, st: os.stat_result) -> int:
        """The link count shown: for a hard link kept through the index, the index's own link
        does not count, and lower names not yet copied up or deleted still do."""
        if node.fmt == stat.S_IFDIR:
            return 1 if node.merged_dir else st.st_nlink
        if node.index_key is None or node.index_key == "upper" or node.lower_real is None:
            return st.st_nlink
        lower_n = 0
        if node.lowers:
            li, rel = node.lowers[0]
            with contextlib.suppress(OSError):
                lower_n = os.lstat(self.stack.lower_path(li, rel)).st_nlink
        upper_n = st.st_nlink - 1  # st is the upper/index inode: its index link not counted
        if node.consumed == 0:
            # Found already copied up at lookup (after a remount): which lower names were
            # consumed is not known; the larger count is the best guess.
            return max(upper_n, lower_n, 1)
        return max(upper_n + lower_n - node.consumed, 1)

    # ----------------------------------------------------------------- copy-up
    def _need_rw(self) -> None:
        if self.stack.upper is None:
            raise _err(errno.EROFS)

    def _trace_path(self, node: Node) -> str:
        return "/" + node.path

    def ensure_upper(self, node: Node) -> None:
        """Copy ``node`` (and its missing parents) up."""
        if node.in_upper:
            return
        self._need_rw()
        assert node.parent is not None
        assert self.work is not None
        self.ensure_upper(node.parent)
        parent_path = self.upath(node.parent)
        pst = os.lstat(parent_path)
        dst = f"{parent_path}/{node.name}"
        src = self.real(node)
        tmp = temp_name(self.work)
        via_index = False
        copied = 0
        if node.fmt == stat.S_IFDIR:
            copy_dir_shell(src, tmp)
            os.rename(tmp, dst)
        elif node.index_key is not None and self.index is not None:
            idx = f"{self.index}/{node.index_key}"
            os.makedirs(self.index, exist_ok=True)
            if not os.path.lexists(idx):
                _, copied = copy_object(src, tmp)
                os.rename(tmp, idx)
            else:
                via_index = True
            os.link(idx, dst)
            node.lower_real = idx
            node.consumed += 1
        else:
            _, copied = copy_object(src, tmp)
            os.rename(tmp, dst)
        # Copy-up is not a change the user made: the parent keeps its timestamps (kernel).
        os.utime(parent_path, ns=(pst.st_atime_ns, pst.st_mtime_ns))
        node.in_upper = True
        if self.tracer.enabled:
            self.tracer.emit(
                "copy-up",
                path=self._trace_path(node),
                bytes=copied,
                layer=node.lowers[0][0] + 1 if node.lowers else None,
                kind=_KIND.get(node.fmt, "other"),
                **({"via-index": True} if via_index else {}),
            )

    # ----------------------------------------------------------------- whiteouts
    def _make_whiteout_at(self, parent: Node, name: str, *, replace: bool) -> None:
        """Put a whiteout at ``name`` in the upper ``parent``, replacing what is there when
        ``replace`` (atomically for the char-device form)."""
        assert self.work is not None
        base = self.upath(parent)
        target = f"{base}/{name}"
        if self.stack.whiteout_style is WhiteoutStyle.CHARDEV:
            if replace:
                # Made aside and renamed over the old object: the name never shows lower.
                tmp = temp_name(self.work)
                os.mknod(tmp, stat.S_IFCHR | 0o000, 0)
                os.rename(tmp, target)
            else:
                os.mknod(target, stat.S_IFCHR | 0o000, 0)
        else:
            if replace:
                os.unlink(target)
            fd = os.open(f"{base}/.wh.{name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.close(fd)
        if self.tracer.enabled:
            path = f"/{parent.path}/{name}" if parent.path else f"/{name}"
            self.tracer.emit("whiteout", path=path, style=self.stack.whiteout_style.value)

    def _clear_whiteout(self, parent: Node, name: str) -> bool:
        """Remove a ``.wh.<name>`` marker; True when the name had a char-device whiteout (the
        caller replaces that by rename)."""
        base = self.upath(parent)
        if self.stack.upper_has_wh_files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{base}/.wh.{name}")
        try:
            st = os.lstat(f"{base}/{name}")
        except FileNotFoundError:
            return False
        return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0

    # ----------------------------------------------------------------- creating
    def _chown_new(self, path: str, parent_path: str, caller: Caller) -> None:
        """Give a new object to its creator (we create as root); the gid of a set-gid parent
        dir wins, as the filesystem would have done for the creator itself."""
        if not self._is_root or (caller.uid == 0 and caller.gid == 0):
            return
        gid = caller.gid
        pst = os.lstat(parent_path)
        if pst.st_mode & stat.S_ISGID:
            gid = pst.st_gid
        os.lchown(path, caller.uid, gid)

    def _free_name(self, parent: Node, name: str) -> tuple[bool, bool]:
        """Check that ``name`` can be created in ``parent`` (EEXIST otherwise); returns
        (a char-device whiteout is there, a ``.wh.<name>`` file is there)."""
        if (parent.nid, name) in self.nodes.children:
            raise _err(errno.EEXIST, name)
        chardev = whfile = False
        if parent.in_upper:
            base = self.upath(parent)
            try:
                st = os.lstat(f"{base}/{name}")
            except FileNotFoundError:
                if self.stack.upper_has_wh_files:
                    whfile = os.path.lexists(f"{base}/.wh.{name}")
            else:
                if not (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0):
                    raise _err(errno.EEXIST, name)
                chardev = True
        if not (chardev or whfile) and self._lower_positive(parent, name):
            raise _err(errno.EEXIST, name)
        return chardev, whfile

    def _create(
        self, parent: Node, name: str, caller: Caller, fmt: int, make: Callable[[str], None]
    ) -> tuple[Node, os.stat_result]:
        """Create a new object through ``make(path)``; over a whiteout it is made in the
        workdir and renamed over it, so the name never shows the lower object."""
        self._need_rw()
        if parent.fmt != stat.S_IFDIR:
            raise _err(errno.ENOTDIR)
        chardev, whfile = self._free_name(parent, name)
        self.ensure_upper(parent)
        assert self.work is not None
        base = self.upath(parent)
        target = f"{base}/{name}"
        is_dir = fmt == stat.S_IFDIR
        # A dir created where a lower one was deleted hides the old contents (opaque); in a
        # merged parent the kernel (redirect_dir/index on, as we are) makes every new dir
        # opaque, so lookups below it never search the lowers.
        opaque = is_dir and (chardev or whfile or bool(parent.lowers))
        if chardev:
            tmp = temp_name(self.work)
            make(tmp)
            self._chown_new(tmp, base, caller)
            if is_dir:
                os.setxattr(tmp, f"{self.ns}opaque", b"y")
                renameat2(tmp, target, RENAME_EXCHANGE)
                os.unlink(tmp)
            else:
                os.rename(tmp, target)
        else:
            make(target)
            self._chown_new(target, base, caller)
            if opaque:
                os.setxattr(target, f"{self.ns}opaque", b"y")
            if whfile:
                os.unlink(f"{base}/.wh.{name}")
        if opaque and (chardev or whfile) and self.tracer.enabled:
            self.tracer.emit(
                "opaque", path="/" + (f"{parent.path}/{name}" if parent.path else name)
            )
        st = os.lstat(target)
        node = Node(
            self.nodes.new_id(st.st_ino), parent, name, stat.S_IFMT(st.st_mode), ino=st.st_ino,
            in_upper=True, lowers=[], opaque=opaque,
        )  # fmt: skip
        node.nocaps = True
        self.nodes.add(node)
        return node, st

    def mkdir(
        self, parent: Node, name: str, mode: int, caller: Caller
    ) -> tuple[Node, os.stat_result]:
        return self._create(
            parent, name, caller, stat.S_IFDIR, lambda p: os.mkdir(p, mode & 0o7777)
        )

    def mknod(
        self, parent: Node, name: str, mode: int, rdev: int, caller: Caller
    ) -> tuple[Node, os.stat_result]:
        return self._create(
            parent, name, caller, stat.S_IFMT(mode), lambda p: os.mknod(p, mode, rdev)
        )

    def symlink(
        self, parent: Node, name: str, target: str, caller: Caller
    ) -> tuple[Node, os.stat_result]:
        return self._create(parent, name, caller, stat.S_IFLNK, lambda p: os.symlink(target, p))

    def create(
        self, parent: Node, name: str, mode: int, flags: int, caller: Caller
    ) -> tuple[Node, os.stat_result, int]:
        fds: list[int] = []

        def make(path: str) -> None:
            fds.append(
                os.open(
                    path,
                    (flags & ~os.O_TRUNC) | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                    stat.S_IMODE(mode),
                )
            )

        try:
            node, st = self._create(parent, name, caller, stat.S_IFREG, make)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return node, st, fds[0]

    def link(self, node: Node, parent: Node, name: str) -> Node:
        self._need_rw()
        if node.fmt == stat.S_IFDIR:
            raise _err(errno.EPERM)
        if self.resolve(parent, name) is not None:
            raise _err(errno.EEXIST, name)
        self.ensure_upper(node)
        self.ensure_upper(parent)
        assert self.work is not None
        src = self.upath(node)
        target = f"{self.upath(parent)}/{name}"
        if self._clear_whiteout(parent, name):
            tmp = temp_name(self.work)
            os.link(src, tmp)
            os.rename(tmp, target)
        else:
            os.link(src, target)
        st = os.lstat(src)
        self.nodes.by_real[(st.st_dev, st.st_ino)] = node
        if node.index_key is None:
            node.index_key = "upper"
        node.aliases.append((parent, name))
        self.nodes.children[(parent.nid, name)] = node
        return node

    # ----------------------------------------------------------------- removing
    def merged_names(self, node: Node) -> list[DirEntry]:
        """The merged listing of a dir, whiteouts and opaque dirs applied."""
        out: list[DirEntry] = []
        seen: set[str] = set()
        hidden: set[str] = set()
        if node.in_upper:
            wh_files = self.stack.upper_has_wh_files
            with os.scandir(self.upath(node)) as it:
                for entry in it:
                    name = entry.name
                    if wh_files and name.startswith(".wh."):
                        if name.startswith(".wh..wh.") or name == ".wh..opq":
                            continue
                        hidden.add(name[4:])
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        fmt = stat.S_IFDIR
                    elif entry.is_file(follow_symlinks=False):
                        fmt = stat.S_IFREG
                    elif entry.is_symlink():
                        fmt = stat.S_IFLNK
                    else:
                        st = entry.stat(follow_symlinks=False)
                        fmt = stat.S_IFMT(st.st_mode)
                        if fmt == stat.S_IFCHR and st.st_rdev == 0:
                            hidden.add(name)
                            continue
                    seen.add(name)
                    out.append(DirEntry(name, fmt, entry.inode()))
        for li, rel in node.lowers:
            ld = self.stack.lower_dir(li, rel)
            if ld is None:
                continue
            for name, (fmt, ino) in ld.entries.items():
                if name in seen or name in hidden:
                    continue
                seen.add(name)
                out.append(DirEntry(name, fmt, ino))
            hidden |= ld.gone
        return out

    def unlink(self, parent: Node, name: str) -> None:
        self._need_rw()
        node = self.lookup(parent, name)
        if node.fmt == stat.S_IFDIR:
            raise _err(errno.EISDIR, name)
        self._remove(parent, name, node)

    def rmdir(self, parent: Node, name: str) -> None:
        self._need_rw()
        node = self.lookup(parent, name)
        if node.fmt != stat.S_IFDIR:
            raise _err(errno.ENOTDIR, name)
        if self.merged_names(node):
            raise _err(errno.ENOTEMPTY, name)
        self._remove(parent, name, node)

    def _remove(self, parent: Node, name: str, node: Node) -> None:
        self._make_primary(node, parent, name)
        need_wh = self._lower_positive(parent, name)
        self.ensure_upper(parent)
        target = f"{self.upath(parent)}/{name}"
        if node.in_upper and node.fmt == stat.S_IFDIR:
            self._drop_upper_dir(target)
            if need_wh:
                self._make_whiteout_at(parent, name, replace=False)
        elif node.in_upper:
            if need_wh:
                self._make_whiteout_at(parent, name, replace=True)
            else:
                os.unlink(target)
        else:
            self._make_whiteout_at(parent, name, replace=False)
            if node.index_key is not None and node.index_key != "upper":
                node.consumed += 1
        self.nodes.unname(parent, name)
        self.gen += 1
        if node.aliases or node.parent is not parent or node.name != name:
            self._sync_upper(node)  # another name of the hard link is now the primary

    def _drop_upper_dir(self, path: str) -> None:
        """Remove an upper dir that holds nothing visible (only whiteouts): moved into the
        workdir first, so the name is free at once."""
        assert self.work is not None
        try:
            os.rmdir(path)
            return
        except OSError as err:
            if err.errno != errno.ENOTEMPTY:
                raise
        tmp = temp_name(self.work)
        os.rename(path, tmp)
        shutil.rmtree(tmp)

    # ----------------------------------------------------------------- rename
    def _prepare_dir_move(self, node: Node, old_parent: Node, new_parent: Node) -> None:
        """Before a dir moves: a dir with lower parts gets a redirect to where they are; a
        pure upper dir moved into a merged dir is made opaque (both as the kernel does)."""
        path = self.upath(node)
        if node.lowers:
            samedir = old_parent is new_parent
            if node.redirect is not None and (samedir or node.redirect.startswith("/")):
                return
            value = node.name if samedir else "/" + node.lowers[0][1]
            os.setxattr(path, f"{self.ns}redirect", os.fsencode(value))
            node.redirect = value
        elif not node.opaque and new_parent.in_upper and new_parent.lowers:
            os.setxattr(path, f"{self.ns}opaque", b"y")
            node.opaque = True

    def rename(self, op: Node, on: str, np: Node, nn: str, flags: int) -> None:
        self._need_rw()
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or (
            flags & RENAME_NOREPLACE and flags & RENAME_EXCHANGE
        ):
            raise _err(errno.EINVAL)
        src = self.lookup(op, on)
        self._make_primary(src, op, on)
        dst = self.resolve(np, nn)
        if dst is not None:
            self._make_primary(dst, np, nn)
        if flags & RENAME_NOREPLACE and dst is not None:
            raise _err(errno.EEXIST, nn)
        if flags & RENAME_EXCHANGE:
            if dst is None:
                raise _err(errno.ENOENT, nn)
            self._exchange(op, on, src, np, nn, dst)
            return
        if dst is src:
            return
        src_dir = src.fmt == stat.S_IFDIR
        if dst is not None:
            if src_dir and dst.fmt != stat.S_IFDIR:
                raise _err(errno.ENOTDIR, nn)
            if not src_dir and dst.fmt == stat.S_IFDIR:
                raise _err(errno.EISDIR, nn)
            if dst.fmt == stat.S_IFDIR and self.merged_names(dst):
                raise _err(errno.ENOTEMPTY, nn)
        old_positive = self._lower_positive(op, on)
        self.ensure_upper(src)
        self.ensure_upper(op)
        self.ensure_upper(np)
        new_path = f"{self.upath(np)}/{nn}"
        old_path = f"{self.upath(op)}/{on}"
        if src_dir:
            self._prepare_dir_move(src, op, np)
        if dst is not None and dst.in_upper and dst.fmt == stat.S_IFDIR:
            self._drop_upper_dir(new_path)
        else:
            self._clear_whiteout(np, nn)
        os.rename(old_path, new_path)
        if old_positive:
            self._make_whiteout_at(op, on, replace=False)
        if dst is not None:
            self.nodes.unname(np, nn)
            self.gen += 1
        self.nodes.rename(src, op, on, np, nn)
        self.gen += 1
        if src_dir and src.lowers and self.tracer.enabled:
            self.tracer.emit(
                "redirect",
                path=self._trace_path(src),
                **{"from": "/" + (f"{op.path}/{on}" if op.path else on), "redirect": src.redirect},
            )

    def _exchange(  # noqa: PLR0917 (two (parent, name, node) triples)
        self, op: Node, on: str, a: Node, np: Node, nn: str, b: Node
    ) -> None:
        for n in (a, b, op, np):
            self.ensure_upper(n)
        if a.fmt == stat.S_IFDIR:
            self._prepare_dir_move(a, op, np)
        if b.fmt == stat.S_IFDIR:
            self._prepare_dir_move(b, np, op)
        renameat2(f"{self.upath(op)}/{on}", f"{self.upath(np)}/{nn}", RENAME_EXCHANGE)
        self.nodes.children.pop((op.nid, on), None)
        self.nodes.children.pop((np.nid, nn), None)
        self.nodes.rename(a, op, on, np, nn)
        self.gen += 1
        # b was unmapped above; put it at the old name.
        if b.parent is np and b.name == nn:
            b.parent, b.name = op, on
        self.nodes.children[(op.nid, on)] = b

    # ----------------------------------------------------------------- data
    def open(self, node: Node, flags: int) -> int:
        if flags & _WRITE_FLAGS:
            self._need_rw()
            if not node.in_upper:
                self.ensure_upper(node)
        flags &= ~(os.O_CREAT | os.O_EXCL | os.O_NOCTTY)
        return os.open(self.real(node), flags | os.O_NOFOLLOW)

    def setattr(
        self,
        node: Node,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        atime_ns: int | None = None,
        mtime_ns: int | None = None,
        fd: int | None = None,
    ) -> None:
        self._need_rw()
        self.ensure_upper(node)
        path = self.upath(node)
        if uid is not None or gid is not None:
            os.lchown(path, -1 if uid is None else uid, -1 if gid is None else gid)
        if mode is not None and node.fmt != stat.S_IFLNK:
            os.chmod(path, stat.S_IMODE(mode))
        if size is not None:
            if fd is not None:
                os.ftruncate(fd, size)
            else:
                os.truncate(path, size)
        if atime_ns is not None or mtime_ns is not None:
            if atime_ns is None or mtime_ns is None:
                st = os.lstat(path)
                atime_ns = st.st_atime_ns if atime_ns is None else atime_ns
                mtime_ns = st.st_mtime_ns if mtime_ns is None else mtime_ns
            os.utime(path, ns=(atime_ns, mtime_ns), follow_symlinks=False)

    def kill_suidgid(self, node: Node, caller: Caller | None) -> None:
        """Clear set-user-ID, and set-group-ID if group-executable or if ``caller`` is neither
        in the file's group nor root, of a non-directory: what the VFS does on a write or
        truncate by a caller without CAP_FSETID and on chown (the FUSE kernel leaves it to us
        under HANDLE_KILLPRIV_V2). Root stands in for "has CAP_FSETID"."""
        if node.fmt in {stat.S_IFDIR, stat.S_IFLNK}:
            return
        self._need_rw()
        self.ensure_upper(node)
        path = self.upath(node)
        st = os.lstat(path)
        mode = st.st_mode
        new = mode & ~stat.S_ISUID
        if mode & stat.S_IXGRP or (
            mode & stat.S_ISGID
            and caller is not None
            and caller.uid != 0
            and not _in_group(caller, st.st_gid)
        ):
            new &= ~stat.S_ISGID
        if new != mode:
            os.chmod(path, stat.S_IMODE(new))

    def readlink(self, node: Node) -> bytes:
        real = self.real(node)
        try:
            return os.readlink(os.fsencode(real))
        except OSError as err:
            # Name the layer file and the node: the caller only ever sees the errno.
            raise OSError(
                err.errno,
                f"{err.strerror} (node {node.nid}, merged /{node.path}, in_upper={node.in_upper})",
                real,
            ) from err

    # ----------------------------------------------------------------- xattrs
    # Overlay's own xattrs (``trusted.overlay.*``) are stored escaped, as the kernel does
    # since 6.7 for nested overlays: the name ``trusted.overlay.X`` set through the mount is
    # ``trusted.overlay.overlay.X`` on disk, so it never changes how this overlay reads the
    # layer; the real ones stay invisible.
    def _real_xattr(self, name: str) -> str:
        ns = self.ns
        return f"{ns}overlay.{name[len(ns) :]}" if name.startswith(ns) else name

    def getxattr(self, node: Node, name: str) -> bytes:
        if node.nocaps and name == _CAPS:
            raise _err(errno.ENODATA, name)
        return os.getxattr(self.real(node), self._real_xattr(name), follow_symlinks=False)

    def listxattr(self, node: Node) -> list[str]:
        ns = self.ns
        escaped = f"{ns}overlay."
        out = []
        for n in os.listxattr(self.real(node), follow_symlinks=False):
            if n.startswith(escaped):
                out.append(ns + n[len(escaped) :])
            elif not n.startswith(ns):
                out.append(n)
        return out

    def setxattr(self, node: Node, name: str, value: bytes, flags: int) -> None:
        self._need_rw()
        self.ensure_upper(node)
        if name == _CAPS:
            node.nocaps = False
        os.setxattr(self.upath(node), self._real_xattr(name), value, flags, follow_symlinks=False)

    def removexattr(self, node: Node, name: str) -> None:
        self._need_rw()
        # Removing an absent xattr must not copy up.
        self.getxattr(node, name)
        self.ensure_upper(node)
        os.removexattr(self.upath(node), self._real_xattr(name), follow_symlinks=False)

    def statfs(self) -> os.statvfs_result:
        return os.statvfs(self.stack.upper or self.stack.lowers[0])

    def now_ns(self) -> int:
        return time.time_ns()
