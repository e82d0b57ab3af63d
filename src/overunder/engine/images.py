"""Image workflows over the stores: unpack, list, inspect, history, tag, rmi, prune, df.

``load``/``save``/``import`` live in ``image_load``, ``image_save`` and ``image_import`` and
are re-exported here. Everything takes :class:`EnginePaths` and returns data; the CLI prints.

Stores under the engine root: ``content/`` (blobs), ``images/`` (the name index),
``snapshots/`` (layer dirs by chain ID). A pull (engine/pull.py) stores blobs with
``ContentStore.writer`` and then calls :func:`unpack_image` and :func:`record_image`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overunder.content.store import ContentStore
from overunder.engine.paths import EnginePaths
from overunder.engine.units import human_duration, human_size
from overunder.errors import FailedPrecondition, InvalidArgument, NotFound, OverunderError
from overunder.image.config import ImageConfig, new_container_config, rfc3339nano
from overunder.image.ids import chain_ids, short_id
from overunder.image.manifest import Manifest, parse_manifest
from overunder.image.reference import Reference
from overunder.image.store import ImageRecord, ImageStore, familiar
from overunder.snapshots.snapshotter import Snapshotter

if TYPE_CHECKING:
    from overunder.layerfs.whiteout import WhiteoutStyle, XattrNS

__all__ = [
    "HistoryRow",
    "ImageSummary",
    "RemoveEvent",
    "Stores",
    "df",
    "gc_blobs",
    "gc_layers",
    "history",
    "images_in_use",
    "inspect_image",
    "list_images",
    "prune",
    "record_image",
    "rmi",
    "stores",
    "tag",
    "unpack_image",
]


@dataclass(frozen=True, slots=True)
class Stores:
    paths: EnginePaths
    content: ContentStore
    images: ImageStore
    snapshots: Snapshotter


def stores(paths: EnginePaths) -> Stores:
    root = paths.root
    return Stores(
        paths=paths,
        content=ContentStore(root / "content"),
        images=ImageStore(root / "images"),
        snapshots=Snapshotter(root / "snapshots"),
    )


# -- unpacking -------------------------------------------------------------------------------
_WHITEOUT_CACHE: dict[Path, tuple[WhiteoutStyle, XattrNS]] = {}


def whiteout_mode(s: Stores) -> tuple[WhiteoutStyle, XattrNS]:
    """How this store can write whiteouts: char 0/0 + trusted xattrs as root; else what a
    probe of the snapshots dir finds (``.wh.`` files / ``user.`` xattrs rootless)."""
    from overunder.layerfs.whiteout import WhiteoutStyle, XattrNS, probe_capabilities

    if os.geteuid() == 0:
        return WhiteoutStyle.CHARDEV, XattrNS.TRUSTED
    root = s.snapshots.root
    if root not in _WHITEOUT_CACHE:
        root.mkdir(parents=True, exist_ok=True)
        _WHITEOUT_CACHE[root] = probe_capabilities(root)
    return _WHITEOUT_CACHE[root]


TRACE_ENV = "OVERUNDER_TEST_TRACE"
"""Test hook: when set to a file path, each layer unpack appends ``unpack <chain id>`` to it
(the concurrency tests count unpacks across processes). Unset in normal use."""


def _trace(event: str, what: str) -> None:
    path = os.environ.get(TRACE_ENV)
    if path:
        with open(path, "a") as f:
            f.write(f"{event} {what}\n")


def _unpack_workers() -> int:
    raw = os.environ.get("OVERUNDER_UNPACK_THREADS", "")
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    # Measured on 2 CPUs (bench/store_unpack_bench.py): 2 threads were no faster than 1 and
    # used more memory, so parallel unpack starts at 3 CPUs.
    cpus = os.cpu_count() or 1
    return 1 if cpus <= 2 else min(4, cpus)


def unpack_image(
    s: Stores,
    manifest: Manifest,
    config: ImageConfig,
    *,
    on_layer: Callable[[str, str], None] | None = None,
) -> list[Path]:
    """Unpack every layer of an image whose blobs are in the content store (each once, shared
    with other images) and return the layer dirs bottom first.

    Layers may unpack in parallel threads (``OVERUNDER_UNPACK_THREADS``; default 1 on up to
    2 CPUs, else min(4, CPUs)): they are independent dirs, and inflating, hashing and file
    syscalls release the GIL. Diff IDs are checked against the config. ``on_layer(short,
    status)`` reports progress ("Already exists", "Extracting", "Loaded")."""
    from overunder.layerfs.tar_apply import apply_layer

    diff_ids = config.diff_ids
    if len(diff_ids) != len(manifest.layers):
        raise InvalidArgument(
            f"image {config.id} has {len(manifest.layers)} layers but its config lists "
            f"{len(diff_ids)} diff IDs",
            hint="the image is malformed",
        )
    chains = chain_ids(diff_ids)
    style, ns = whiteout_mode(s)

    def one(i: int) -> Path:
        chain = chains[i]
        parent = chains[i - 1] if i else None
        desc = manifest.layers[i]
        label = short_id(desc.digest)
        if s.snapshots.exists(chain):
            if on_layer:
                on_layer(label, "Already exists")
            return s.snapshots.layer_dir(chain)

        def apply(fs: Path) -> Any:
            _trace("unpack", chain)
            with s.content.open(desc.digest) as f:
                return apply_layer(f, fs, whiteout_style=style, xattr_ns=ns, name=desc.digest)

        if on_layer:
            on_layer(label, "Extracting")
        d = s.snapshots.ensure_layer(chain, parent, apply, diff_id=diff_ids[i])
        if on_layer:
            on_layer(label, "Loaded")
        return d

    workers = min(_unpack_workers(), len(chains))
    if workers <= 1:
        return [one(i) for i in range(len(chains))]
    from concurrent.futures import ThreadPoolExecutor  # lazy: it imports logging

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, range(len(chains))))


def record_image(
    s: Stores,
    *,
    config_digest: str,
    manifest_digest: str | None,
    manifest_media_type: str | None,
    names: Sequence[Reference | str] = (),
    repo_digests: Sequence[Reference | str] = (),
    parent: str = "",
) -> ImageRecord:
    """Record an image whose layers are all unpacked. Checks that, so that a record always
    means a complete image."""
    cfg = load_config(s, config_digest)
    for chain in chain_ids(cfg.diff_ids):
        if not s.snapshots.exists(chain):
            raise FailedPrecondition(
                f"layer {chain} of image {config_digest} is not unpacked",
                hint="unpack the image's layers before recording it",
            )
    rec, _ = s.images.add(
        config_digest,
        manifest_digest,
        names=names,
        repo_digests=repo_digests,
        manifest_media_type=manifest_media_type,
        parent=parent,
    )
    return rec


# -- reading ---------------------------------------------------------------------------------
def load_config(s: Stores, image_id: str) -> ImageConfig:
    return ImageConfig.parse(s.content.read(image_id), digest=image_id)


def load_manifest(s: Stores, rec: ImageRecord) -> Manifest | None:
    if rec.manifest_digest is None or not s.content.has(rec.manifest_digest):
        return None
    return parse_manifest(s.content.read(rec.manifest_digest), rec.manifest_media_type)


def image_size(s: Stores, cfg: ImageConfig) -> int:
    snaps = s.snapshots.snapshots()
    return sum(snaps[c].size for c in chain_ids(cfg.diff_ids) if c in snaps)


def layer_dirs(s: Stores, cfg: ImageConfig) -> list[Path]:
    """The image's layer dirs, bottom first."""
    return [s.snapshots.layer_dir(c) for c in chain_ids(cfg.diff_ids)]


