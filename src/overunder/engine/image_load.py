"""``load``: ``docker save`` tarballs and OCI image layouts (a directory, or a tar of one),
plain or compressed, from a file or a stream.

Two passes. First every member of the archive goes where it belongs: blobs (layer tars,
anything large, everything under ``blobs/sha256/``) into the content store, verified against
their names when the name is a digest; small files (``manifest.json``, ``repositories``,
configs of old tarballs) into memory. Nothing is ever written under a member's name, so a
hostile name (``../x``, ``/etc/passwd``) cannot place a file anywhere; references *to* such
names from ``manifest.json`` or ``index.json`` are refused. Second, each image's layers are
unpacked from the content store (in parallel) and the image is recorded, last, so a killed
load leaves no image that claims to be complete.

Docker-archive layers are uncompressed tars whose digest is their diff ID; we keep them as
blobs (media type ``…rootfs.diff.tar``) so ``save`` reproduces them byte for byte.

Gaps: a ``docker save`` of a multi-platform image by Docker 25+ is read through its
``manifest.json`` (one platform); OCI layouts with indexes pick the host's platform.
"""

from __future__ import annotations

import json
import os
import posixpath
import signal
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from overunder.content.digest import digest_hex, is_digest, validate_digest
from overunder.engine.images import Stores, record_image, stores, unpack_image
from overunder.engine.paths import EnginePaths
from overunder.errors import IntegrityError, InvalidArgument, NotFound
from overunder.image import mediatypes as mt
from overunder.image.config import ImageConfig, go_arch
from overunder.image.manifest import (
    Descriptor,
    Manifest,
    detect_media_type,
    manifest_for,
    parse_index,
    parse_manifest,
)
from overunder.image.store import familiar

__all__ = ["CRASH_ENV", "LoadedImage", "load"]

CRASH_ENV = "OVERUNDER_TEST_CRASH_AT"
"""Test hook: SIGKILL ourselves at a named point of a load (``ingest:N`` after N blobs,
``layer:N`` after N layers, ``record``) to prove a killed load leaves no complete-looking
image. Unset in normal use."""

_SMALL = 1 << 20
_SMALL_TOTAL = 64 << 20  # past this, small members go to the content store too
_CHUNK = 1 << 20


def _crash_point(name: str) -> None:
    want = os.environ.get(CRASH_ENV)
    if want and want == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True, slots=True)
class LoadedImage:
    id: str
    names: list[str]
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """What ``docker load`` prints for this image (a tag taken from another image is
        announced first, in Docker's words)."""
        if self.names:
            return [*self.notes, *(f"Loaded image: {n}" for n in self.names)]
        return [f"Loaded image ID: {self.id}"]


def _clean_member(name: str) -> str | None:
    """A member name as a clean relative path; None for names that could not be referenced
    safely (absolute, ``..``)."""
    n = name
    while n.startswith("./"):
        n = n[2:]
    n = n.rstrip("/")
    if not n or n.startswith("/"):
        return None
    norm = posixpath.normpath(n)
    if norm == ".." or norm.startswith("../") or norm == ".":
        return None
    return norm


def _clean_ref(path: Any, what: str) -> str:
    """A path named inside ``manifest.json``/``index.json``; refuses escapes."""
    if not isinstance(path, str) or not path:
        raise InvalidArgument(f"{what}: {path!r} is not a path inside the archive")
    clean = _clean_member(path)
    if clean is None or any(part == ".." for part in path.split("/")):
        raise InvalidArgument(
            f"{what} names {path!r}, which is outside the archive",
            hint="the archive is malformed or hostile; nothing was loaded",
        )
    return clean


