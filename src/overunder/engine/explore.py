"""The explorer verbs over the engine's stores: ``layers``, ``explain``, ``tree``, ``cat`` and
``cp IMAGE:PATH DEST``.

A name is looked up as a container first, then as an image, like ``inspect``: a container's
stack is its upper dir, its init layer and its image's layers (what its merged view is made
of); an image's stack is its layers. Nothing is mounted and no container is started: the
layer dirs are read directly (:mod:`overunder.explain`).
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import tarfile
from typing import BinaryIO

from overunder.engine.paths import EnginePaths
from overunder.errors import FailedPrecondition, InvalidArgument, NotFound
from overunder.explain import (
    LayersReport,
    LayerStack,
    PathReport,
    Resolved,
    analyze_layers,
    clean_path,
    container_layer_infos,
    explain_path,
    image_layer_infos,
    iter_tree,
    open_file,
    resolve,
)
from overunder.explain.scan import FORM_CHARDEV
from overunder.mount.view import HiddenRef, LayerRef, OverlayTree, TreeEntry
from overunder.semantics import Entry, Kind, Source, SourceKind, lookup, sources

__all__ = [
    "cat",
    "copy_from_image",
    "explain",
    "image_source",
    "image_stack",
    "layers",
    "resolve_stack",
    "split_image_arg",
    "tree",
    "write_image_tar",
]

_CHUNK = 1 << 20


def image_stack(paths: EnginePaths, name: str) -> LayerStack:
    """The layers of image ``name`` (NotFound ``No such image: X``)."""
    from overunder.engine.images import layer_dirs, load_config, stores

    s = stores(paths)
    rec = s.images.resolve(name)
    cfg = load_config(s, rec.id)
    infos = image_layer_infos(layer_dirs(s, cfg), cfg.diff_ids, cfg.history)
    return LayerStack(name, "image", rec.id, infos)


def _container_stack(paths: EnginePaths, name: str) -> LayerStack | None:
    base = paths.root / "containers"
    if not base.is_dir() or not any(len(p.name) == 64 for p in base.iterdir()):
        return None  # no containers at all: skip importing the container machinery
    from overunder.engine.container_mount import container_layers
    from overunder.engine.containers import find_container

    try:
        rec = find_container(paths, name)
    except (NotFound, InvalidArgument):
        return None
    dirs = container_layers(paths, rec)
    image_dirs = dirs.lowers[dirs.init_layers :]
    from overunder.engine.images import load_config, stores

    cfg = load_config(stores(paths), rec.image_id)
    infos = image_layer_infos(image_dirs[::-1], cfg.diff_ids, cfg.history)
    init = dirs.lowers[0] if dirs.init_layers else None
    command = " ".join([rec.path, *rec.args])
    layers = container_layer_infos(dirs.upper, init, infos, command)
    return LayerStack(name, "container", rec.id, layers)


def resolve_stack(paths: EnginePaths, name: str, *, images_only: bool = False) -> LayerStack:
    """Container ``name`` first (unless ``images_only``), then image ``name``."""
    if not images_only:
        found = _container_stack(paths, name)
        if found is not None:
            return found
    try:
        return image_stack(paths, name)
    except NotFound:
        what = "image" if images_only else "container or image"
        raise NotFound(
            f"No such {what}: {name}",
            hint="see 'overunder images'" + ("" if images_only else " and 'overunder ps -a'"),
        ) from None


def _is_image(paths: EnginePaths, name: str) -> bool:
    try:
        image_stack(paths, name)
    except (NotFound, InvalidArgument):
        return False
    return True


def _files_stack(paths: EnginePaths, name: str, *, images_only: bool = False) -> LayerStack:
    """The stack of ``name`` for the views that look at files: one with no layers has none."""
    stack = resolve_stack(paths, name, images_only=images_only)
    if not stack.layers:
        raise NotFound(
            f"{name} has no layers, so it holds no files",
            hint=f"see 'overunder layers {name}'",
        )
    return stack


def layers(paths: EnginePaths, name: str) -> LayersReport:
    """``overunder layers NAME``."""
    stack = resolve_stack(paths, name)
    return analyze_layers(stack, stack.scan())


def explain(paths: EnginePaths, name: str, path: str) -> PathReport:
    """``overunder explain NAME PATH``."""
    stack = _files_stack(paths, name)
    return explain_path(stack, path, stack.probe(clean_path(path)))


# -- tree -------------------------------------------------------------------------------------
def tree(paths: EnginePaths, name: str, path: str = "/") -> OverlayTree:
    """``overunder tree NAME [PATH]``: the merged tree (below ``path``) with each entry's layer,
    in the shape ``overunder overlay tree`` renders (:mod:`overunder.mount.view`). The dirs on
    the way to ``path`` are included so that the drawing starts at ``/``."""
    stack = _files_stack(paths, name)
    rel = clean_path(path)
    scanned = stack.scan(under=rel, meta=False)  # the drawing shows no sizes or modes
    layers_ = [s.layer for s in scanned]
    refs = [LayerRef(info.name, info.dir) for info in stack.layers]
    if lookup(layers_, rel) is None:
        raise NotFound(
            f"/{rel}: no such file or directory in {name}",
            hint=f"'overunder explain {name} /{rel}' says which layer hides it",
        )

    def hidden(s: Source) -> tuple[HiddenRef, ...]:
        return tuple(HiddenRef("/" + h.path, refs[h.layer]) for h in s.hides)

    # One TreeEntry per path; whiteouts and opaque dirs (few) are attached afterwards.
    by_path: dict[str, TreeEntry] = {}
    whiteouts: dict[str, list[tuple[LayerRef, str, tuple[HiddenRef, ...]]]] = {}
    opaques: dict[str, tuple[LayerRef, tuple[HiddenRef, ...]]] = {}

    def entry_of(p: str, src: Source) -> TreeEntry:
        is_dir = src.entry.kind is Kind.DIR
        return TreeEntry(
            path=p,
            kind=str(src.entry.kind),
            layer=refs[src.layer],
            merged_from=tuple(refs[i] for i in src.merged_from) if is_dir else (),
            hides=hidden(src) if src.hides else (),
            target=src.entry.target,
        )

    # the dirs on the way down to `rel`, without their other children
    parts = rel.split("/") if rel else []
    for n in range(len(parts)):
        anc = "/".join(parts[:n])
        hit = lookup(layers_, anc)
        assert hit is not None
        src = Source(anc, SourceKind.ENTRY, hit.layer, hit.entry, hit.merged_from)
        by_path["/" + anc] = entry_of("/" + anc, src)
    for src in sources(layers_, rel):
        p = "/" + src.path
        if src.kind is SourceKind.ENTRY:
            by_path[p] = entry_of(p, src)
        elif src.kind is SourceKind.WHITEOUT:
            form = scanned[src.layer].whiteout_forms.get(src.path, FORM_CHARDEV)
            whiteouts.setdefault(p, []).append((refs[src.layer], form, hidden(src)))
        else:
            opaques[p] = (refs[src.layer], hidden(src))
    for p in whiteouts.keys() | opaques.keys():
        found = by_path.get(p)
        wl = tuple(whiteouts.get(p, ()))
        if found is None:
            by_path[p] = TreeEntry(path=p, kind="whiteout", layer=None, whiteouts=wl)
        else:
            by_path[p] = dataclasses.replace(found, whiteouts=wl, opaque=opaques.get(p))
    entries = [by_path[p] for p in sorted(by_path, key=_path_key)]
    children: dict[str, list[str]] = {}
    for e in entries:
        if e.path != "/":
            children.setdefault(e.path.rsplit("/", 1)[0] or "/", []).append(e.path)
    for names in children.values():
        names.sort()
    return OverlayTree(layers=refs, entries=entries, children=children)


def _path_key(p: str) -> tuple[str, ...]:
    """A dir before its subtree, names in order (the order the views list paths in)."""
    return tuple(p.split("/")[1:]) if p != "/" else ()


# -- files out of an image ------------------------------------------------------------------
def cat(paths: EnginePaths, name: str, path: str, out: BinaryIO) -> int:
    """Write the file ``path`` of image ``name`` to ``out`` (symlinks resolved inside the
    image); returns the byte count. Images only: a container's files change while it runs,
    use ``cp CONTAINER:PATH -`` for those."""
    if _container_stack(paths, name) is not None and not _is_image(paths, name):
        raise InvalidArgument(
            f"{name} is a container; cat reads files of images",
            hint=f"copy a container's file with 'overunder cp {name}:{path} -'",
        )
    stack = _files_stack(paths, name, images_only=True)
    r = resolve(stack, path)
    fd = open_file(r)
    n = 0
    try:
        while chunk := os.read(fd, _CHUNK):
            out.write(chunk)
            n += len(chunk)
    finally:
        os.close(fd)
    return n


def _tarinfo(name: str, e: Entry) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.mode = e.meta.mode
    ti.uid, ti.gid = e.meta.uid, e.meta.gid
    ti.mtime = e.meta.mtime_ns // 1_000_000_000
    if e.kind is Kind.DIR:
        ti.type = tarfile.DIRTYPE
    elif e.kind is Kind.FILE:
        ti.type = tarfile.REGTYPE
        ti.size = e.size
    elif e.kind is Kind.SYMLINK:
        ti.type = tarfile.SYMTYPE
        ti.linkname = e.target or ""
    elif e.kind in (Kind.CHARDEV, Kind.BLOCKDEV):
        ti.type = tarfile.CHRTYPE if e.kind is Kind.CHARDEV else tarfile.BLKTYPE
        ti.devmajor, ti.devminor = e.rdev or (0, 0)
    elif e.kind is Kind.FIFO:
        ti.type = tarfile.FIFOTYPE
    else:
        raise InvalidArgument(f"{name}: a {e.kind} cannot be copied")
    return ti


def write_image_tar(stack: LayerStack, top: Resolved, out: BinaryIO, *, name: str) -> None:
    """A tar of the merged subtree at ``top``, its top entry named ``name`` (``.`` for the
    contents of a dir). Files are read from their layer dirs. Gap: hard links inside the
    subtree are written as separate files; sockets are skipped."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for item in iter_tree(stack, top):
            if item.entry.kind is Kind.SOCKET:
                continue
            arc = posixpath.join(name, item.path) if item.path else name
            ti = _tarinfo(arc, item.entry)
            if item.entry.kind is not Kind.FILE:
                tf.addfile(ti)
                continue
            r = Resolved(item.path, item.entry, 0, item.layer_path, item.layer_dir)
            fd = open_file(r)
            with os.fdopen(fd, "rb") as f:
                tf.addfile(ti, f)


