"""The inode table of the FUSE overlay: one :class:`Node` per object the kernel knows.

A node caches where its object lives (upper, or which lower layer, or the hard-link index)
so no request re-resolves the layer stack; the overlay updates the node itself whenever it
changes the object (copy-up, rename, unlink), since nothing else writes to the layers.
Hard links are one node with several names, so the kernel sees one inode (shared attributes
and page cache) before and after copy-up.
"""

from __future__ import annotations

__all__ = ["ROOT_ID", "Node", "NodeTable"]

ROOT_ID = 1


class Node:
    """One object of the merged tree.

    ``parent``/``name`` is the primary name (the merged path is built by walking up);
    ``aliases`` holds further names of a hard-linked file. ``in_upper``: the object exists in
    the upper dir at its merged path. ``lowers``: for a dir, the lower dirs merged into it as
    (layer index, path in that layer), top first; for a non-dir, its lower origin (0 or 1
    items). ``lower_real`` is the file read when not in upper (a lower file, or its copy in the
    hard-link index). ``ino`` is the st_ino reported, fixed for the node's lifetime.
    """

    __slots__ = (
        "aliases",
        "cgen",
        "consumed",
        "cpath",
        "fmt",
        "in_upper",
        "index_key",
        "ino",
        "lower_real",
        "lowers",
        "name",
        "nid",
        "nlookup",
        "nocaps",
        "opaque",
        "parent",
        "redirect",
        "stamp",
    )

    def __init__(
        self,
        nid: int,
        parent: Node | None,
        name: str,
        fmt: int,
        *,
        ino: int,
        in_upper: bool,
        lowers: list[tuple[int, str]],
        lower_real: str | None = None,
        opaque: bool = False,
        redirect: str | None = None,
        index_key: str | None = None,
    ) -> None:
        self.nid = nid
        self.parent = parent
        self.name = name
        self.fmt = fmt
        self.ino = ino
        self.in_upper = in_upper
        self.lowers = lowers
        self.lower_real = lower_real
        self.opaque = opaque
        self.redirect = redirect
        self.index_key = index_key
        self.nlookup = 0
        self.aliases: list[tuple[Node, str]] = []
        self.cgen = -1
        self.cpath = ""
        # Lower names of a hard link that no longer count (copied up through the index, or
        # whited out); in memory only, so nlink is exact until a remount.
        self.consumed = 0
        # (mtime, size, ino) of a lower file when last opened: its page cache is kept only
        # while that is unchanged.
        self.stamp: tuple[int, int, int] | None = None
        # Known to carry no security.capability xattr (made through the mount, none set since):
        # the kernel asks for it before writes and chowns, and is answered without a syscall.
        self.nocaps = False

    @property
    def path(self) -> str:
        """Merged path relative to the mount root ("" for the root)."""
        parts: list[str] = []
        node: Node | None = self
        while node is not None and node.parent is not None:
            parts.append(node.name)
            node = node.parent
        parts.reverse()
        return "/".join(parts)

    @property
    def merged_dir(self) -> bool:
        """A dir whose contents come from more than one layer (nlink reported as 1, like the
        kernel, which does not count subdirs of merged dirs)."""
        return len(self.lowers) + (1 if self.in_upper else 0) > 1


class NodeTable:
    """nodeid -> Node, (parent nodeid, name) -> Node, and hard-link identity -> Node."""

    def __init__(self, root: Node) -> None:
        self.by_id: dict[int, Node] = {ROOT_ID: root}
        self.children: dict[tuple[int, str], Node] = {}
        self.by_real: dict[tuple[int, int], Node] = {}
        self._next = 1 << 56
        root.nlookup = 1

    def new_id(self, preferred: int) -> int:
        """A node id for a new node: ``preferred`` (the object's own inode number, because FUSE
        reports the node id as ``st_ino``) unless a live node has it (layers on different
        filesystems), else one from a range no ext4/xfs/tmpfs inode reaches."""
        if preferred > ROOT_ID and preferred not in self.by_id:
            return preferred
        nid = self._next
        self._next += 1
        return nid

    def add(self, node: Node) -> None:
        self.by_id[node.nid] = node
        assert node.parent is not None
        self.children[(node.parent.nid, node.name)] = node

    def unname(self, parent: Node, name: str) -> None:
        """Drop one name (unlink, or rename away); a hard-linked node keeps its other names."""
        node = self.children.pop((parent.nid, name), None)
        if node is None:
            return
        if node.parent is parent and node.name == name:
            if node.aliases:
                node.parent, node.name = node.aliases.pop()
        else:
            node.aliases = [(p, n) for p, n in node.aliases if not (p is parent and n == name)]

    def rename(self, node: Node, old_parent: Node, old: str, new_parent: Node, new: str) -> None:
        self.children.pop((old_parent.nid, old), None)
        if node.parent is old_parent and node.name == old:
            node.parent, node.name = new_parent, new
        else:
            node.aliases = [
                (new_parent, new) if (p is old_parent and n == old) else (p, n)
                for p, n in node.aliases
            ]
        self.children[(new_parent.nid, new)] = node

    def forget(self, nid: int, count: int) -> None:
        node = self.by_id.get(nid)
        if node is None or nid == ROOT_ID:
            return
        node.nlookup -= count
        if node.nlookup > 0:
            return
        del self.by_id[nid]
        assert node.parent is not None
        for parent, name in [(node.parent, node.name), *node.aliases]:
            if self.children.get((parent.nid, name)) is node:
                del self.children[(parent.nid, name)]
        for key in [k for k, v in self.by_real.items() if v is node] if node.index_key else ():
            del self.by_real[key]