@dataclass
class Archive:
    """What an archive holds, by clean member name."""

    s: Stores
    source: str
    small: dict[str, bytes] = field(default_factory=dict)
    blobs: dict[str, str] = field(default_factory=dict)  # name -> digest in content store
    small_total: int = 0
    links: dict[str, str] = field(default_factory=dict)  # name -> clean target name
    layout_dir: Path | None = None

    def _resolve(self, name: str) -> str:
        seen: set[str] = set()
        while name in self.links:
            if name in seen:
                raise InvalidArgument(f"{self.source}: link loop at {name!r}")
            seen.add(name)
            name = self.links[name]
        return name

    def has(self, name: str) -> bool:
        n = self._resolve(name)
        return n in self.small or n in self.blobs

    def read(self, name: str) -> bytes:
        n = self._resolve(name)
        if n in self.small:
            return self.small[n]
        if n in self.blobs:
            return self.s.content.read(self.blobs[n])
        raise InvalidArgument(
            f"{self.source}: the archive has no {name!r}",
            hint="the archive is incomplete (was it cut short?)",
        )

    def blob(self, name: str) -> str:
        """Digest of a member, stored in the content store."""
        n = self._resolve(name)
        if n in self.blobs:
            return self.blobs[n]
        if n in self.small:
            d = self.s.content.put(self.small[n])
            self.blobs[n] = d
            return d
        raise InvalidArgument(
            f"{self.source}: the archive has no {name!r}",
            hint="the archive is incomplete (was it cut short?)",
        )

    def blob_by_digest(self, digest: str) -> str:
        """An OCI blob (``blobs/sha256/<hex>``), verified, in the content store."""
        validate_digest(digest)
        name = f"blobs/sha256/{digest_hex(digest)}"
        if self.layout_dir is not None:
            if self.s.content.has(digest):
                return digest
            path = self.layout_dir / name
            try:
                f = open(path, "rb")  # noqa: SIM115
            except FileNotFoundError as err:
                raise InvalidArgument(f"{self.source}: blob {digest} is missing") from err
            with f, self.s.content.writer(expected_digest=digest) as w:
                while chunk := f.read(_CHUNK):
                    w.write(chunk)
                return w.commit()
        d = self.blob(name)
        if d != digest:
            raise IntegrityError(f"{self.source}: {name} does not hash to its name ({d})")
        return d

    def read_digest(self, digest: str) -> bytes:
        return self.s.content.read(self.blob_by_digest(digest))


def _ingest_tar(s: Stores, stream: BinaryIO, source: str) -> Archive:
    arc = Archive(s=s, source=source)
    n_blobs = 0
    try:
        tf = tarfile.open(fileobj=stream, mode="r|*")  # noqa: SIM115
    except tarfile.TarError as err:
        raise InvalidArgument(
            f"{source} is not a tar archive ({err})",
            hint="give a file written by 'docker save', 'overunder save' or an OCI layout tar",
        ) from err
    try:
        with tf:
            for m in tf:
                name = _clean_member(m.name)
                if name is None:
                    continue
                if m.issym():
                    target = posixpath.normpath(posixpath.join(posixpath.dirname(name), m.linkname))
                    arc.links[name] = target
                    continue
                if m.islnk():
                    target_clean = _clean_member(m.linkname)
                    if target_clean is not None:
                        arc.links[name] = target_clean
                    continue
                if not m.isfile():
                    continue
                f = tf.extractfile(m)
                assert f is not None
                expected: str | None = None
                parts = name.split("/")
                if len(parts) == 3 and parts[0] == "blobs" and parts[1] == "sha256":
                    expected = "sha256:" + parts[2]
                    if not is_digest(expected):
                        expected = None
                if (
                    expected is None
                    and m.size <= _SMALL
                    and arc.small_total + m.size <= _SMALL_TOTAL
                    and not name.endswith("layer.tar")
                ):
                    arc.small[name] = f.read()
                    arc.small_total += m.size
                    continue
                try:
                    with s.content.writer(expected_digest=expected, expected_size=m.size) as w:
                        while chunk := f.read(_CHUNK):
                            w.write(chunk)
                        arc.blobs[name] = w.commit()
                except IntegrityError as err:
                    raise IntegrityError(
                        f"{source}: member {m.name!r}: {err.message}",
                        hint="the archive is corrupt; nothing was loaded",
                    ) from err
                n_blobs += 1
                _crash_point(f"ingest:{n_blobs}")
    except (tarfile.TarError, EOFError) as err:
        raise InvalidArgument(
            f"{source}: the tar archive is truncated or corrupt ({err})",
            hint="write the archive again; nothing was loaded",
        ) from err
    return arc