@dataclass(frozen=True, slots=True)
class ImageSummary:
    id: str
    repository: str
    tag: str
    digest: str
    created: float
    created_at: str
    size: int

    def to_json(self, *, now: float | None = None) -> dict[str, str]:
        """``docker images --format json`` (all values strings, keys sorted)."""
        from_now = (now or time.time()) - self.created
        return {
            "Containers": "N/A",
            "CreatedAt": time.strftime("%Y-%m-%d %H:%M:%S +0000 UTC", time.gmtime(self.created)),
            "CreatedSince": human_duration(from_now) + " ago",
            "Digest": self.digest,
            "ID": short_id(self.id),
            "Repository": self.repository,
            "SharedSize": "N/A",
            "Size": human_size(self.size),
            "Tag": self.tag,
            "UniqueSize": "N/A",
            "VirtualSize": human_size(self.size),
        }


def list_images(
    paths: EnginePaths,
    *,
    repository: str | None = None,
    dangling: bool | None = None,
) -> list[ImageSummary]:
    """One row per tag (and one ``<none>`` row per untagged image), newest first, like
    ``docker images``. ``repository`` filters by name (``busybox``, ``busybox:1``)."""
    s = stores(paths)
    want_name: str | None = None
    want_tag: str | None = None
    if repository:
        from overunder.image import reference as refs

        ref = refs.parse(repository, default_tag=False)
        want_name, want_tag = ref.name, ref.tag
    snaps = s.snapshots.snapshots()
    rows: list[ImageSummary] = []
    for rec in s.images.list():
        try:
            cfg = load_config(s, rec.id)
        except NotFound:
            continue
        size = sum(snaps[c].size for c in chain_ids(cfg.diff_ids) if c in snaps)
        created = cfg.created_time
        digest_by_repo: dict[str, str] = {}
        for d in rec.repo_digests:
            name, _, dg = d.partition("@")
            digest_by_repo.setdefault(name, dg)
        entries: list[tuple[str, str, str]] = []
        for t in rec.repo_tags:
            name, _, tag_ = t.rpartition(":")
            entries.append((name, tag_, digest_by_repo.get(name, "<none>")))
        tagged_repos = {e[0] for e in entries}
        for name, dg in digest_by_repo.items():
            if name not in tagged_repos:
                entries.append((name, "<none>", dg))
        is_dangling = not rec.repo_tags
        if dangling is not None and dangling != is_dangling:
            continue
        if not entries:
            if want_name is not None:
                continue
            entries.append(("<none>", "<none>", "<none>"))
        for name, tag_, dg in entries:
            if want_name is not None and (
                name != want_name or (want_tag is not None and tag_ != want_tag)
            ):
                continue
            rows.append(
                ImageSummary(
                    id=rec.id,
                    repository=familiar(name) if name != "<none>" else name,
                    tag=tag_,
                    digest=dg,
                    created=created,
                    created_at=cfg.created,
                    size=size,
                )
            )
    rows.sort(key=lambda r: (-r.created, r.repository, r.tag))
    return rows


