"""What changed: Docker's A/C/D lines, from an upper layer or from two trees.

The rules are Docker's (docker-compat.md §3), which are those of moby's naive differ
(``pkg/archive/changes.go``: ``addChanges`` with ``statDifferent``):

* an entry present in both trees is ``C`` when its *metadata* differs: kind, mode, uid, gid,
  rdev, the ``security.capability`` xattr, and, for non-directories only, size and mtime.
  Content is **not** compared (a same-size rewrite with the mtime restored is no change), nor
  are other xattrs, symlink targets beyond their size and mtime, link counts or hard-link
  groups, nor directory size/mtime;
* a new entry is ``A``, and so is everything under a new directory;
* a vanished entry is one ``D``; nothing is listed under it;
* a directory whose subtree holds a change is ``C`` (every ancestor, however deep), the root
  ``/`` never;
* a directory replacing a file is ``C`` plus ``A`` for its children; a file replacing a
  directory is ``C`` alone (no ``D`` for the old children); a recreated (opaque) directory
  compares its children by name with the old ones.

How an upper layer alone tells "copied up but unchanged" from "changed":
:func:`changes_from_upper` compares each upper entry with the entry it shadows in the lowers
using the metadata test above, as Docker's overlay2 differ does. A dir copied up only because a
child came and went, a touched dir, or the copied-up target of a new hard link (same mode,
owner, size and mtime as below) therefore produce no line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from overunder.semantics.merge import Chain, _merged_names, _resolve_child, _root, merged_children
from overunder.semantics.types import Entry, Kind, Layer, LayerView, join, parent_of, path_key

__all__ = [
    "CAPABILITY_XATTR",
    "Change",
    "ChangeKind",
    "changes_from_upper",
    "diff_trees",
    "layer_from_diff",
    "same_metadata",
]

CAPABILITY_XATTR = "security.capability"


class ChangeKind(StrEnum):
    ADD = "A"
    MODIFY = "C"
    DELETE = "D"


@dataclass(frozen=True, slots=True)
class Change:
    """One line of ``docker diff``: ``str(c) == "A /abs/path"``."""

    kind: ChangeKind
    path: str

    def __str__(self) -> str:
        return f"{self.kind.value} {self.path}"


def same_metadata(old: Entry, new: Entry) -> bool:
    """Docker's "not changed" test for an entry present in both trees (see module doc)."""
    if (
        old.kind is not new.kind
        or old.meta.mode != new.meta.mode
        or old.meta.uid != new.meta.uid
        or old.meta.gid != new.meta.gid
        or old.rdev != new.rdev
        or old.meta.xattr(CAPABILITY_XATTR) != new.meta.xattr(CAPABILITY_XATTR)
    ):
        return False
    if new.kind is Kind.DIR:
        return True
    return old.size == new.size and old.meta.mtime_ns == new.meta.mtime_ns


def _abs(path: str) -> str:
    return "/" + path


def _sorted(changes: list[Change]) -> list[Change]:
    changes.sort(key=lambda c: path_key(c.path[1:]))
    return changes


def _all_added(tree: Layer, path: str, out: list[Change]) -> None:
    for name in tree.children(path):
        child = join(path, name)
        out.append(Change(ChangeKind.ADD, _abs(child)))
        if tree[child].kind is Kind.DIR:
            _all_added(tree, child, out)


def diff_trees(old: Layer, new: Layer) -> list[Change]:
    """Docker's changes between two flattened trees (no whiteouts), sorted by path with every
    dir before its subtree. The naive oracle for :func:`changes_from_upper`."""
    out: list[Change] = []

    def walk(path: str) -> bool:
        """Compare the children of a dir present in ``new`` (and as anything in ``old``)."""
        start = len(out)
        old_entry = old.get(path)
        old_names = set(old.children(path)) if old_entry and old_entry.kind is Kind.DIR else set()
        for name in new.children(path):
            child = join(path, name)
            n = new[child]
            o = old.get(child) if name in old_names else None
            old_names.discard(name)
            if o is None:
                out.append(Change(ChangeKind.ADD, _abs(child)))
                if n.kind is Kind.DIR:
                    _all_added(new, child, out)
                continue
            listed = not same_metadata(o, n)
            at = len(out)
            if listed:
                out.append(Change(ChangeKind.MODIFY, _abs(child)))
            if n.kind is Kind.DIR and walk(child) and not listed:
                out.insert(at, Change(ChangeKind.MODIFY, _abs(child)))
        out.extend(Change(ChangeKind.DELETE, _abs(join(path, name))) for name in sorted(old_names))
        return len(out) > start

    walk("")
    return _sorted(out)


