"""What the explorer looks at: an image's or a container's layers, top first, with names a
person can follow and the build step that made each one.

Image layers are numbered from the bottom (``layer 1`` is the base, as they were built); a
container adds its ``init`` layer (Docker's ``<id>-init``) and its ``upper`` dir on top.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overunder.explain.scan import ScannedLayer, probe, scan_layer
from overunder.semantics import Layer

__all__ = ["LayerInfo", "LayerStack", "container_layer_infos", "image_layer_infos", "match_history"]


@dataclass(frozen=True, slots=True)
class LayerInfo:
    """One layer of a stack. ``role`` is ``image``, ``init`` or ``upper``; ``number`` counts
    image layers from the bottom (1 = base) and is 0 for the container's own layers."""

    name: str  # "layer 3", "init", "upper"
    role: str
    number: int
    dir: Path
    diff_id: str | None = None
    created_by: str = ""
    created: str = ""
    comment: str = ""

    @property
    def short(self) -> str:
        """``sha256:`` digest shortened to 12 hex, or the name for container layers."""
        if self.diff_id:
            return self.diff_id.removeprefix("sha256:")[:12]
        return self.name

    def label(self) -> str:
        """``layer 2 (3f1c0b9e2a7d)`` - how the views name a layer in sentences."""
        if self.role == "image":
            return f"{self.name} ({self.short})"
        if self.role == "init":
            return "the init layer"
        return "the container's upper dir"

    def to_dict(self) -> dict[str, Any]:
        return {
            "Name": self.name,
            "Role": self.role,
            "Number": self.number,
            "DiffID": self.diff_id,
            "CreatedBy": self.created_by,
            "Created": self.created,
            "Comment": self.comment,
            "Dir": str(self.dir),
        }


def match_history(history: Sequence[Mapping[str, Any]], n_layers: int) -> list[Mapping[str, Any]]:
    """The history entry of each layer, bottom first.

    History entries marked ``empty_layer`` (ENV, CMD, LABEL ...) made no layer and are
    skipped; the others belong to the layers in order. When an image's history does not hold
    exactly one non-empty entry per layer (hand-made configs), the entries that can be matched
    bottom-up are used and the rest get ``{}``.
    """
    steps = [h for h in history if not h.get("empty_layer")]
    out: list[Mapping[str, Any]] = list(steps[:n_layers])
    out += [{} for _ in range(n_layers - len(out))]
    return out


def image_layer_infos(
    dirs_bottom_first: Sequence[Path],
    diff_ids: Sequence[str],
    history: Sequence[Mapping[str, Any]],
) -> list[LayerInfo]:
    """Infos for an image's layers, **top first** (the stack order)."""
    steps = match_history(history, len(dirs_bottom_first))
    infos = []
    for i, d in enumerate(dirs_bottom_first):
        h = steps[i]
        infos.append(
            LayerInfo(
                name=f"layer {i + 1}",
                role="image",
                number=i + 1,
                dir=d,
                diff_id=diff_ids[i] if i < len(diff_ids) else None,
                created_by=str(h.get("created_by") or ""),
                created=str(h.get("created") or ""),
                comment=str(h.get("comment") or ""),
            )
        )
    return infos[::-1]


def container_layer_infos(
    upper: Path, init: Path | None, image_infos: Sequence[LayerInfo], command: str
) -> list[LayerInfo]:
    """A container's stack, top first: its upper dir, its init layer, the image's layers."""
    out = [LayerInfo("upper", "upper", 0, upper, created_by=command)]
    if init is not None:
        out.append(LayerInfo("init", "init", 0, init, created_by="(init layer: /etc/hosts …)"))
    return out + list(image_infos)


@dataclass(frozen=True)
class LayerStack:
    """An image or container as layers, top first. ``kind`` is ``image`` or ``container``;
    ``ident`` its full id; ``name`` what the person typed."""

    name: str
    kind: str
    ident: str
    layers: list[LayerInfo]

    def scan(self, under: str = "", *, meta: bool = True) -> list[ScannedLayer]:
        """Every layer read (the subtree ``under`` only, when given), top first; ``meta=False``
        skips what only sizes and modes need (see :func:`scan_layer`)."""
        return [scan_layer(info.dir, under=under, meta=meta) for info in self.layers]

    def probe(self, rel: str) -> list[ScannedLayer]:
        """Only the entries on the path ``rel`` in each layer, top first."""
        return [probe(info.dir, rel) for info in self.layers]

    @staticmethod
    def stack_of(scanned: Sequence[ScannedLayer]) -> list[Layer]:
        return [s.layer for s in scanned]

    def to_dict(self) -> dict[str, Any]:
        return {
            "Name": self.name,
            "Kind": self.kind,
            "Id": self.ident,
            "Layers": [layer.to_dict() for layer in self.layers],
        }