def inspect_image(paths: EnginePaths, rec: ImageRecord) -> dict[str, Any]:
    """``docker image inspect``'s object for one image, keys in Docker's order."""
    s = stores(paths)
    cfg = load_config(s, rec.id)
    raw = cfg.raw
    size = image_size(s, cfg)
    dirs = list(reversed(layer_dirs(s, cfg)))  # top first
    data: dict[str, str] = {}
    if dirs:
        top = dirs[0].parent
        if len(dirs) > 1:
            data["LowerDir"] = ":".join(str(d) for d in dirs[1:])
        data["MergedDir"] = str(top / "merged")
        data["UpperDir"] = str(dirs[0])
        data["WorkDir"] = str(top / "work")
    out: dict[str, Any] = {
        "Id": rec.id,
        "RepoTags": rec.familiar_tags,
        "RepoDigests": rec.familiar_digests,
        "Parent": rec.parent,
        "Comment": cfg.comment,
        "Created": cfg.created,
        "Container": raw.get("container", ""),
        "ContainerConfig": raw.get("container_config") or new_container_config(None),
        "DockerVersion": raw.get("docker_version", ""),
        "Author": cfg.author,
        "Config": cfg.config,
        "Architecture": cfg.architecture,
    }
    if cfg.variant:
        out["Variant"] = cfg.variant
    out.update(
        {
            "Os": cfg.os,
            "Size": size,
            "VirtualSize": size,
            "GraphDriver": {"Data": data, "Name": "overlay"},
            "RootFS": {"Type": "layers", "Layers": cfg.diff_ids},
            "Metadata": {
                "LastTagTime": rfc3339nano(rec.last_tag) if rec.last_tag else _GO_ZERO_TIME
            },
        }
    )
    return out


_GO_ZERO_TIME = "0001-01-01T00:00:00Z"


