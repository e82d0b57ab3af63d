"""``overunder layers``: what each layer did, and the space the stack wastes, counted once.

For every layer: its size (regular files and symlinks, hard links once), how many entries it
added, changed and deleted relative to the layers below it, and how many of its bytes later
layers hide (replaced, re-copied for a chmod/chown, deleted, or cut off by an opaque dir).

**Waste, counted once.** A byte is wasted when it is stored in a layer but the merged view
never shows it: the hidden bytes above, summed over the layers. Each hidden copy is counted
once, and the copy the merged view shows is never counted, so a file written in layer 2 and
chmod-ed in layer 3 wastes exactly one copy (dive counts both: wagoodman/dive#684). Every
wasted copy comes with its reason, naming the layer that caused it. ``efficiency`` is the
share of stored bytes the merged view shows (1.0 = nothing wasted).

Gaps: contents are not hashed, so a copy rewritten with the same size, mode and owner is
reported as "re-copied (same size)" without saying whether the bytes are identical; the
layer's own metadata-only changes of directories count as "changed" only when mode or owner
differ (a dir listed again to hold new children is not a change); redirected dirs
(``redirect_dir=on`` upper dirs, never in image layers) are not followed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from overunder.explain.scan import ScannedLayer
from overunder.explain.stack import LayerInfo, LayerStack
from overunder.semantics import Entry, Kind, Layer, join, lookup, merged_children

__all__ = ["KIND_WORDS", "LayerRow", "LayersReport", "Waste", "analyze_layers", "visible_layers"]

KIND_WORDS = {
    "chmod": "chmod re-copy",
    "chown": "chown re-copy",
    "rewritten": "re-copy, same size",
    "replaced": "replaced",
    "deleted": "deleted",
    "deleted-parent": "parent dir deleted",
    "opaque": "opaque dir",
    "parent-replaced": "parent not a dir",
}
"""How each kind of waste is named in the text output."""


@dataclass(frozen=True, slots=True)
class Waste:
    """One hidden copy: ``size`` bytes of ``path`` stored in ``layer`` that the merged view
    never shows, because of what ``cause`` did (``kind``: chmod, chown, rewritten, replaced,
    deleted, deleted-parent, opaque, parent-replaced)."""

    path: str  # "/usr/lib/big.so"
    size: int
    layer: LayerInfo
    cause: LayerInfo
    kind: str
    detail: str = ""

    def reason(self) -> str:
        c = self.cause.name
        if self.kind in ("chmod", "chown", "rewritten"):
            what = {"chmod": "chmod", "chown": "chown", "rewritten": "rewrite"}[self.kind]
            return f"{what} re-copied {self.path} in {c} ({self.detail})"
        if self.kind == "replaced":
            return f"replaced {self.path} in {c} ({self.detail})"
        if self.kind == "deleted":
            return f"deleted in {c}: {self.path}"
        if self.kind == "deleted-parent":
            return f"deleted with {self.detail} in {c}: {self.path}"
        if self.kind == "opaque":
            return f"hidden by opaque dir {self.detail} in {c}: {self.path}"
        return f"hidden by {self.detail} (not a dir) in {c}: {self.path}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "Path": self.path,
            "Size": self.size,
            "Layer": self.layer.name,
            "Cause": self.cause.name,
            "Kind": self.kind,
            "Reason": self.reason(),
        }


@dataclass(slots=True)
class LayerRow:
    info: LayerInfo
    size: int = 0
    files: int = 0
    added: int = 0
    changed: int = 0
    deleted: int = 0
    hidden: int = 0  # bytes of this layer that later layers hide

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.info.to_dict(),
            "Size": self.size,
            "Entries": self.files,
            "Added": self.added,
            "Changed": self.changed,
            "Deleted": self.deleted,
            "HiddenBytes": self.hidden,
        }


@dataclass
class LayersReport:
    stack: LayerStack
    rows: list[LayerRow]  # top first
    waste: list[Waste] = field(default_factory=list)  # biggest first

    @property
    def total(self) -> int:
        return sum(r.size for r in self.rows)

    @property
    def wasted(self) -> int:
        return sum(w.size for w in self.waste)

    @property
    def efficiency(self) -> float:
        return 1.0 if self.total == 0 else (self.total - self.wasted) / self.total

    def by_cause(self) -> list[tuple[LayerInfo, str, int, int]]:
        """(cause layer, kind, copies, bytes), biggest first."""
        groups: dict[tuple[str, str], list[Waste]] = {}
        for w in self.waste:
            groups.setdefault((w.cause.name, w.kind), []).append(w)
        out = [
            (ws[0].cause, kind, len(ws), sum(w.size for w in ws))
            for (_, kind), ws in groups.items()
        ]
        out.sort(key=lambda g: (-g[3], g[0].name, g[1]))
        return out

    def to_dict(self, *, top: int | None = None) -> dict[str, Any]:
        items = self.waste if top is None else self.waste[:top]
        return {
            **{k: v for k, v in self.stack.to_dict().items() if k != "Layers"},
            "Layers": [r.to_dict() for r in self.rows],
            "TotalSize": self.total,
            "WastedBytes": self.wasted,
            "Efficiency": round(self.efficiency, 6),
            "WasteByCause": [
                {"Cause": c.name, "Kind": k, "Copies": n, "Bytes": b}
                for c, k, n, b in self.by_cause()
            ],
            "Waste": [w.to_dict() for w in items],
            "WasteListed": len(items),
            "WasteCopies": len(self.waste),
        }


def _bytes(entry: Entry) -> int:
    return entry.size if entry.kind in (Kind.FILE, Kind.SYMLINK) else 0


def visible_layers(stack: Sequence[Layer]) -> dict[str, int]:
    """Every path of the merged tree -> the index of the layer its entry comes from."""
    root = lookup(stack, "")
    assert root is not None
    out = {"": root.layer}
    todo = [("", root.chain)]
    while todo:
        path, chain = todo.pop()
        for name, layer, entry, sub in merged_children(stack, chain):
            child = join(path, name)
            out[child] = layer
            if entry.kind is Kind.DIR:
                todo.append((child, sub))
    return out


def _mode_detail(old: Entry, new: Entry) -> tuple[str, str]:
    """(kind, detail) of a re-copy that kept the size."""
    if old.meta.mode != new.meta.mode:
        return "chmod", f"{old.meta.mode:04o} -> {new.meta.mode:04o}"
    if (old.meta.uid, old.meta.gid) != (new.meta.uid, new.meta.gid):
        return "chown", (f"{old.meta.uid}:{old.meta.gid} -> {new.meta.uid}:{new.meta.gid}")
    return "rewritten", "same size, mode and owner"


def _cause(stack: Sequence[Layer], i: int, path: str, old: Entry) -> tuple[int, str, str] | None:
    """The lowest layer above ``i`` that hides ``path``: (index, kind, detail)."""
    parts = path.split("/")
    for k in range(i - 1, -1, -1):
        layer = stack[k]
        # an ancestor cut off first: a whiteout, a non-dir, an opaque dir on the way
        for n in range(1, len(parts)):
            anc = "/".join(parts[:n])
            a = layer.get(anc)
            if a is None:
                continue
            if a.kind is Kind.WHITEOUT:
                return k, "deleted-parent", "/" + anc
            if a.kind is not Kind.DIR:
                return k, "parent-replaced", "/" + anc
            if a.opaque:
                return k, "opaque", "/" + anc
        e = layer.get(path)
        if e is None:
            continue
        if e.kind is Kind.WHITEOUT:
            return k, "deleted", ""
        if e.kind is Kind.DIR and e.opaque and old.kind is Kind.DIR:
            return k, "opaque", "/" + path
        if e.kind is old.kind and e.size == old.size and e.kind is Kind.FILE:
            kind, detail = _mode_detail(old, e)
            return k, kind, detail
        if e.kind is Kind.FILE and old.kind is Kind.FILE:
            return k, "replaced", f"{old.size} -> {e.size} bytes"
        return k, "replaced", f"{old.kind} -> {e.kind}"
    return None


def analyze_layers(stack: LayerStack, scanned: Sequence[ScannedLayer]) -> LayersReport:
    """The report for ``stack`` whose layers were read into ``scanned`` (top first)."""
    layers = [s.layer for s in scanned]
    if not layers:  # an image without layers (a bare config) stores nothing
        return LayersReport(stack, [])
    visible = visible_layers(layers)
    rows: list[LayerRow] = []
    waste: list[Waste] = []
    n = len(layers)
    for i, layer in enumerate(layers):
        row = LayerRow(stack.layers[i])
        below = layers[i + 1 :]
        groups: dict[str, list[tuple[str, Entry]]] = {}
        for path, entry in layer.items():
            if path == "":
                continue
            if entry.link_id is not None and entry.kind is not Kind.DIR:
                groups.setdefault(entry.link_id, []).append((path, entry))
            else:
                groups[path] = [(path, entry)]
            if entry.kind is not Kind.WHITEOUT:
                row.files += 1
            if not below:
                if entry.kind is not Kind.WHITEOUT:
                    row.added += 1
                continue
            hit = lookup(below, path)
            if entry.kind is Kind.WHITEOUT:
                if hit is not None:
                    row.deleted += 1
            elif hit is None:
                row.added += 1
            elif entry.kind is Kind.DIR and hit.entry.kind is Kind.DIR:
                m, o = entry.meta, hit.entry.meta
                if (m.mode, m.uid, m.gid) != (o.mode, o.uid, o.gid):
                    row.changed += 1
                if entry.opaque:
                    mine = set(layer.children(path))
                    row.deleted += sum(
                        1 for c in merged_children(below, hit.chain) if c[0] not in mine
                    )
            else:
                row.changed += 1
        for members in groups.values():
            path, entry = members[0]
            size = _bytes(entry)
            row.size += size
            if size == 0 or any(visible.get(p) == i for p, _ in members):
                continue
            row.hidden += size
            cause = _cause(layers, i, path, entry)
            if cause is None:  # cannot happen for a consistent stack; stay honest if it does
                continue
            k, kind, detail = cause
            waste.append(Waste("/" + path, size, stack.layers[i], stack.layers[k], kind, detail))
        rows.append(row)
    assert len(rows) == n
    waste.sort(key=lambda w: (-w.size, w.path))
    return LayersReport(stack, rows, waste)
