"""``overunder explain``: one path through every layer, top to bottom, in plain words.

For each layer that holds the path, or hides it (a whiteout at the path, a whiteout or a
non-directory at one of its parents, an opaque parent dir), one line says what is there and
what became of it; the verdict says what the merged view shows and why. Only the entries on
the path are read from each layer (:meth:`LayerStack.probe`), so the answer does not depend
on the size of the image. Gap: redirected dirs (``redirect_dir=on`` upper dirs; image
layers cannot hold them) are not followed to their lower path.
"""

from __future__ import annotations

import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from overunder.errors import InvalidArgument
from overunder.explain.scan import ScannedLayer
from overunder.explain.stack import LayerInfo, LayerStack
from overunder.semantics import Entry, Hit, Kind, Layer, lookup

__all__ = ["LayerFinding", "PathReport", "clean_path", "describe_entry", "explain_path"]


def clean_path(path: str) -> str:
    """``/etc//passwd/`` -> ``etc/passwd`` (``""`` = root). ``..`` is refused: the explorer
    never resolves symlinks or parents silently (``cat`` does, inside the image)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise InvalidArgument(
            f"{path!r}: '..' is not allowed here",
            hint="give the path as the image sees it, e.g. /usr/lib/x",
        )
    return "/".join(parts)


def describe_entry(e: Entry) -> str:
    """``regular file, 1234 bytes, -rw-r--r-- 0:0`` and the like."""
    perms = stat.filemode(_type_bits(e.kind) | e.meta.mode)
    owner = f"{e.meta.uid}:{e.meta.gid}"
    if e.kind is Kind.FILE:
        return f"regular file, {e.size} bytes, {perms} {owner}"
    if e.kind is Kind.DIR:
        extra = ", opaque" if e.opaque else ""
        return f"directory{extra}, {perms} {owner}"
    if e.kind is Kind.SYMLINK:
        return f"symlink -> {e.target}"
    if e.kind in (Kind.CHARDEV, Kind.BLOCKDEV):
        major, minor = e.rdev or (0, 0)
        return f"{e.kind} {major},{minor}, {perms} {owner}"
    return f"{e.kind}, {perms} {owner}"


def _type_bits(kind: Kind) -> int:
    return {
        Kind.FILE: stat.S_IFREG,
        Kind.DIR: stat.S_IFDIR,
        Kind.SYMLINK: stat.S_IFLNK,
        Kind.CHARDEV: stat.S_IFCHR,
        Kind.BLOCKDEV: stat.S_IFBLK,
        Kind.FIFO: stat.S_IFIFO,
        Kind.SOCKET: stat.S_IFSOCK,
    }.get(kind, 0)


@dataclass(frozen=True, slots=True)
class LayerFinding:
    """What one layer has to do with the path. ``role``: ``shown`` (the merged view's entry),
    ``merged`` (a dir merged into the shown one), ``hidden`` (present, but something above
    hides it), ``deletes`` (a whiteout at the path), ``hides`` (a whiteout, a non-dir or an
    opaque dir at a parent), ``inert`` (a whiteout with nothing below to delete)."""

    layer: LayerInfo
    role: str
    what: str
    why: str = ""
    form: str = ""  # the whiteout's on-disk form

    def to_dict(self) -> dict[str, Any]:
        return {
            "Layer": self.layer.name,
            "Role": self.role,
            "What": self.what,
            "Why": self.why,
            "WhiteoutForm": self.form or None,
            "LayerInfo": self.layer.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class PathReport:
    path: str  # "/etc/localtime"
    stack: LayerStack
    findings: list[LayerFinding]  # top first
    shown: LayerInfo | None
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "Path": self.path,
            "Object": {k: v for k, v in self.stack.to_dict().items() if k != "Layers"},
            "Layers": [f.to_dict() for f in self.findings],
            "ShownFrom": self.shown.name if self.shown else None,
            "Verdict": self.verdict,
        }


def _blocker(layer: Layer, rel: str) -> tuple[str, str] | None:
    """A parent of ``rel`` in ``layer`` that hides ``rel`` of the layers below: (kind, path)."""
    parts = rel.split("/")
    for n in range(1, len(parts)):
        anc = "/".join(parts[:n])
        e = layer.get(anc)
        if e is None:
            return None
        if e.kind is Kind.WHITEOUT:
            return "whiteout", "/" + anc
        if e.kind is not Kind.DIR:
            return "non-dir", "/" + anc
        if e.opaque:
            return "opaque", "/" + anc
    return None


def _closest_cut(layers: Sequence[Layer], i: int, rel: str, mine: Entry) -> int | None:
    """The closest layer above ``i`` that hides layer ``i``'s entry at ``rel``."""
    for k in range(i - 1, -1, -1):
        if _blocker(layers[k], rel) is not None:
            return k
        x = layers[k].get(rel)
        if x is None:
            continue
        if x.kind is not Kind.DIR or x.opaque or mine.kind is not Kind.DIR:
            return k
    return None


def _hider_words(info: LayerInfo, layer: Layer, rel: str) -> str:
    """Why ``rel`` of lower layers is hidden by ``layer`` (it is known to hide it)."""
    b = _blocker(layer, rel)
    if b is not None:
        kind, anc = b
        if kind == "whiteout":
            return f"{anc} is deleted (whiteout) in {info.name}"
        if kind == "non-dir":
            return f"{anc} is not a directory in {info.name}"
        return f"{anc} is an opaque dir in {info.name}: nothing below it shows through"
    e = layer.get(rel)
    assert e is not None
    if e.kind is Kind.WHITEOUT:
        return f"deleted by the whiteout in {info.name}"
    if e.kind is Kind.DIR and e.opaque:
        return f"{info.name} has an opaque dir here"
    return f"{info.name}'s copy is on top"


def explain_path(stack: LayerStack, path: str, scanned: Sequence[ScannedLayer]) -> PathReport:
    """Explain ``path`` in ``stack`` whose layers were probed for it (``stack.probe``)."""
    rel = clean_path(path)
    shown_path = "/" + rel
    layers = [s.layer for s in scanned]
    hit = lookup(layers, rel)
    merged = set(hit.merged_from) if hit is not None else set()
    findings: list[LayerFinding] = []
    hider: int | None = None  # the topmost layer that hides the path for those below it
    for i, (info, layer) in enumerate(zip(stack.layers, layers, strict=True)):
        blocked_by_above = hider is not None
        b = _blocker(layer, rel)
        e = layer.get(rel) if b is None or b[0] == "opaque" else None
        if b is not None and b[0] == "opaque" and e is None:
            # an opaque parent with nothing at the path hides the lower layers' copies
            if any(lw.get(rel) is not None for lw in layers[i + 1 :]):
                findings.append(
                    LayerFinding(
                        info,
                        "hides",
                        f"opaque dir {b[1]}",
                        f"hides {shown_path} of the layers below: {b[1]} is opaque here",
                    )
                )
                if hider is None:
                    hider = i
            continue
        if b is not None and b[0] != "opaque":
            if any(lw.get(rel) is not None for lw in layers[i + 1 :]):
                what = f"{'whiteout' if b[0] == 'whiteout' else 'a non-directory'} at {b[1]}"
                findings.append(
                    LayerFinding(
                        info,
                        "hides",
                        what,
                        f"hides {shown_path} of the layers below",
                        scanned[i].whiteout_forms.get(b[1].lstrip("/"), ""),
                    )
                )
                if hider is None:
                    hider = i
            continue
        if e is None:
            continue
        if e.kind is Kind.WHITEOUT:
            form = scanned[i].whiteout_forms.get(rel, "")
            below = lookup(layers[i + 1 :], rel) if i + 1 < len(layers) else None
            if blocked_by_above:
                findings.append(
                    LayerFinding(info, "inert", "whiteout", "inert: itself hidden from above", form)
                )
            elif below is None:
                findings.append(
                    LayerFinding(info, "inert", "whiteout", "inert: nothing below to delete", form)
                )
            else:
                findings.append(
                    LayerFinding(
                        info,
                        "deletes",
                        "whiteout",
                        f"deletes {shown_path} from the layers below",
                        form,
                    )
                )
            if hider is None:
                hider = i
            continue
        what = describe_entry(e)
        if hit is not None and i == hit.layer:
            findings.append(LayerFinding(info, "shown", what, "shown in the merged view"))
        elif i in merged:
            findings.append(
                LayerFinding(info, "merged", what, "merged into the directory shown above")
            )
        else:
            k = _closest_cut(layers, i, rel, e)
            why = (
                "hidden"
                if k is None
                else f"hidden: {_hider_words(stack.layers[k], layers[k], rel)}"
            )
            findings.append(LayerFinding(info, "hidden", what, why))
        if hider is None and (e.kind is not Kind.DIR or e.opaque):
            hider = i
    verdict = _verdict(stack, shown_path, hit, findings)
    if hit is None:
        verdict += _symlink_hint(layers, rel)
    return PathReport(
        shown_path, stack, findings, stack.layers[hit.layer] if hit else None, verdict
    )


def _symlink_hint(layers: Sequence[Layer], rel: str) -> str:
    """When a parent of ``rel`` is a symlink in the merged view, say so: explain shows layers
    as they are stored and does not follow it."""
    parts = rel.split("/")
    for n in range(1, len(parts)):
        anc = "/".join(parts[:n])
        h = lookup(layers, anc)
        if h is None:
            return ""
        if h.entry.kind is Kind.SYMLINK:
            return (
                f" Note: /{anc} is a symlink to {h.entry.target} in the merged view; explain "
                "does not follow symlinks, so ask for the path it points to."
            )
    return ""


def _verdict(stack: LayerStack, path: str, hit: Hit | None, findings: list[LayerFinding]) -> str:
    what = "the image" if stack.kind == "image" else "the container"
    if hit is not None:
        src = stack.layers[hit.layer]
        desc = describe_entry(hit.entry)
        if len(hit.merged_from) > 1:
            names = ", ".join(stack.layers[i].name for i in hit.merged_from)
            return (
                f"{path} in {what} is a directory merged from {names}; "
                f"its metadata comes from {src.name}."
            )
        hidden = [f for f in findings if f.role == "hidden"]
        tail = ""
        if hidden:
            tail = (
                " Below it, "
                + "; ".join(f"{f.layer.name} still holds a copy" for f in hidden)
                + "."
            )
        return f"{path} in {what} comes from {src.label()}: {desc}.{tail}"
    stops = [f for f in findings if f.role in ("deletes", "hides")]
    kept = [f for f in findings if f.role == "hidden"]
    if not stops and not kept:
        return f"{path} does not exist in any layer of {what}."
    msg = f"{path} does not exist in {what}'s merged view"
    if stops:
        top = stops[0]
        msg += f": {top.layer.label()} {'deletes it' if top.role == 'deletes' else 'hides it'}"
        if top.form:
            msg += f" (whiteout stored as {top.form})"
    msg += "."
    if kept:
        msg += (
            " Its bytes are still stored in "
            + ", ".join(f"{f.layer.name} ({f.layer.dir / path.lstrip('/')})" for f in kept)
            + "."
        )
    return msg