@dataclass(frozen=True, slots=True)
class HistoryRow:
    id: str  # "sha256:..." or "<missing>"
    created: float
    created_at: str
    created_by: str
    size: int
    comment: str
    empty_layer: bool

    def to_json(self, *, now: float | None = None, trunc: bool = True) -> dict[str, str]:
        return {
            "Comment": self.comment,
            "CreatedAt": self.created_at,
            "CreatedBy": self.created_by,
            "CreatedSince": human_duration((now or time.time()) - self.created) + " ago",
            "ID": short_id(self.id) if trunc and self.id != "<missing>" else self.id,
            "Size": human_size(self.size),
        }


def history(paths: EnginePaths, name: str) -> list[HistoryRow]:
    """``docker history``: newest first; the image's own id on the top row, parents' ids where
    the parent chain is known locally, ``<missing>`` elsewhere."""
    from overunder.image.config import parse_time

    s = stores(paths)
    rec = s.images.resolve(name)
    cfg = load_config(s, rec.id)
    hist = cfg.history
    snaps = s.snapshots.snapshots()
    chains = chain_ids(cfg.diff_ids)
    if not hist:
        hist = [{"created": cfg.created} for _ in chains]
    ids: dict[int, str] = {len(hist) - 1: rec.id}
    parent = rec.parent
    seen = {rec.id}
    while parent and parent not in seen:
        seen.add(parent)
        try:
            prec = s.images.get(parent)
            pcfg = load_config(s, parent)
        except NotFound:
            break
        n = len(pcfg.history)
        if n:
            ids.setdefault(n - 1, parent)
        parent = prec.parent
    rows: list[HistoryRow] = []
    layer = 0
    for i, h in enumerate(hist):
        empty = bool(h.get("empty_layer"))
        size = 0
        if not empty and layer < len(chains):
            info = snaps.get(chains[layer])
            size = info.size if info else 0
            layer += 1
        created_at = str(h.get("created") or "")
        rows.append(
            HistoryRow(
                id=ids.get(i, "<missing>"),
                created=parse_time(created_at),
                created_at=created_at,
                created_by=str(h.get("created_by") or ""),
                size=size,
                comment=str(h.get("comment") or ""),
                empty_layer=empty,
            )
        )
    rows.reverse()
    return rows


# -- changing names --------------------------------------------------------------------------
def tag(paths: EnginePaths, source: str, target: str) -> ImageRecord:
    """``docker tag SOURCE TARGET``."""
    from overunder.engine.lock import store_lock
    from overunder.image.reference import parse_tag_target

    ref = parse_tag_target(target)
    s = stores(paths)
    with store_lock(paths):
        rec = s.images.resolve(source)
        return s.images.tag(rec.id, ref)


def images_in_use(paths: EnginePaths) -> dict[str, list[str]]:
    """Image id -> ids of containers created from it. Asks ``overunder.engine.containers``
    (engineer G's) when it offers ``images_in_use(paths)`` or ``image_ids_in_use(paths)``;
    with no container module there are no users."""
    import importlib

    try:
        cmod = importlib.import_module("overunder.engine.containers")
    except ImportError:
        return {}
    fn = getattr(cmod, "images_in_use", None) or getattr(cmod, "image_ids_in_use", None)
    if fn is None:
        return {}
    result = fn(paths)
    if isinstance(result, dict):
        return {str(k): [str(c) for c in v] for k, v in result.items()}
    return {str(k): [] for k in result}


@dataclass(frozen=True, slots=True)
class RemoveEvent:
    kind: str  # "Untagged" | "Deleted"
    what: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.what}"


@dataclass(slots=True)
class RmiResult:
    events: list[RemoveEvent] = field(default_factory=list)
    errors: list[OverunderError] = field(default_factory=list)
    reclaimed: int = 0


def rmi(paths: EnginePaths, names: Iterable[str], *, force: bool = False) -> RmiResult:
    """``docker rmi``: untag, and delete images that are left without names (their layers
    too, when no other image or container stacks on them). Errors per name are collected
    (Docker goes on with the next name)."""
    from overunder.engine.lock import store_lock

    s = stores(paths)
    result = RmiResult()
    with store_lock(paths):
        in_use = images_in_use(paths)
        for name in names:
            try:
                _rmi_one(s, name, force=force, in_use=in_use, result=result)
            except OverunderError as err:
                result.errors.append(err)
    return result


