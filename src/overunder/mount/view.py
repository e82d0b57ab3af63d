"""The teaching view over an overlay: which layer every merged entry comes from, and what each
whiteout and opaque dir hides (``overunder overlay tree``).

The layers are read from their directories (:func:`overunder.layerfs.reader.read_layer`), not
through the mount, and merged with the pure rules (:func:`overunder.semantics.sources`), so the
view works on a mounted overlay, an unmounted one, and a FUSE one alike.

Layers are named as a person reads ``lowerdir=``: ``upper``, then ``lower 1`` (the leftmost,
topmost lowerdir), ``lower 2`` … down to the bottom.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from overunder.errors import InvalidArgument, NotFound, Unsupported
from overunder.layerfs.reader import read_layer
from overunder.layerfs.whiteout import OCI_WHITEOUT_PREFIX
from overunder.mount.options import OverlayOptions, parse_overlay_options
from overunder.mount.types import MountEntry
from overunder.semantics import Kind, Layer, Source, SourceKind, sources

__all__ = ["HiddenRef", "LayerRef", "OverlayTree", "TreeEntry", "options_of_mount", "overlay_tree"]


@dataclass(frozen=True, slots=True)
class LayerRef:
    name: str  # "upper", "lower 1", …
    dir: Path

    def to_dict(self) -> dict[str, object]:
        return {"Name": self.name, "Dir": str(self.dir)}


@dataclass(frozen=True, slots=True)
class HiddenRef:
    path: str  # "/etc/localtime"
    layer: LayerRef

    def to_dict(self) -> dict[str, object]:
        return {"Path": self.path, "Layer": self.layer.name, "Dir": str(self.layer.dir)}


@dataclass(frozen=True, slots=True)
class TreeEntry:
    """One path of the view. ``kind`` is the merged entry's kind, or ``whiteout`` for a name
    that exists only as whiteouts. ``layer`` is where the visible entry comes from;
    ``merged_from`` the layers whose dirs merge there; ``hides`` what it shadows below
    (a replaced or copied-up file). ``whiteouts`` lists (layer, on-disk form, what it hides);
    ``opaque`` is set when the dir is opaque in ``opaque.layer``."""

    path: str
    kind: str
    layer: LayerRef | None
    merged_from: tuple[LayerRef, ...] = ()
    hides: tuple[HiddenRef, ...] = ()
    target: str | None = None
    whiteouts: tuple[tuple[LayerRef, str, tuple[HiddenRef, ...]], ...] = ()
    opaque: tuple[LayerRef, tuple[HiddenRef, ...]] | None = None

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1] if self.path != "/" else "."

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {
            "Path": self.path,
            "Kind": self.kind,
            "Layer": self.layer.name if self.layer else None,
        }
        if self.merged_from:
            d["MergedFrom"] = [layer.name for layer in self.merged_from]
        if self.target is not None:
            d["Target"] = self.target
        if self.hides:
            d["Hides"] = [h.to_dict() for h in self.hides]
        if self.whiteouts:
            d["Whiteouts"] = [
                {"Layer": layer.name, "Form": form, "Hides": [h.to_dict() for h in hidden]}
                for layer, form, hidden in self.whiteouts
            ]
        if self.opaque is not None:
            d["Opaque"] = {
                "Layer": self.opaque[0].name,
                "Hides": [h.to_dict() for h in self.opaque[1]],
            }
        return d


@dataclass
class OverlayTree:
    layers: list[LayerRef]
    entries: list[TreeEntry]
    workdir: Path | None = None
    merged: Path | None = None
    fstype: str | None = None
    children: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "Merged": str(self.merged) if self.merged else None,
            "Type": self.fstype,
            "Layers": [layer.to_dict() for layer in self.layers],
            "WorkDir": str(self.workdir) if self.workdir else None,
            "Entries": [e.to_dict() for e in self.entries],
        }


def options_of_mount(entry: MountEntry) -> OverlayOptions:
    """The layer dirs of a mounted overlay: from mountinfo for the kernel overlay, from the
    filesystem process for ``fuse.overunder`` (FUSE mounts do not show their options)."""
    if entry.fstype == "overlay":
        opts = parse_overlay_options(list(entry.super_options))
    elif entry.fstype == "fuse.overunder":
        opts = _fuse_options(Path(entry.target))
    else:
        raise InvalidArgument(
            f"{entry.target} is a {entry.fstype} mount, not an overlay",
            hint="give an overlay's merged dir, or --lowerdir/--upperdir",
        )
    if any(not p.is_absolute() for p in opts.lowerdirs):
        # Mounted by someone else with relative paths: the kernel shows them as given.
        raise Unsupported(
            f"{entry.target} was mounted with relative layer paths, which cannot be found again",
            hint="pass the layers with --lowerdir and --upperdir",
        )
    return opts


def _fuse_options(target: Path) -> OverlayOptions:
    """Read the layer dirs from the fuse.overunder process's command line (its config is the
    JSON argument after ``-m overunder.fuse.daemon``)."""
    import json

    try:
        from overunder.mount.fuse import pid_file_for  # type: ignore[attr-defined,unused-ignore]

        pid = int(Path(pid_file_for(target)).read_text().strip())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        cfg = json.loads(argv[argv.index(b"overunder.fuse.daemon") + 1])
        return OverlayOptions(
            lowerdirs=[Path(p) for p in cfg["lowerdirs"]],
            upperdir=Path(cfg["upperdir"]) if cfg.get("upperdir") else None,
            workdir=Path(cfg["workdir"]) if cfg.get("workdir") else None,
        )
    except (ImportError, OSError, ValueError, KeyError, IndexError, TypeError) as err:
        raise Unsupported(
            f"cannot find the layers of the fuse.overunder mount on {target}",
            hint="pass them with --lowerdir and --upperdir",
        ) from err


def _whiteout_form(layer_dir: Path, path: str) -> str:
    """How a whiteout is stored on disk: ``char 0/0`` (overlay), ``.wh. file`` (OCI/AUFS
    style) or ``xattr`` (a zero-size file with overlay.whiteout)."""
    on_disk = layer_dir / path
    try:
        st = os.lstat(on_disk)
    except OSError:
        parent, _, name = path.rpartition("/")
        if os.path.lexists(layer_dir / parent / (OCI_WHITEOUT_PREFIX + name)):
            return ".wh. file"
        return "whiteout"
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
        return "char 0/0"
    return "xattr"


def overlay_tree(
    opts: OverlayOptions, *, merged: Path | None = None, fstype: str | None = None
) -> OverlayTree:
    """Build the view of the overlay made of ``opts``' upper and lower dirs."""
    if not opts.lowerdirs and opts.upperdir is None:
        raise InvalidArgument("no layers given", hint="give --lowerdir (and --upperdir)")
    refs: list[LayerRef] = []
    stack: list[Layer] = []
    if opts.upperdir is not None:
        refs.append(LayerRef("upper", opts.upperdir))
        stack.append(read_layer(opts.upperdir, with_data=False))
    for i, lower in enumerate(opts.lowerdirs, 1):
        refs.append(LayerRef(f"lower {i}", lower))
        stack.append(read_layer(lower, with_data=False))
    if not stack:
        raise NotFound("no layer dirs")

    def hidden(srcs: Source) -> tuple[HiddenRef, ...]:
        return tuple(HiddenRef("/" + h.path, refs[h.layer]) for h in srcs.hides)

    by_path: dict[str, dict[str, object]] = {}
    order: list[str] = []
    for s in sources(stack):
        path = "/" + s.path
        if path not in by_path:
            by_path[path] = {"whiteouts": []}
            order.append(path)
        slot = by_path[path]
        if s.kind is SourceKind.ENTRY:
            slot["entry"] = s
        elif s.kind is SourceKind.WHITEOUT:
            form = _whiteout_form(refs[s.layer].dir, s.path)
            whiteouts = slot["whiteouts"]
            assert isinstance(whiteouts, list)
            whiteouts.append((refs[s.layer], form, hidden(s)))
        elif s.kind is SourceKind.OPAQUE:
            slot["opaque"] = (refs[s.layer], hidden(s))

    entries: list[TreeEntry] = []
    children: dict[str, list[str]] = {}
    for path in order:
        slot = by_path[path]
        src = slot.get("entry")
        whiteouts = slot["whiteouts"]
        assert isinstance(whiteouts, list)
        opaque = slot.get("opaque")
        if isinstance(src, Source):
            entry = TreeEntry(
                path=path,
                kind=str(src.entry.kind),
                layer=refs[src.layer],
                merged_from=tuple(refs[i] for i in src.merged_from)
                if src.entry.kind is Kind.DIR
                else (),
                hides=hidden(src),
                target=src.entry.target,
                whiteouts=tuple(whiteouts),
                opaque=opaque if isinstance(opaque, tuple) else None,
            )
        else:
            entry = TreeEntry(path=path, kind="whiteout", layer=None, whiteouts=tuple(whiteouts))
        entries.append(entry)
        if path != "/":
            parent = path.rsplit("/", 1)[0] or "/"
            children.setdefault(parent, []).append(path)
    for names in children.values():
        names.sort()
    return OverlayTree(
        layers=refs,
        entries=entries,
        workdir=opts.workdir,
        merged=merged,
        fstype=fstype,
        children=children,
    )