def _layout_dir(s: Stores, path: Path) -> Archive:
    arc = Archive(s=s, source=str(path), layout_dir=path)
    for name in ("index.json", "oci-layout", "manifest.json", "repositories"):
        p = path / name
        if p.is_file():
            arc.small[name] = p.read_bytes()
    return arc


def _layer_media_type(s: Stores, digest: str, diff_id: str, *, oci: bool) -> str:
    if digest == diff_id:
        return mt.OCI_LAYER if oci else mt.DOCKER_LAYER
    with s.content.open(digest) as f:
        head = f.read(4)
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return mt.OCI_LAYER_ZSTD if oci else mt.DOCKER_LAYER_ZSTD
    if head.startswith(b"\x1f\x8b"):
        return mt.OCI_LAYER_GZIP if oci else mt.DOCKER_LAYER_GZIP
    return mt.OCI_LAYER if oci else mt.DOCKER_LAYER


@dataclass(frozen=True, slots=True)
class _Found:
    manifest: Manifest
    manifest_digest: str
    config: ImageConfig
    names: list[str]


def _docker_images(arc: Archive) -> Iterator[_Found]:
    try:
        entries = json.loads(arc.read("manifest.json"))
    except ValueError as err:
        raise InvalidArgument(f"{arc.source}: manifest.json is not JSON ({err})") from err
    if not isinstance(entries, list):
        raise InvalidArgument(f"{arc.source}: manifest.json is not a list")
    s = arc.s
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise InvalidArgument(f"{arc.source}: manifest.json entry {i} is not an object")
        cfg_name = _clean_ref(e.get("Config"), f"manifest.json entry {i} Config")
        layer_names = e.get("Layers")
        if not isinstance(layer_names, list):
            raise InvalidArgument(f"{arc.source}: manifest.json entry {i} has no Layers list")
        layer_names = [_clean_ref(p, f"manifest.json entry {i} Layers") for p in layer_names]
        cfg_bytes = arc.read(cfg_name)
        cfg_digest = s.content.put(cfg_bytes)
        cfg = ImageConfig.parse(cfg_bytes, digest=cfg_digest)
        if len(layer_names) != len(cfg.diff_ids):
            raise InvalidArgument(
                f"{arc.source}: image {cfg_name} lists {len(layer_names)} layers but its "
                f"config has {len(cfg.diff_ids)} diff IDs",
                hint="the archive is malformed",
            )
        layers = []
        for name, diff_id in zip(layer_names, cfg.diff_ids, strict=True):
            d = arc.blob(name)
            layers.append(
                Descriptor(
                    media_type=_layer_media_type(s, d, diff_id, oci=False),
                    digest=d,
                    size=s.content.size(d),
                )
            )
        manifest = manifest_for(
            Descriptor(mt.DOCKER_CONFIG, cfg_digest, len(cfg_bytes)), layers, oci=False
        )
        m_digest = s.content.put(manifest.to_bytes())
        tags = e.get("RepoTags") or []
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise InvalidArgument(f"{arc.source}: manifest.json entry {i} RepoTags is not a list")
        yield _Found(manifest, m_digest, cfg, list(tags))


def _oci_name(annotations: Any) -> list[str]:
    if not isinstance(annotations, dict):
        return []
    full = annotations.get("io.containerd.image.name")
    if isinstance(full, str) and full:
        return [full]
    ref = annotations.get("org.opencontainers.image.ref.name")
    if isinstance(ref, str) and ref:
        return [ref]
    return []