def _conflict(msg: str) -> FailedPrecondition:
    return FailedPrecondition(
        msg, hint="remove the containers first, or force with -f (the layers stay while used)"
    )


def _rmi_one(
    s: Stores, name: str, *, force: bool, in_use: dict[str, list[str]], result: RmiResult
) -> None:
    rec = s.images.resolve(name)
    from overunder.image import reference as refs

    users = in_use.get(rec.id, [])
    full = ""
    try:
        ref = refs.parse(name)
        full = f"{ref.name}@{ref.digest}" if ref.digest else f"{ref.name}:{ref.tag}"
    except InvalidArgument:
        pass
    if full and (full in rec.repo_tags or full in rec.repo_digests):
        # Name given (it wins over an id prefix, as in resolve): untag it; delete the image
        # when that was its last name.
        last = len(rec.repo_tags) + len(rec.repo_digests) <= 1
        if last and users and not force:
            raise _conflict(
                f'conflict: unable to remove repository reference "{name}" (must force) - '
                f"container {short_id(users[0])} is using its referenced image {short_id(rec.id)}"
            )
        s.images.untag(full)
        result.events.append(RemoveEvent("Untagged", familiar(full)))
        if not last:
            return
        _delete_image(s, rec.id, result)
        return
    if len(rec.repo_tags) > 1 and not force:
        raise _conflict(
            f"conflict: unable to delete {short_id(rec.id)} (must be forced) - image is "
            "referenced in multiple repositories"
        )
    if users and not force:
        raise _conflict(
            f"conflict: unable to delete {short_id(rec.id)} (must be forced) - image is being "
            f"used by container {short_id(users[0])}"
        )
    for t in list(rec.repo_tags) + list(rec.repo_digests):
        s.images.untag(t)
        result.events.append(RemoveEvent("Untagged", familiar(t)))
    _delete_image(s, rec.id, result)


def _referenced_blobs(s: Stores) -> tuple[set[str], set[str]]:
    """(blob digests, layer chain IDs) still used by recorded images."""
    blobs: set[str] = set()
    chains: set[str] = set()
    for rec in s.images.list():
        blobs.add(rec.id)
        try:
            cfg = load_config(s, rec.id)
        except NotFound:
            continue
        chains.update(chain_ids(cfg.diff_ids))
        if rec.manifest_digest:
            blobs.add(rec.manifest_digest)
            m = load_manifest(s, rec)
            if m is not None:
                blobs.update(d.digest for d in m.layers)
    return blobs, chains


def _delete_image(s: Stores, image_id: str, result: RmiResult) -> None:
    rec = s.images.get(image_id)
    try:
        cfg: ImageConfig | None = load_config(s, image_id)
    except NotFound:
        cfg = None
    manifest = load_manifest(s, rec)
    s.images.remove(image_id)
    result.events.append(RemoveEvent("Deleted", image_id))
    blobs, chains_in_use = _referenced_blobs(s)
    if cfg is not None:
        for chain in reversed(chain_ids(cfg.diff_ids)):
            if chain in chains_in_use or not s.snapshots.exists(chain):
                break
            try:
                size = s.snapshots.info(chain).size
                s.snapshots.remove(chain)
            except FailedPrecondition:
                break  # a container (or another layer) stacks on it
            result.reclaimed += size
            result.events.append(RemoveEvent("Deleted", chain))
    candidates = [image_id]
    if rec.manifest_digest:
        candidates.append(rec.manifest_digest)
    if manifest is not None:
        candidates += [d.digest for d in manifest.layers]
    for d in candidates:
        if d not in blobs and s.content.has(d):
            s.content.delete(d)


