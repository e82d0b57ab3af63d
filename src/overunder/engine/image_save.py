"""``save``: images to a ``docker save`` tarball (docker-compat.md §11) or an OCI layout tar.

Docker layout: members sorted by name; per layer a dir named by a v1 layer id with
``VERSION`` (``1.0``), ``json`` (the v1 layer config) and ``layer.tar`` (the uncompressed
layer, whose sha256 is the diff ID); ``<image id hex>.json`` (the config, byte for byte);
``manifest.json`` and ``repositories`` (mtime 0). A layer tar used under several v1 ids is
stored once; the other dirs hold a symlink ``layer.tar -> ../<v1 id>/layer.tar``.

v1 ids are ours (sha256 over the chain ID, the parent v1 id and, for the top layer, the image
id), not Docker's: Docker's depend on Go's JSON encoding of its v1 config. Readers use them
only as names.

OCI layout (``--format oci``): ``oci-layout``, ``index.json`` (one entry per tag, annotated
with ``org.opencontainers.image.ref.name`` = the tag and ``io.containerd.image.name`` = the
full name, as Docker 25 writes them) and ``blobs/sha256/``; Docker schema2 manifests are
rewritten with OCI media types (the config bytes, hence the image id, stay the same).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from overunder.content.digest import digest_hex
from overunder.engine.images import Stores, load_config, load_manifest, stores
from overunder.engine.paths import EnginePaths
from overunder.errors import IntegrityError, NotFound
from overunder.image import mediatypes as mt
from overunder.image.config import ImageConfig, new_container_config
from overunder.image.ids import chain_ids
from overunder.image.manifest import Descriptor, Manifest
from overunder.image.store import ImageRecord, familiar

__all__ = ["save"]

_CHUNK = 1 << 20
_EPOCH = "1970-01-01T00:00:00Z"


@dataclass
class _Member:
    name: str
    kind: str  # "dir" | "file" | "symlink"
    size: int = 0
    mtime: float = 0.0
    data: bytes | None = None
    opener: Callable[[], contextlib.AbstractContextManager[BinaryIO]] | None = None
    target: str = ""
    check_digest: str | None = None


@dataclass
class _Selected:
    rec: ImageRecord
    tags: list[str]  # familiar repo:tag
    full_tags: list[str]


def _select(s: Stores, names: list[str]) -> list[_Selected]:
    from overunder.errors import InvalidArgument
    from overunder.image import reference as refs

    out: dict[str, _Selected] = {}
    for name in names:
        rec = s.images.resolve(name)
        sel = out.setdefault(rec.id, _Selected(rec, [], []))
        try:
            ref = refs.parse(name)
        except InvalidArgument:
            continue
        full = f"{ref.name}:{ref.tag}"
        if ref.digest is None and full in rec.repo_tags and full not in sel.full_tags:
            sel.full_tags.append(full)
            sel.tags.append(familiar(full))
    return list(out.values())


def _layer_source(
    s: Stores, desc: Descriptor, diff_id: str
) -> tuple[int, Callable[[], contextlib.AbstractContextManager[BinaryIO]]]:
    """(size, opener) of the uncompressed layer tar."""
    if not s.content.has(desc.digest):
        raise NotFound(
            f"layer blob {desc.digest} (diff ID {diff_id}) is not in the content store",
            hint="pull or load the image again to get its layer tars back",
        )
    if desc.digest == diff_id:
        size = s.content.size(desc.digest)

        @contextlib.contextmanager
        def plain() -> Iterator[BinaryIO]:
            with s.content.open(desc.digest) as f:
                yield f

        return size, plain
    from overunder.layerfs.compression import LayerReader

    with s.content.open(desc.digest) as f:
        r = LayerReader(f, name=desc.digest, max_bytes=None)
        r.drain()
        size = r.size
        if r.diff_id != diff_id:
            raise IntegrityError(
                f"layer blob {desc.digest} decompresses to {r.diff_id}, not {diff_id}",
                hint="the store is corrupt; pull or load the image again",
            )

    @contextlib.contextmanager
    def unpacked() -> Iterator[BinaryIO]:
        with s.content.open(desc.digest) as f:
            yield LayerReader(f, name=desc.digest, max_bytes=None)  # type: ignore[misc]

    return size, unpacked


def _v1_id(chain: str, parent: str, top_of: str) -> str:
    doc = json.dumps({"layer": chain, "parent": parent, "image": top_of}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()


def _v1_json(v1: str, parent: str, cfg: ImageConfig | None) -> bytes:
    out: dict[str, object] = {"id": v1}
    if parent:
        out["parent"] = parent
    if cfg is None:
        out["created"] = _EPOCH
        out["container_config"] = new_container_config(None)
        out["os"] = "linux"
    else:
        raw = cfg.raw
        if cfg.comment:
            out["comment"] = cfg.comment
        out["created"] = cfg.created or _EPOCH
        if raw.get("container"):
            out["container"] = raw["container"]
        out["container_config"] = raw.get("container_config") or new_container_config(None)
        if raw.get("docker_version"):
            out["docker_version"] = raw["docker_version"]
        if cfg.author:
            out["author"] = cfg.author
        if cfg.config is not None:
            out["config"] = cfg.config
        if cfg.architecture:
            out["architecture"] = cfg.architecture
        if cfg.variant:
            out["variant"] = cfg.variant
        out["os"] = cfg.os or "linux"
    return json.dumps(out, separators=(",", ":")).encode()


def _docker_members(s: Stores, selected: list[_Selected]) -> list[_Member]:
    members: dict[str, _Member] = {}
    manifest_entries: list[dict[str, object]] = []
    repositories: dict[str, dict[str, str]] = {}
    layer_home: dict[str, str] = {}  # diff id -> member name holding the real tar
    pending_layers: list[tuple[str, str, Descriptor, str]] = []  # (dir, diff_id, desc, v1)
    for sel in selected:
        cfg = load_config(s, sel.rec.id)
        manifest = load_manifest(s, sel.rec)
        if manifest is None:
            raise NotFound(f"image {sel.rec.id} has no manifest in the store")
        created = cfg.created_time
        cfg_name = digest_hex(sel.rec.id) + ".json"
        members[cfg_name] = _Member(
            cfg_name, "file", data=s.content.read(sel.rec.id), mtime=created
        )
        chains = chain_ids(cfg.diff_ids)
        parent = ""
        layer_paths: list[str] = []
        for i, (chain, diff_id) in enumerate(zip(chains, cfg.diff_ids, strict=True)):
            top = i == len(chains) - 1
            v1 = _v1_id(chain, parent, sel.rec.id if top else "")
            mtime = created if top else 0.0
            if v1 + "/" not in members:
                members[v1 + "/"] = _Member(v1 + "/", "dir", mtime=mtime)
                members[v1 + "/VERSION"] = _Member(
                    v1 + "/VERSION", "file", data=b"1.0", mtime=mtime
                )
                members[v1 + "/json"] = _Member(
                    v1 + "/json",
                    "file",
                    data=_v1_json(v1, parent, cfg if top else None),
                    mtime=mtime,
                )
                pending_layers.append((v1, diff_id, manifest.layers[i], v1))
            layer_paths.append(f"{v1}/layer.tar")
            parent = v1
        manifest_entries.append(
            {"Config": cfg_name, "RepoTags": sel.tags or None, "Layers": layer_paths}
        )
        for t in sel.tags:
            repo, _, tag_ = t.rpartition(":")
            repositories.setdefault(repo, {})[tag_] = parent
    # The real layer.tar goes to the first dir in member order; the others link to it.
    pending_layers.sort(key=lambda p: p[0])
    for v1, diff_id, desc, _ in pending_layers:
        name = f"{v1}/layer.tar"
        if diff_id in layer_home:
            members[name] = _Member(
                name, "symlink", target=f"../{layer_home[diff_id]}", mtime=members[v1 + "/"].mtime
            )
            continue
        layer_home[diff_id] = name
        size, opener = _layer_source(s, desc, diff_id)
        members[name] = _Member(
            name,
            "file",
            size=size,
            opener=opener,
            mtime=members[v1 + "/"].mtime,
            check_digest=diff_id,
        )
    members["manifest.json"] = _Member(
        "manifest.json", "file", data=json.dumps(manifest_entries, separators=(",", ":")).encode()
    )
    if repositories:
        members["repositories"] = _Member(
            "repositories",
            "file",
            data=json.dumps(repositories, separators=(",", ":"), sort_keys=True).encode(),
        )
    return [members[k] for k in sorted(members)]


_OCI_LAYER = {
    mt.DOCKER_LAYER: mt.OCI_LAYER,
    mt.DOCKER_LAYER_GZIP: mt.OCI_LAYER_GZIP,
    mt.DOCKER_LAYER_ZSTD: mt.OCI_LAYER_ZSTD,
    mt.DOCKER_FOREIGN_LAYER: mt.OCI_LAYER_NONDIST_GZIP,
}


def _oci_members(s: Stores, selected: list[_Selected]) -> list[_Member]:
    members: dict[str, _Member] = {}
    index_entries: list[dict[str, object]] = []

    def blob(digest: str, data: bytes | None = None) -> None:
        name = f"blobs/sha256/{digest_hex(digest)}"
        if name in members:
            return
        if data is not None:
            members[name] = _Member(name, "file", data=data)
            return

        @contextlib.contextmanager
        def opener() -> Iterator[BinaryIO]:
            with s.content.open(digest) as f:
                yield f

        members[name] = _Member(
            name, "file", size=s.content.size(digest), opener=opener, check_digest=digest
        )

    for sel in selected:
        manifest = load_manifest(s, sel.rec)
        if manifest is None:
            raise NotFound(f"image {sel.rec.id} has no manifest in the store")
        cfg_bytes = s.content.read(sel.rec.id)
        blob(sel.rec.id, cfg_bytes)
        layers = []
        for d in manifest.layers:
            if not s.content.has(d.digest):
                raise NotFound(
                    f"layer blob {d.digest} is not in the content store",
                    hint="pull or load the image again",
                )
            blob(d.digest)
            layers.append(
                Descriptor(
                    _OCI_LAYER.get(d.media_type, d.media_type),
                    d.digest,
                    d.size,
                    d.urls,
                    d.annotations,
                )
            )
        oci = Manifest(
            media_type=mt.OCI_MANIFEST,
            config=Descriptor(mt.OCI_CONFIG, sel.rec.id, len(cfg_bytes)),
            layers=layers,
        )
        data = oci.to_bytes()
        m_digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blob(m_digest, data)
        desc = {"mediaType": mt.OCI_MANIFEST, "digest": m_digest, "size": len(data)}
        if not sel.full_tags:
            index_entries.append(desc)
        for full, fam in zip(sel.full_tags, sel.tags, strict=True):
            index_entries.append(
                {
                    **desc,
                    "annotations": {
                        "io.containerd.image.name": full,
                        "org.opencontainers.image.ref.name": fam.rpartition(":")[2],
                    },
                }
            )
    members["oci-layout"] = _Member(
        "oci-layout", "file", data=json.dumps({"imageLayoutVersion": "1.0.0"}).encode()
    )
    index = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": index_entries}
    members["index.json"] = _Member(
        "index.json", "file", data=json.dumps(index, separators=(",", ":")).encode()
    )
    members["blobs/"] = _Member("blobs/", "dir")
    members["blobs/sha256/"] = _Member("blobs/sha256/", "dir")
    return [members[k] for k in sorted(members)]


class _HashingReader:
    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.h = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        # tarfile wants full reads; a decompressing reader returns short ones.
        data = self.f.read(n)
        if n > 0 and 0 < len(data) < n:
            parts = [data]
            got = len(data)
            while got < n:
                more = self.f.read(n - got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            data = b"".join(parts)
        self.h.update(data)
        return data


def _write_tar(members: list[_Member], out: BinaryIO) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for m in members:
            ti = tarfile.TarInfo(m.name.rstrip("/") if m.kind == "dir" else m.name)
            ti.mtime = int(m.mtime)
            ti.uname = ti.gname = ""
            if m.kind == "dir":
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
                tf.addfile(ti)
            elif m.kind == "symlink":
                ti.type = tarfile.SYMTYPE
                ti.linkname = m.target
                ti.mode = 0o777
                tf.addfile(ti)
            elif m.data is not None:
                ti.size = len(m.data)
                ti.mode = 0o644
                tf.addfile(ti, io.BytesIO(m.data))
            else:
                assert m.opener is not None
                ti.size = m.size
                ti.mode = 0o644
                with m.opener() as f:
                    hr = _HashingReader(f)
                    tf.addfile(ti, hr)
                if m.check_digest and "sha256:" + hr.h.hexdigest() != m.check_digest:
                    raise IntegrityError(
                        f"{m.name} hashed to sha256:{hr.h.hexdigest()}, not {m.check_digest}",
                        hint="the store is corrupt; the output is unusable",
                    )


def save(
    paths: EnginePaths, names: list[str], out: BinaryIO | Path, *, format: str = "docker"
) -> None:
    """Write the named images to ``out`` (a stream, or a path written via temp + rename with
    mode 0600, as Docker does)."""
    from overunder.engine.lock import store_lock

    s = stores(paths)
    if isinstance(out, Path) and out.is_dir():
        from overunder.errors import InvalidArgument

        raise InvalidArgument(
            f"{out} is a directory", hint="give -o the path of the tar file to write"
        )
    with store_lock(paths, shared=True):
        selected = _select(s, names)
        members = _docker_members(s, selected) if format == "docker" else _oci_members(s, selected)
        if not isinstance(out, Path):
            _write_tar(members, out)
            return
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except FileNotFoundError as err:
            raise NotFound(
                f"open {out}: no such file or directory",
                hint="the directory of the output file must exist",
            ) from err
        try:
            with os.fdopen(fd, "wb") as f:
                _write_tar(members, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, out)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
