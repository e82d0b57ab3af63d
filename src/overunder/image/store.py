"""The image index: which images exist, and which names, tags and repo digests point at them.

One JSON file, ``<root>/index.json`` (root = ``<engine root>/images``), rewritten atomically
(temp → fsync → rename) under an flock on ``<root>/index.lock``, so that readers never see a
half-written index and two writers never lose each other's update. The image id is the
config digest; the config and manifest blobs live in the content store.

An image is recorded only after all its layers are unpacked and registered (the engine does
that in this order), so a record here always means a complete image.

Names are stored fully qualified (``docker.io/library/busybox:latest``) and shown familiar.
A tag points at one image; giving it to another image takes it away from the first (which
becomes dangling, ``<none>:<none>``), as in Docker.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from overunder import atomic
from overunder.content.digest import validate_digest
from overunder.errors import IntegrityError, InvalidArgument, NotFound
from overunder.image import reference as refs
from overunder.image.reference import Reference

__all__ = ["ImageRecord", "ImageStore"]

_HEX_PREFIX = re.compile(r"(?:sha256:)?([0-9a-f]{1,64})")
_VERSION = 1


@dataclass(slots=True)
class ImageRecord:
    """One image. ``repo_tags``/``repo_digests`` are full names (``docker.io/x/y:1``)."""

    id: str
    manifest_digest: str | None = None
    manifest_media_type: str | None = None
    repo_tags: list[str] = field(default_factory=list)
    repo_digests: list[str] = field(default_factory=list)
    parent: str = ""
    added: float = 0.0
    last_tag: float = 0.0  # when `tag` last named it (Docker's Metadata.LastTagTime)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageRecord:
        return cls(
            id=d["id"],
            manifest_digest=d.get("manifest_digest"),
            manifest_media_type=d.get("manifest_media_type"),
            repo_tags=list(d.get("repo_tags") or []),
            repo_digests=list(d.get("repo_digests") or []),
            parent=d.get("parent") or "",
            added=float(d.get("added") or 0.0),
            last_tag=float(d.get("last_tag") or 0.0),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def familiar_tags(self) -> list[str]:
        return [familiar(t) for t in self.repo_tags]

    @property
    def familiar_digests(self) -> list[str]:
        return [familiar(t) for t in self.repo_digests]


def familiar(full: str) -> str:
    """``docker.io/library/busybox:latest`` → ``busybox:latest`` (also for ``name@digest``)."""
    try:
        ref = refs.parse(full, default_tag=False)
    except InvalidArgument:
        return full
    return ref.familiar


class ImageStore:
    """See the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.index_path = self.root / "index.json"
        self.lock_path = self.root / "index.lock"

    # -- reading -------------------------------------------------------------------------
    def _read(self) -> dict[str, ImageRecord]:
        try:
            data = self.index_path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            doc = json.loads(data)
            return {k: ImageRecord.from_dict(v) for k, v in doc.get("images", {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise IntegrityError(
                f"the image index {self.index_path} is unreadable ({err})",
                hint="restore it from a backup, or remove it and load or pull the images again",
            ) from err

    def list(self) -> list[ImageRecord]:
        return list(self._read().values())

    def get(self, image_id: str) -> ImageRecord:
        rec = self._read().get(image_id)
        if rec is None:
            raise NotFound(f"No such image: {image_id}")
        return rec

    def resolve(self, name: str) -> ImageRecord:
        """An image by full id, name[:tag], name@digest or id prefix (Docker's order).
        NotFound ("No such image: X") when nothing matches."""
        images = self._read()
        found = _resolve_in(images, name)
        if found is None:
            raise NotFound(f"No such image: {name}", hint="see 'overunder images' for what is here")
        return found

    # -- writing -------------------------------------------------------------------------
    @contextlib.contextmanager
    def _update(self) -> Iterator[dict[str, ImageRecord]]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            images = self._read()
            yield images
            self._write(images)
        finally:
            os.close(fd)

    def _write(self, images: dict[str, ImageRecord]) -> None:
        doc = {"version": _VERSION, "images": {k: v.to_dict() for k, v in images.items()}}
        atomic.write_json(self.index_path, doc)

    def add(
        self,
        image_id: str,
        manifest_digest: str | None,
        *,
        names: Sequence[Reference | str] = (),
        repo_digests: Sequence[Reference | str] = (),
        manifest_media_type: str | None = None,
        parent: str = "",
    ) -> tuple[ImageRecord, builtins.list[str]]:
        """Record an image (or update it) and point ``names`` (tags) at it.

        ``repo_digests`` are ``name@sha256:...`` references. Returns the record and the full
        names that were moved away from other images (those images keep existing, maybe
        dangling)."""
        validate_digest(image_id)
        tags = [_full_tag(n) for n in names]
        digests = [_full_digest(n) for n in repo_digests]
        moved: builtins.list[str] = []
        with self._update() as images:
            rec = images.get(image_id) or ImageRecord(id=image_id, added=time.time())
            if manifest_digest is not None:
                rec.manifest_digest = manifest_digest
                rec.manifest_media_type = manifest_media_type
            if parent:
                rec.parent = parent
            for tag in tags:
                for other in images.values():
                    if other.id != image_id and tag in other.repo_tags:
                        other.repo_tags.remove(tag)
                        moved.append(tag)
                if tag not in rec.repo_tags:
                    rec.repo_tags.append(tag)
            for d in digests:
                if d not in rec.repo_digests:
                    rec.repo_digests.append(d)
            images[image_id] = rec
            return rec, moved

    def tag(self, image_id: str, name: Reference | str) -> ImageRecord:
        """Point ``name`` at the image (``docker tag``); records the tag time."""
        self.add(image_id, None, names=[name])
        with self._update() as images:
            rec = images[image_id]
            rec.last_tag = time.time()
            return rec

    def untag(self, name: Reference | str) -> ImageRecord:
        """Remove a tag (or a repo digest); returns the image it pointed at."""
        full = str(name) if isinstance(name, Reference) else name
        with self._update() as images:
            for rec in images.values():
                if full in rec.repo_tags:
                    rec.repo_tags.remove(full)
                    return rec
                if full in rec.repo_digests:
                    rec.repo_digests.remove(full)
                    return rec
        raise NotFound(f"No such image: {familiar(full)}")

    def remove(self, image_id: str) -> ImageRecord:
        """Forget an image record (blobs and layers are the caller's business)."""
        with self._update() as images:
            rec = images.pop(image_id, None)
        if rec is None:
            raise NotFound(f"No such image: {image_id}")
        return rec


def _is_hexish(name: str, image_id: str) -> bool:
    """True when ``name`` names ``image_id`` by (a prefix of) its hex id."""
    m = _HEX_PREFIX.fullmatch(name)
    return m is not None and image_id.startswith("sha256:" + m.group(1))


def _full_tag(name: Reference | str) -> str:
    ref = name if isinstance(name, Reference) else refs.parse(name)
    if ref.tag is None:
        ref = ref.with_tag(refs.DEFAULT_TAG)
    return f"{ref.name}:{ref.tag}"


def _full_digest(name: Reference | str) -> str:
    ref = name if isinstance(name, Reference) else refs.parse(name, default_tag=False)
    if ref.digest is None:
        raise InvalidArgument(f"{name} is not a NAME@sha256:DIGEST reference")
    return f"{ref.name}@{ref.digest}"


def _resolve_in(images: dict[str, ImageRecord], name: str) -> ImageRecord | None:
    if name in images:
        return images[name]
    if name.startswith("sha256:") and len(name) == 71 and name in images:
        return images[name]
    ref: Reference | None
    try:
        ref = refs.parse(name)
    except InvalidArgument:
        ref = None
    if ref is not None:
        if ref.digest is not None:
            want = f"{ref.name}@{ref.digest}"
            for rec in images.values():
                if want in rec.repo_digests:
                    return rec
        else:
            want = f"{ref.name}:{ref.tag}"
            for rec in images.values():
                if want in rec.repo_tags:
                    return rec
    m = _HEX_PREFIX.fullmatch(name)
    if m is not None:
        prefix = "sha256:" + m.group(1)
        hits = [rec for key, rec in images.items() if key.startswith(prefix)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise InvalidArgument(
                f"image id prefix {name!r} is ambiguous ({len(hits)} images match)",
                hint="give more characters of the id",
            )
    return None