def split_image_arg(arg: str) -> tuple[str, str]:
    """``IMAGE:PATH`` -> (image, path). An image reference may hold ``:`` itself (a tag, a
    registry port), never ``:/``: so the split is at the first ``:/`` (an absolute path),
    else at the first ``:`` (``busybox:etc/passwd``, Docker's container rule)."""
    at = arg.find(":/")
    if at > 0:
        return arg[:at], arg[at + 1 :]
    image, sep, path = arg.partition(":")
    if not sep or not image:
        raise InvalidArgument(f"{arg!r} is not IMAGE:PATH", hint="e.g. busybox:/etc/passwd")
    return image, path


def image_source(paths: EnginePaths, arg: str) -> tuple[str, str] | None:
    """For ``cp SRC DEST``: (image, path) when ``SRC`` names an image path and **no container**
    has the name Docker's split gives (containers win, as in Docker); else None."""
    from overunder.engine.container_cp import split_cp_arg

    name, _ = split_cp_arg(arg)
    if name is None or _container_stack(paths, name) is not None:
        return None
    try:
        image, path = split_image_arg(arg)
        image_stack(paths, image)
    except (NotFound, InvalidArgument):
        return None
    return image, path


def copy_from_image(
    paths: EnginePaths,
    image: str,
    src: str,
    dest: str,
    *,
    stdout: BinaryIO | None = None,
    follow: bool = False,
) -> None:
    """``cp IMAGE:SRC DEST``: like ``cp CONTAINER:SRC DEST`` (Docker's host-side rules), from
    an image's layers, without a container (``DEST`` ``-``: a tar on ``stdout``)."""
    from overunder.engine.container_cp import _host_target, _pump
    from overunder.engine.container_cp_extract import OnHost, extract

    stack = _files_stack(paths, image, images_only=True)
    src_abs = src if src.startswith("/") else "/" + src
    contents = src_abs.endswith("/.") or src_abs == "/."
    follow_last = follow or src_abs.endswith("/") or contents
    try:
        r = resolve(stack, src_abs, follow_last=follow_last)
    except NotFound as err:
        raise NotFound(
            f"Could not find the file {posixpath.normpath(src_abs)} in image {image}",
            hint=f"see what is there with 'overunder tree {image}'",
        ) from err
    given = posixpath.basename(posixpath.normpath(src_abs)) or "/"
    if dest == "-":
        if stdout is None:
            raise InvalidArgument("cp to '-' needs a stream for the tar")
        write_image_tar(stack, r, stdout, name="." if contents else given)
        return
    is_dir = r.entry.kind is Kind.DIR
    base, arcname = _host_target(dest, is_dir, contents, given)
    try:
        dfd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise FailedPrecondition(f"cannot open {base}: {err.strerror}") from err
    try:
        _pump(
            lambda out: write_image_tar(stack, r, out, name=arcname),
            lambda inp: extract(inp, OnHost(dfd, base)),
        )
    finally:
        os.close(dfd)