def prune(paths: EnginePaths, *, all_images: bool = False) -> RmiResult:
    """``docker image prune``: dangling images (``-a``: every image no container uses)."""
    from overunder.engine.lock import store_lock

    s = stores(paths)
    result = RmiResult()
    with store_lock(paths):
        in_use = images_in_use(paths)
        for rec in s.images.list():
            if rec.id in in_use:
                continue
            if rec.repo_tags and not all_images:
                continue
            for t in list(rec.repo_tags) + list(rec.repo_digests):
                s.images.untag(t)
                result.events.append(RemoveEvent("untagged", familiar(t)))
            _delete_image(s, rec.id, result)
        result.reclaimed += gc_layers(s)
        gc_blobs(s)
    # `image prune` lists in lower case, unlike rmi.
    result.events = [RemoveEvent(ev.kind.lower(), ev.what) for ev in result.events]
    return result


def gc_layers(s: Stores) -> int:
    """Remove image layers (snapshots keyed by a chain ID) that no recorded image uses and
    nothing stacks on: what a failed load leaves. Containers' snapshots are never touched
    (their keys are not digests, and the layers under them have children). Returns bytes."""
    from overunder.content.digest import is_digest

    _, used = _referenced_blobs(s)
    freed = 0
    while True:
        snaps = s.snapshots.snapshots()
        parents = {v.parent for v in snaps.values() if v.parent}
        victims = [
            k
            for k, v in snaps.items()
            if is_digest(k) and k not in used and k not in parents and str(v.kind) == "committed"
        ]
        if not victims:
            return freed
        for k in victims:
            freed += snaps[k].size
            try:
                s.snapshots.remove(k)
            except FailedPrecondition:
                return freed


def gc_blobs(s: Stores, candidates: Iterable[str] | None = None) -> int:
    """Delete blobs no recorded image references (only among ``candidates`` when given);
    returns the bytes freed. Call under the store lock: a pull records its image before it
    lets go of the lock, so no blob of a live pull is unreferenced here."""
    referenced, _ = _referenced_blobs(s)
    freed = 0
    for d in list(s.content.digests() if candidates is None else candidates):
        if d in referenced or not s.content.has(d):
            continue
        freed += s.content.size(d)
        s.content.delete(d)
    return freed


@dataclass(frozen=True, slots=True)
class DfRow:
    type: str
    total: int
    active: int
    size: int
    reclaimable: int

    def cells(self) -> list[str]:
        pct = f" ({round(100 * self.reclaimable / self.size)}%)" if self.size else ""
        return [
            self.type,
            str(self.total),
            str(self.active),
            human_size(self.size),
            human_size(self.reclaimable) + pct,
        ]

    def to_json(self) -> dict[str, str]:
        c = self.cells()
        return {"Active": c[2], "Reclaimable": c[4], "Size": c[3], "TotalCount": c[1], "Type": c[0]}


def df(paths: EnginePaths) -> list[DfRow]:
    """``docker system df``: images (layers counted once), containers (when G's module is
    there), no volumes, no build cache."""
    s = stores(paths)
    in_use = images_in_use(paths)
    snaps = s.snapshots.snapshots()
    recs = s.images.list()
    used_chains: set[str] = set()
    all_chains: set[str] = set()
    for rec in recs:
        try:
            cfg = load_config(s, rec.id)
        except NotFound:
            continue
        chains = set(chain_ids(cfg.diff_ids))
        all_chains |= chains
        if rec.id in in_use:
            used_chains |= chains
    total = sum(snaps[c].size for c in all_chains if c in snaps)
    active_size = sum(snaps[c].size for c in used_chains if c in snaps)
    active = sum(1 for r in recs if r.id in in_use)
    rows = [DfRow("Images", len(recs), active, total, total - active_size)]
    n_containers = sum(len(v) for v in in_use.values())
    csize = 0
    for info in snaps.values():
        if str(info.kind) == "active":
            csize += s.snapshots.usage(info.key).size
    rows.append(DfRow("Containers", n_containers, 0, csize, 0))
    rows.append(DfRow("Local Volumes", 0, 0, 0, 0))
    rows.append(DfRow("Build Cache", 0, 0, 0, 0))
    return rows


def __getattr__(name: str) -> Any:
    # load/save/import_ live in their own modules; import them only when asked.
    import importlib

    where = {
        "load": "image_load",
        "LoadedImage": "image_load",
        "save": "image_save",
        "import_": "image_import",
    }
    if name in where:
        return getattr(importlib.import_module(f"overunder.engine.{where[name]}"), name)
    raise AttributeError(name)