def changes_from_upper(upper: LayerView, lowers: Sequence[LayerView]) -> list[Change]:
    """Docker's changes of the mount ``[upper, *lowers]`` against ``lowers``. Equal to
    ``diff_trees(flatten(lowers), flatten([upper, *lowers]))``, sorted the same way, but only
    the dirs the upper layer touches are visited: a subtree that both trees take from the same
    lower dirs is the same subtree and is skipped. Redirected dirs are followed."""
    full: list[LayerView] = [upper, *lowers]
    low = list(lowers)
    out: list[Change] = []

    def add_all(path: str, chain: Chain) -> None:
        for name, _, entry, sub in merged_children(full, chain):
            child = join(path, name)
            out.append(Change(ChangeKind.ADD, _abs(child)))
            if entry.kind is Kind.DIR:
                add_all(child, sub)

    def walk(path: str, new_chain: Chain, old_chain: Chain | None) -> bool:
        """Compare the children of a dir of the new tree (merged from ``new_chain``) with the
        old tree's at the same path (``old_chain``; None: no dir there)."""
        start = len(out)
        if (
            old_chain is not None
            and new_chain
            and new_chain[0][0] == 0
            and new_chain[1:] == tuple((i + 1, p) for i, p in old_chain)
        ):
            # the lowers show through unchanged: only names the upper holds can differ
            names = set(upper.children(new_chain[0][1]))
        else:
            names = set(_merged_names(full, new_chain))
            if old_chain is not None:
                names.update(_merged_names(low, old_chain))
        for name in sorted(names):
            child = join(path, name)
            new = _resolve_child(full, new_chain, name)
            old = _resolve_child(low, old_chain, name) if old_chain is not None else None
            if new is None:
                if old is not None:
                    out.append(Change(ChangeKind.DELETE, _abs(child)))
                continue
            new_layer, n, new_sub = new
            if old is None:
                out.append(Change(ChangeKind.ADD, _abs(child)))
                if n.kind is Kind.DIR:
                    add_all(child, new_sub)
                continue
            old_layer, o, old_sub = old
            if new_layer == old_layer + 1 and new_sub == tuple((i + 1, p) for i, p in old_sub):
                continue  # the same lower entries at the same paths: the same subtree
            listed = not same_metadata(o, n)
            at = len(out)
            if listed:
                out.append(Change(ChangeKind.MODIFY, _abs(child)))
            if (
                n.kind is Kind.DIR
                and walk(child, new_sub, old_sub if o.kind is Kind.DIR else None)
                and not listed
            ):
                out.insert(at, Change(ChangeKind.MODIFY, _abs(child)))
        return len(out) > start

    _, _, new_root = _root(full)
    walk("", new_root, _root(low)[2] if low else None)
    return _sorted(out)


def layer_from_diff(old: Layer, new: Layer) -> Layer:
    """An upper layer that turns ``old`` into ``new``: ``flatten([it, old]) == new``.

    Like the kernel's upper dir: a changed entry is there in full, its parent dirs are there
    (copied up, with ``new``'s metadata), deletions are whiteouts. A dir that stays a dir is
    merged (not opaque): each old child it lost gets its own whiteout (umoci's style, not the
    kernel's opaque dir). When one member of a hard-link group is in the layer, all of its
    members are (a layer tar can only link within itself), with their parent dirs.
    Both arguments are flattened trees (no whiteouts); ``new``'s root is always included.
    """
    out: dict[str, Entry] = {"": new[""]}

    def add_subtree(path: str) -> None:
        for name in new.children(path):
            child = join(path, name)
            out[child] = new[child]
            add_subtree(child)

    def walk(path: str) -> bool:
        """Both trees have a dir at ``path``; record what differs below. True if anything."""
        changed = False
        old_names = set(old.children(path))
        for name in new.children(path):
            child = join(path, name)
            n = new[child]
            o = old.get(child) if name in old_names else None
            old_names.discard(name)
            if o is not None and o.kind is Kind.DIR and n.kind is Kind.DIR:
                below = walk(child)
                if below or o != n:
                    out[child] = n
                    changed = True
                continue
            if o == n:
                continue
            out[child] = n
            changed = True
            if n.kind is Kind.DIR:
                add_subtree(child)
        for name in old_names:
            out[join(path, name)] = Entry.whiteout()
            changed = True
        return changed

    walk("")
    groups = {e.link_id for e in out.values() if e.link_id is not None}
    if groups:
        for path, e in new.items():
            if e.link_id in groups and path not in out:
                out[path] = e
                parent = parent_of(path)
                while parent not in out:
                    out[parent] = new[parent]
                    parent = parent_of(parent)
    return Layer(out)