def _oci_images(arc: Archive) -> Iterator[_Found]:
    index = parse_index(arc.read("index.json"), mt.OCI_INDEX)
    arch = go_arch()

    def walk(desc: Descriptor, names: list[str], depth: int) -> Iterator[_Found]:
        if depth > 4:
            raise InvalidArgument(f"{arc.source}: indexes nested too deep")
        data = arc.read_digest(desc.digest)
        kind = detect_media_type(data, desc.media_type or None)
        if mt.is_index(kind):
            sub = parse_index(data, kind)
            chosen = sub.select(os="linux", architecture=arch)
            yield from walk(chosen, names or _oci_name(sub.annotations), depth + 1)
            return
        manifest = parse_manifest(data, kind)
        cfg_bytes = arc.read_digest(manifest.config.digest)
        cfg = ImageConfig.parse(cfg_bytes, digest=manifest.config.digest)
        for layer in manifest.layers:
            arc.blob_by_digest(layer.digest)
        yield _Found(manifest, desc.digest, cfg, names)

    for desc in index.manifests:
        yield from walk(desc, _oci_name(desc.annotations), 0)


def load(
    paths: EnginePaths,
    source: Path | BinaryIO,
    *,
    on_layer: Callable[[str, str], None] | None = None,
    source_name: str | None = None,
) -> list[LoadedImage]:
    """Load every image of an archive; returns them in archive order."""
    from overunder.engine.lock import store_lock

    s = stores(paths)
    name = source_name or (str(source) if isinstance(source, Path) else "stdin")
    with store_lock(paths):
        before = set(s.content.digests())
        try:
            return _load_locked(s, source, name, on_layer)
        finally:
            # Blobs this load brought that no image references (other platforms of an OCI
            # tar, everything of a failed load) would otherwise stay forever.
            from overunder.engine.images import gc_blobs, gc_layers

            gc_layers(s)
            gc_blobs(s, set(s.content.digests()) - before)


def _load_locked(
    s: Stores,
    source: Path | BinaryIO,
    name: str,
    on_layer: Callable[[str, str], None] | None,
) -> list[LoadedImage]:
    if isinstance(source, Path):
        if source.is_dir():
            arc = _layout_dir(s, source)
        else:
            try:
                f = open(source, "rb")  # noqa: SIM115
            except FileNotFoundError as err:
                raise NotFound(
                    f"open {source}: no such file or directory",
                    hint="give the path of a tarball written by 'save'",
                ) from err
            with f:
                arc = _ingest_tar(s, f, name)
    else:
        arc = _ingest_tar(s, source, name)
    _crash_point("ingested")
    if arc.has("manifest.json"):
        found = list(_docker_images(arc))
    elif arc.has("index.json"):
        found = list(_oci_images(arc))
    else:
        raise InvalidArgument(
            f"{name} is neither a 'docker save' tarball (no manifest.json) nor an OCI "
            "image layout (no index.json)",
            hint="give a file written by 'save', 'docker save' or 'skopeo copy … oci:'",
        )
    if not found:
        raise InvalidArgument(f"{name} holds no images")
    out: list[LoadedImage] = []
    n_layers = 0
    for img in found:
        unpack_image(s, img.manifest, img.config, on_layer=on_layer)
        n_layers += len(img.manifest.layers)
        _crash_point(f"layers:{n_layers}")
        notes = []
        for n in img.names:
            full = _full(n)
            try:
                prev = s.images.resolve(full)
            except NotFound:
                continue
            if prev.id != img.config.id and full in prev.repo_tags:
                notes.append(
                    f"The image {familiar(full)} already exists, renaming the old one with "
                    f"ID {prev.id} to empty string"
                )
        rec = record_image(
            s,
            config_digest=img.config.id,
            manifest_digest=img.manifest_digest,
            manifest_media_type=img.manifest.media_type,
            names=img.names,
        )
        out.append(
            LoadedImage(id=rec.id, names=[familiar(_full(n)) for n in img.names], notes=notes)
        )
    return out


def _full(name: str) -> str:
    from overunder.image import reference as refs

    ref = refs.parse(name)
    return f"{ref.name}:{ref.tag}" if ref.digest is None else f"{ref.name}@{ref.digest}"
