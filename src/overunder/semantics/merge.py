"""Reading a stack of layers as one tree, the way overlayfs does.

Rules (overlay-semantics.md A1, A2, B1-B5, E1): layers are top first; a name in a higher
layer hides the same name below; a non-directory, a whiteout or an opaque dir ends the merge at
its path; only dir+dir pairs merge, and a merged dir takes its metadata from the topmost dir.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from overunder.errors import InvalidArgument, NotFound
from overunder.semantics.types import Entry, Kind, Layer, LayerView, join, path_key

__all__ = [
    "Chain",
    "Hidden",
    "Hit",
    "Source",
    "SourceKind",
    "flatten",
    "lookup",
    "merged_children",
    "readdir",
    "sources",
]


Chain = tuple[tuple[int, str], ...]
"""The layers merged at one path, top first, each with the path *within that layer* (the same
path unless a ``redirect`` moved it)."""


@dataclass(frozen=True, slots=True)
class Hit:
    """A merged path: the entry seen there and the index of the layer it comes from.

    ``merged_from`` lists, top first, every layer whose directory is merged at this path (just
    ``(layer,)`` for a non-directory); ``chain`` the same layers with the path in each (they
    differ from the merged path below a redirected dir).
    """

    entry: Entry
    layer: int
    merged_from: tuple[int, ...]
    chain: Chain = ()


def _resolve_child(
    stack: Sequence[LayerView], parent: Chain, name: str
) -> tuple[int, Entry, Chain] | None:
    """The merged entry ``name`` of the dir whose merged layers are ``parent``: (layer, entry,
    chain of the child), or None when hidden or absent. Redirects of dirs are followed: the
    layers below continue at the redirect target."""
    candidates: list[tuple[int, str]] = [(i, join(p, name)) for i, p in parent]
    top: tuple[int, Entry] | None = None
    merged: list[tuple[int, str]] = []
    k = 0
    while k < len(candidates):
        i, path = candidates[k]
        k += 1
        e = stack[i].get(path)
        if e is None:
            continue
        if top is None:
            if e.kind is Kind.WHITEOUT:
                return None
            top = (i, e)
            merged.append((i, path))
            if e.kind is not Kind.DIR or e.opaque:
                break
        elif e.kind is Kind.DIR:
            merged.append((i, path))
            if e.opaque:
                break
        else:  # a whiteout or non-dir under a dir ends the merge
            break
        if e.redirect is not None:
            r = e.redirect
            if r.startswith("/"):
                target = r.strip("/")
                candidates[k:] = [(j, target) for j in range(i + 1, len(stack))]
            else:
                candidates[k:] = [(j, join(p, r)) for j, p in parent if j > i]
    if top is None:
        return None
    return top[0], top[1], tuple(merged)


def _root(stack: Sequence[LayerView]) -> tuple[int, Entry, Chain]:
    merged: list[tuple[int, str]] = []
    for i, layer in enumerate(stack):
        e = layer.get("")
        if e is None or e.kind is not Kind.DIR:
            continue
        merged.append((i, ""))
        if e.opaque:
            break
    if not merged:
        raise InvalidArgument("an empty stack has no root", hint="pass at least one layer")
    first = merged[0][0]
    root = stack[first].get("")
    assert root is not None
    return first, root, tuple(merged)


def _hit(layer: int, entry: Entry, chain: Chain) -> Hit:
    return Hit(entry, layer, tuple(i for i, _ in chain), chain)


def lookup(stack: Sequence[LayerView], path: str) -> Hit | None:
    """The merged entry at ``path`` (``""`` = root), or None when absent, whited out, or below
    a non-directory. Symlinks are not followed."""
    layer, entry, chain = _root(stack)
    if path == "":
        return _hit(layer, entry, chain)
    for name in path.split("/"):
        if entry.kind is not Kind.DIR:
            return None
        found = _resolve_child(stack, chain, name)
        if found is None:
            return None
        layer, entry, chain = found
    return _hit(layer, entry, chain)


def _merged_names(stack: Sequence[LayerView], chain: Chain) -> list[str]:
    names: set[str] = set()
    for i, p in chain:
        names.update(stack[i].children(p))
    return sorted(names)


def merged_children(
    stack: Sequence[LayerView], chain: Chain
) -> list[tuple[str, int, Entry, Chain]]:
    """The visible children of a merged dir given its chain: (name, layer, entry, chain)."""
    out: list[tuple[str, int, Entry, Chain]] = []
    for name in _merged_names(stack, chain):
        found = _resolve_child(stack, chain, name)
        if found is not None:
            out.append((name, *found))
    return out


def readdir(stack: Sequence[LayerView], path: str = "") -> list[str]:
    """Merged names in the dir ``path``, sorted. NotFound / InvalidArgument (not a dir)."""
    hit = lookup(stack, path)
    if hit is None:
        raise NotFound(f"/{path}: no such file or directory in the merged tree")
    if hit.entry.kind is not Kind.DIR:
        raise InvalidArgument(f"/{path}: not a directory")
    return [name for name, *_ in merged_children(stack, hit.chain)]


def _plain(entry: Entry) -> Entry:
    if entry.opaque or entry.redirect is not None:
        return replace(entry, opaque=False, redirect=None)
    return entry


def flatten(stack: Sequence[LayerView]) -> Layer:
    """The merged tree as one layer: no whiteouts, opaque flags or redirects, every visible
    entry as the topmost layer has it (``link_id`` labels are kept as the layers had them)."""
    _, root, chain = _root(stack)
    out: dict[str, Entry] = {"": _plain(root)}
    todo: list[tuple[str, Chain]] = [("", chain)]
    while todo:
        path, parent = todo.pop()
        for name, _, entry, sub in merged_children(stack, parent):
            child = join(path, name)
            out[child] = _plain(entry)
            if entry.kind is Kind.DIR:
                todo.append((child, sub))
    return Layer.trusted(out)


class SourceKind(StrEnum):
    ENTRY = "entry"  # a visible merged entry
    WHITEOUT = "whiteout"  # a whiteout in some layer
    OPAQUE = "opaque"  # an opaque dir that cuts off lower layers' children


@dataclass(frozen=True, slots=True)
class Hidden:
    """An entry of a lower layer that something above hides."""

    path: str
    layer: int


@dataclass(frozen=True, slots=True)
class Source:
    """One line of the teaching view: what is at ``path`` in layer ``layer`` and what it hides.

    * ENTRY: a visible merged entry; ``merged_from`` the layers merged there (dirs); ``hides``
      the same path in lower layers shadowed by it (a copied-up or replaced file).
    * WHITEOUT: a whiteout in ``layer``; ``hides`` the entries at that path in lower layers.
    * OPAQUE: an opaque dir of ``layer`` inside the merge; ``hides`` the lower layers' direct
      children of that dir.
    """

    path: str
    kind: SourceKind
    layer: int
    entry: Entry
    merged_from: tuple[int, ...] = ()
    hides: tuple[Hidden, ...] = ()


def _is_dir(entry: Entry | None) -> bool:
    return entry is not None and entry.kind is Kind.DIR


def _shadowed(stack: Sequence[LayerView], parent: Chain, start: int, name: str) -> list[Hidden]:
    """Non-whiteout entries named ``name`` in the parent's layers below layer ``start``, down
    to the next whiteout (what lies under that is that whiteout's business)."""
    out: list[Hidden] = []
    for i, p in parent:
        if i <= start:
            continue
        path = join(p, name)
        e = stack[i].get(path)
        if e is None:
            continue
        if e.kind is Kind.WHITEOUT:
            break
        out.append(Hidden(path, i))
    return out


def _cut_off(stack: Sequence[LayerView], parent: Chain, last: int, name: str) -> Chain:
    """The layers below ``last`` whose dirs named ``name`` would continue the merge if the
    opaque dir of layer ``last`` were not opaque."""
    out: list[tuple[int, str]] = []
    for i, p in parent:
        if i <= last:
            continue
        path = join(p, name)
        e = stack[i].get(path)
        if e is None:
            continue
        if e.kind is not Kind.DIR:
            break
        out.append((i, path))
        if e.opaque:
            break
    return tuple(out)


def sources(stack: Sequence[LayerView], path: str = "") -> list[Source]:
    """Every merged entry at or under ``path`` with the layer it comes from, plus every
    whiteout and opaque dir in the layers merged there, with what each hides. Sorted by path (a
    dir before its subtree); at one path the ENTRY comes first, then the others by layer.
    ``Hidden.path`` is the path inside the hidden entry's layer.

    Gap: whiteouts and opaque dirs inside a layer's dir that is itself hidden (below a higher
    opaque dir, whiteout or non-dir) are not reported: they change nothing in the merged view.
    """
    hit = lookup(stack, path)
    if hit is None:
        raise NotFound(f"/{path}: no such file or directory in the merged tree")
    out: list[Source] = []
    todo: list[tuple[str, Chain]] = []

    def visit(p: str, layer: int, entry: Entry, chain: Chain, parent: Chain) -> None:
        name = p.rpartition("/")[2]
        merged = tuple(i for i, _ in chain)
        hides = [h for h in _shadowed(stack, parent, layer, name) if h.layer not in merged]
        if entry.kind is Kind.DIR:
            # lower dirs below a dir are merged, or cut off by an opaque dir (its own record)
            hides = [h for h in hides if not _is_dir(stack[h.layer].get(h.path))]
        out.append(Source(p, SourceKind.ENTRY, layer, entry, merged, tuple(hides)))
        if entry.kind is not Kind.DIR:
            return
        last, last_path = chain[-1]
        opaque = stack[last].get(last_path)
        if opaque is not None and opaque.opaque and p != "":
            hidden = [
                Hidden(join(lp, child), i)
                for i, lp in _cut_off(stack, parent, last, name)
                for child in stack[i].children(lp)
                if (ce := stack[i].get(join(lp, child))) is not None and not ce.is_whiteout
            ]
            hidden.sort(key=lambda h: (path_key(h.path), h.layer))
            out.append(Source(p, SourceKind.OPAQUE, last, opaque, merged, tuple(hidden)))
        todo.append((p, chain))

    if path == "":
        parent_chain: Chain = ()
    else:
        parent_hit = lookup(stack, path.rpartition("/")[0])
        assert parent_hit is not None
        parent_chain = parent_hit.chain
    visit(path, hit.layer, hit.entry, hit.chain, parent_chain)
    while todo:
        p, chain = todo.pop()
        for name in _merged_names(stack, chain):
            child = join(p, name)
            for i, lp in chain:
                e = stack[i].get(join(lp, name))
                if e is not None and e.kind is Kind.WHITEOUT:
                    hides = _shadowed(stack, chain, i, name)
                    out.append(Source(child, SourceKind.WHITEOUT, i, e, (), tuple(hides)))
            found = _resolve_child(stack, chain, name)
            if found is not None:
                visit(child, found[0], found[1], found[2], chain)
    order = {SourceKind.ENTRY: 0, SourceKind.WHITEOUT: 1, SourceKind.OPAQUE: 1}
    out.sort(key=lambda s: (path_key(s.path), order[s.kind], s.layer))
    return out
