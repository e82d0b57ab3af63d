"""Descriptors, manifests and indexes (Docker schema2 and OCI), parsed from the bytes as
received and written back in the field order both specs use.

The raw JSON of what was parsed is kept (``raw``): digests are over the bytes as received,
so nothing here is ever re-serialised to compute a digest of foreign content.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from overunder.content.digest import validate_digest
from overunder.errors import InvalidArgument, Unsupported
from overunder.image import mediatypes as mt

__all__ = [
    "Descriptor",
    "Index",
    "Manifest",
    "Platform",
    "detect_media_type",
    "parse_index",
    "parse_manifest",
]


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Platform:
        return cls(
            os=str(d.get("os", "")),
            architecture=str(d.get("architecture", "")),
            variant=d.get("variant"),
            os_version=d.get("os.version"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.os_version:
            out["os.version"] = self.os_version
        if self.variant:
            out["variant"] = self.variant
        return out

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    platform: Platform | None = None

    @classmethod
    def from_dict(cls, d: Any, *, where: str) -> Descriptor:
        if not isinstance(d, dict):
            raise InvalidArgument(f"{where}: a descriptor must be a JSON object")
        try:
            digest = validate_digest(d["digest"])
            size = d["size"]
        except KeyError as err:
            raise InvalidArgument(f"{where}: descriptor lacks {err.args[0]!r}") from err
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidArgument(f"{where}: descriptor size {size!r} is not a size")
        platform = d.get("platform")
        return cls(
            media_type=str(d.get("mediaType", "")),
            digest=digest,
            size=size,
            urls=tuple(d.get("urls") or ()),
            annotations=dict(d.get("annotations") or {}),
            platform=Platform.from_dict(platform) if isinstance(platform, dict) else None,
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest}
        out["size"] = self.size
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.platform is not None:
            out["platform"] = self.platform.to_dict()
        return out


@dataclass(frozen=True, slots=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: list[Descriptor]
    annotations: Mapping[str, str] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """Compact JSON in the specs' field order (for manifests we create)."""
        out: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type}
        out["config"] = self.config.to_dict()
        out["layers"] = [layer.to_dict() for layer in self.layers]
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return json.dumps(out, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Index:
    media_type: str
    manifests: list[Descriptor]
    annotations: Mapping[str, str] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict)

    def select(
        self, *, os: str = "linux", architecture: str, variant: str | None = None
    ) -> Descriptor:
        """The manifest for a platform (variant ignored when the entry has none).
        NotFound-like InvalidArgument when the index has no such platform."""
        for d in self.manifests:
            p = d.platform
            if p is None or p.os != os or p.architecture != architecture:
                continue
            if variant and p.variant and p.variant != variant:
                continue
            return d
        have = ", ".join(str(d.platform) for d in self.manifests if d.platform) or "none"
        raise Unsupported(
            f"no image for platform {os}/{architecture}{'/' + variant if variant else ''} "
            f"in the index (it has: {have})",
            hint="choose one of the listed platforms",
        )

    def to_bytes(self) -> bytes:
        out: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type}
        out["manifests"] = [d.to_dict() for d in self.manifests]
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return json.dumps(out, separators=(",", ":")).encode()


def _load(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidArgument(f"{what} is not valid JSON: {err}") from err
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{what} is not a JSON object")
    return doc


def detect_media_type(data: bytes, declared: str | None = None) -> str:
    """The media type of a manifest or index: the body's ``mediaType`` (OCI allows it to be
    absent, then the shape decides), else ``declared``."""
    doc = _load(data, "manifest")
    body = doc.get("mediaType")
    if isinstance(body, str) and body:
        return body
    if "manifests" in doc:
        return mt.OCI_INDEX
    if "layers" in doc and "config" in doc:
        return mt.OCI_MANIFEST
    if doc.get("schemaVersion") == 1:
        return mt.DOCKER_MANIFEST_V1_SIGNED
    return declared or ""


def parse_manifest(data: bytes, media_type: str | None = None) -> Manifest:
    """Parse an image manifest. ``media_type`` is what the transport declared; a body that
    names another type is refused (registries refuse it too: MANIFEST_INVALID)."""
    doc = _load(data, "manifest")
    body_type = doc.get("mediaType")
    kind = body_type or media_type or mt.OCI_MANIFEST
    if media_type and body_type and media_type != body_type:
        raise InvalidArgument(
            f"manifest declared as {media_type} but its body says {body_type}",
            hint="the source is inconsistent",
        )
    if kind == mt.DOCKER_MANIFEST_V1_SIGNED or doc.get("schemaVersion") == 1:
        raise Unsupported(
            "Docker schema 1 manifests are not supported",
            hint="ask the registry for schema 2 (overunder always sends every Accept type)",
        )
    if kind not in mt.MANIFEST_TYPES:
        raise InvalidArgument(f"not an image manifest: media type {kind!r}")
    if doc.get("schemaVersion") != 2:
        raise InvalidArgument(f"manifest schemaVersion {doc.get('schemaVersion')!r} is not 2")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise InvalidArgument("manifest has no layers list")
    return Manifest(
        media_type=kind,
        config=Descriptor.from_dict(doc.get("config"), where="manifest config"),
        layers=[Descriptor.from_dict(d, where=f"manifest layer {i}") for i, d in enumerate(layers)],
        annotations=dict(doc.get("annotations") or {}),
        raw=doc,
    )


def parse_index(data: bytes, media_type: str | None = None) -> Index:
    """Parse an OCI index or a Docker manifest list."""
    doc = _load(data, "index")
    kind = doc.get("mediaType") or media_type or mt.OCI_INDEX
    if kind not in mt.INDEX_TYPES:
        raise InvalidArgument(f"not an image index: media type {kind!r}")
    manifests = doc.get("manifests")
    if not isinstance(manifests, list):
        raise InvalidArgument("index has no manifests list")
    return Index(
        media_type=kind,
        manifests=[
            Descriptor.from_dict(d, where=f"index entry {i}") for i, d in enumerate(manifests)
        ],
        annotations=dict(doc.get("annotations") or {}),
        raw=doc,
    )


def manifest_for(
    config: Descriptor, layers: Sequence[Descriptor], *, oci: bool = False
) -> Manifest:
    """A manifest we create (load of a docker-save tarball, import)."""
    return Manifest(
        media_type=mt.OCI_MANIFEST if oci else mt.DOCKER_MANIFEST,
        config=config,
        layers=list(layers),
    )
