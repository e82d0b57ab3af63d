"""Reading files out of an image without running (or mounting) anything.

:func:`resolve` walks a path through the merged view of a stack the way a process chrooted at
the image's root would: symlinks, absolute or relative, are followed *inside* the image
(``..`` stops at its root), across layers, and whiteouts and opaque dirs hide what they hide.
Only the entries on the way are read from each layer (:func:`~overunder.explain.scan.probe`).
The answer names the layer holding the final entry and the path inside that layer dir.

:func:`open_file` opens that file from its layer dir with
:func:`overunder.layerfs.safepath.open_in_root`, so even a layer dir changing under us (a
running container's upper dir) cannot lead the open outside it. :func:`iter_tree` lists a
merged subtree with each entry's source layer, for copying a directory out.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from overunder.errors import InvalidArgument, NotFound
from overunder.explain.scan import ScannedLayer
from overunder.explain.stack import LayerStack
from overunder.layerfs.safepath import MAX_SYMLINKS, open_in_root, open_root
from overunder.semantics import Entry, Hit, Kind, Source, SourceKind, join, lookup, sources

__all__ = ["Resolved", "TreeItem", "iter_tree", "open_file", "resolve"]


@dataclass(frozen=True, slots=True)
class Resolved:
    """``path`` (clean, relative, symlinks resolved) shows ``entry`` from ``stack.layers[layer]``,
    stored at ``layer_path`` inside that layer's dir."""

    path: str
    entry: Entry
    layer: int
    layer_path: str
    layer_dir: Path


def resolve(stack: LayerStack, path: str, *, follow_last: bool = True) -> Resolved:
    """Resolve ``path`` in the merged view of ``stack`` (see the module docstring).

    NotFound names the path (and the missing component); InvalidArgument for a symlink loop.
    """
    cache: dict[str, list[ScannedLayer]] = {}

    def hit_of(rel: str) -> Hit | None:
        if rel not in cache:
            cache[rel] = stack.probe(rel)
        return lookup([s.layer for s in cache[rel]], rel)

    todo = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while todo:
        name = todo.pop(0)
        if name == "..":
            if done:
                done.pop()
            continue
        rel = "/".join([*done, name])
        hit = hit_of(rel)
        if hit is None:
            raise NotFound(
                f"{path}: no such file or directory in {stack.name}"
                + (f" (/{rel} does not exist)" if rel != path.strip("/") else ""),
                hint=f"'overunder explain {stack.name} /{rel}' says which layer has or hides it",
            )
        entry = hit.entry
        if entry.kind is Kind.SYMLINK and (todo or follow_last):
            hops += 1
            if hops > MAX_SYMLINKS:
                raise InvalidArgument(
                    f"{path}: too many levels of symbolic links in {stack.name}",
                    hint="the image has a symlink loop on this path",
                )
            target = entry.target or ""
            if target.startswith("/"):
                done = []
            todo = [p for p in target.split("/") if p not in ("", ".")] + todo
            continue
        if todo and entry.kind is not Kind.DIR:
            raise NotFound(
                f"{path}: /{rel} is not a directory in {stack.name}",
                hint="check the path",
            )
        done.append(name)
    rel = "/".join(done)
    hit = hit_of(rel)
    assert hit is not None
    layer_path = hit.chain[0][1] if hit.chain else rel
    return Resolved(rel, hit.entry, hit.layer, layer_path, stack.layers[hit.layer].dir)


def open_file(r: Resolved) -> int:
    """A read-only fd of the resolved regular file (the caller closes it)."""
    if r.entry.kind is not Kind.FILE:
        raise InvalidArgument(
            f"/{r.path} is a {r.entry.kind}, not a regular file",
            hint="cat reads regular files; use 'overunder tree' for directories",
        )
    root_fd = open_root(r.layer_dir)
    try:
        return open_in_root(root_fd, r.layer_path, os.O_RDONLY | os.O_CLOEXEC, follow_last=False)
    except FileNotFoundError as err:
        raise NotFound(
            f"/{r.path} vanished from {r.layer_dir}", hint="the layer changed while reading it"
        ) from err
    finally:
        os.close(root_fd)


@dataclass(frozen=True, slots=True)
class TreeItem:
    """An entry of a merged subtree: ``path`` relative to the subtree's top (``""`` = the top
    itself), its entry, and where its bytes are (``layer_dir / layer_path``)."""

    path: str
    entry: Entry
    layer_dir: Path
    layer_path: str


def iter_tree(stack: LayerStack, top: Resolved) -> Iterator[TreeItem]:
    """The merged subtree at ``top`` (already resolved), parents before children."""
    if top.entry.kind is not Kind.DIR:
        yield TreeItem("", top.entry, top.layer_dir, top.layer_path)
        return
    scanned = stack.scan(under=top.path)
    layers = [s.layer for s in scanned]
    srcs: list[Source] = sources(layers, top.path)
    cut = len(top.path) + 1 if top.path else 0
    for s in srcs:
        if s.kind is not SourceKind.ENTRY:
            continue
        rel = s.path[cut:] if s.path != top.path else ""
        yield TreeItem(rel, s.entry, stack.layers[s.layer].dir, join("", s.path))
