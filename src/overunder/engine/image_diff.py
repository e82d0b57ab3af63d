"""``diff A B``: what changed from one tree to another, by path, with sizes and the layer of
``B`` that made each change. Each side is a container (its merged tree: upper dir, init layer,
image layers) or an image (its layers); a name is looked up as a container first, then as an
image, like ``inspect`` does.

The trees are flattened (:func:`overunder.semantics.flatten`) and compared with Docker's rules
(:func:`overunder.semantics.diff_trees`, docker-compat.md §3): metadata, not content. The layer
credited with a change is the topmost layer of ``B`` holding the entry (``A``, ``C``), or the
topmost one whose whiteout, opaque dir or non-dir hides it (``D``); none when ``B`` simply never
had it (two unrelated trees).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from overunder.engine.container_diff import StatEntry, stat_changes
from overunder.engine.container_mount import container_layers
from overunder.engine.containers import find_container
from overunder.engine.images import layer_dirs, load_config, stores
from overunder.engine.paths import EnginePaths
from overunder.errors import NotFound
from overunder.image.ids import short_id
from overunder.layerfs.reader import read_layer
from overunder.semantics import ChangeKind, Kind, Layer, diff_trees, flatten, lookup

__all__ = ["LayerLabel", "Tree", "TreeChange", "diff_objects", "load_tree"]


@dataclass(frozen=True, slots=True)
class LayerLabel:
    """A layer of a tree: ``index`` counted from the bottom (0 = base layer), what it is."""

    index: int
    diff_id: str | None
    created_by: str
    kind: str  # "image layer" | "init layer" | "container"

    def __str__(self) -> str:
        if self.kind == "container":
            return "container (upper dir)"
        if self.kind == "init layer":
            return "init layer"
        ident = short_id(self.diff_id) if self.diff_id else "?"
        by = self.created_by or "-"
        if len(by) > 45:
            by = by[:44] + "…"
        return f"layer {self.index} {ident} {by}"

    def to_json(self) -> dict[str, Any]:
        return {
            "Index": self.index,
            "Kind": self.kind,
            "DiffID": self.diff_id,
            "CreatedBy": self.created_by,
        }


@dataclass(frozen=True, slots=True)
class Tree:
    """One side of the comparison: its layers top first, with a label for each."""

    name: str
    kind: str  # "container" | "image"
    ident: str
    layers: list[Layer]
    labels: list[LayerLabel]


@dataclass(frozen=True, slots=True)
class TreeChange:
    stat: StatEntry
    layer: LayerLabel | None

    def to_json(self) -> dict[str, Any]:
        d = self.stat.to_json()
        d["Layer"] = self.layer.to_json() if self.layer else None
        return d


def _image_labels(paths: EnginePaths, image_id: str) -> list[LayerLabel]:
    s = stores(paths)
    cfg = load_config(s, image_id)
    steps = [h for h in cfg.history if not h.get("empty_layer")]
    diff_ids = cfg.diff_ids
    labels = []
    for i, d in enumerate(diff_ids):
        by = ""
        if len(steps) == len(diff_ids):
            by = str(steps[i].get("created_by") or steps[i].get("comment") or "")
        labels.append(LayerLabel(i, d, by, "image layer"))
    return labels[::-1]  # top first


def load_tree(paths: EnginePaths, name: str) -> Tree:
    """The tree named ``name``: a container first, then an image. NotFound when neither."""
    try:
        rec = find_container(paths, name)
    except NotFound:
        rec = None
    if rec is not None:
        dirs = container_layers(paths, rec)
        layers = [read_layer(dirs.upper, with_data=False)]
        layers += [read_layer(d, with_data=False) for d in dirs.lowers]
        image_labels = _image_labels(paths, rec.image_id)
        n = len(image_labels)
        labels = [
            LayerLabel(n + dirs.init_layers, None, " ".join([rec.path, *rec.args]), "container")
        ]
        if dirs.init_layers:
            labels.append(LayerLabel(n, None, "", "init layer"))
        labels += image_labels
        return Tree(name, "container", rec.id, layers, labels)
    s = stores(paths)
    try:
        img = s.images.resolve(name)
    except NotFound:
        raise NotFound(
            f"No such container or image: {name}",
            hint="see 'overunder ps -a' and 'overunder images'",
        ) from None
    cfg = load_config(s, img.id)
    layers = [read_layer(d, with_data=False) for d in reversed(layer_dirs(s, cfg))]
    return Tree(name, "image", img.id, layers, _image_labels(paths, img.id))


def _hider(stack: Sequence[Layer], rel: str) -> int | None:
    """The topmost layer whose whiteout, opaque dir or non-dir hides ``rel``."""
    parts = rel.split("/")
    for i, layer in enumerate(stack):
        e = layer.get(rel)
        if e is not None and e.kind is Kind.WHITEOUT:
            return i
        for k in range(1, len(parts) + 1):
            p = "/".join(parts[:k])
            a = layer.get(p)
            if a is None:
                continue
            if a.kind is Kind.WHITEOUT or (k < len(parts) and a.kind is not Kind.DIR):
                return i
            if a.kind is Kind.DIR and a.opaque:
                return i
    return None


def diff_objects(paths: EnginePaths, a: str, b: str) -> tuple[Tree, Tree, list[TreeChange]]:
    """Changes from tree ``a`` to tree ``b``, sorted by path."""
    ta, tb = load_tree(paths, a), load_tree(paths, b)
    old, new = flatten(ta.layers), flatten(tb.layers)
    changes = diff_trees(old, new)
    stats = stat_changes(new, [old], changes)
    out = []
    for c, st in zip(changes, stats.entries, strict=True):
        rel = c.path.lstrip("/")
        if c.kind is ChangeKind.DELETE:
            idx = _hider(tb.layers, rel)
        else:
            hit = lookup(tb.layers, rel)
            idx = hit.layer if hit is not None else None
        out.append(TreeChange(st, tb.labels[idx] if idx is not None else None))
    return ta, tb, out
