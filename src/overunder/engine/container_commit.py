"""``commit``: a container's upper dir becomes a new image layer on top of its image.

1. The container is paused (``runc pause``: the cgroup freezer) while its upper dir is read,
   unless ``pause=False`` or it is not running, so the layer is one consistent moment.
2. The upper dir is written as an OCI layer tar by
   :func:`overunder.layerfs.tar_write.write_layer` (whiteouts as ``.wh.<name>`` stamped with
   the commit time, opaque dirs as ``.wh..wh..opq``; docker-compat §10), straight into the
   content store (uncompressed: its digest is its diff ID). The container is resumed as soon
   as the tar is written.
3. The layer is unpacked into the snapshot store as a committed layer (the same path as every
   other layer, so whiteouts are converted back exactly as a pulled layer's are).
4. A new config: the container's ``Config`` with ``--change`` instructions applied (the
   parser of ``import``), ``container`` / ``container_config``, ``author``, ``comment``, and
   the base image's history plus one entry whose ``created_by`` is the container's command
   (docker-compat §9, §11); a manifest listing the base image's layers and the new one; an
   image record with ``Parent`` = the base image, tagged ``REPO[:TAG]`` when given.

Note: like Docker's, the committed layer is the upper dir as it is, including copy-ups that
``diff`` hides (a dir copied up because a child came and went).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from overunder.engine.container_mount import container_layers
from overunder.engine.containers import find_container, runtime_for
from overunder.engine.image_import import apply_changes
from overunder.engine.images import (
    load_config,
    load_manifest,
    record_image,
    stores,
    whiteout_mode,
)
from overunder.engine.paths import EnginePaths
from overunder.errors import OverunderError
from overunder.image import mediatypes as mt
from overunder.image.config import ImageConfig, build_config, rfc3339nano
from overunder.image.ids import chain_ids
from overunder.image.manifest import Descriptor, manifest_for

__all__ = ["commit_container"]


class _Sink:
    """A content-store writer as the binary stream ``write_layer`` writes to."""

    def __init__(self, writer: Any) -> None:
        self._w = writer

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._w.write(data)
        return len(data)


def commit_container(
    paths: EnginePaths,
    name_or_id: str,
    reference: str | None = None,
    *,
    message: str = "",
    author: str = "",
    changes: Sequence[str] = (),
    pause: bool = True,
) -> str:
    """Commit the container's changes as a new image; returns its id (``sha256:<hex>``).
    NotFound ``No such container: X``; InvalidArgument for a bad reference or change."""
    from overunder.engine.lock import store_lock
    from overunder.image import reference as refs
    from overunder.layerfs.tar_apply import apply_layer
    from overunder.layerfs.tar_write import write_layer

    ref = refs.parse(reference) if reference else None
    rec = find_container(paths, name_or_id)
    new_config = apply_changes(dict(rec.config), changes)  # validates before pausing
    s = stores(paths)
    upper = container_layers(paths, rec).upper
    now = time.time()
    created = rfc3339nano(now)
    runtime = None
    if pause and rec.state.status == "running":
        runtime = runtime_for(paths, rec.runtime)
        runtime.pause(rec.id)
    try:
        with s.content.writer() as w:
            written = write_layer(upper, _Sink(w), whiteout_mtime=now)  # type: ignore[arg-type]
            blob = w.commit()
    finally:
        if runtime is not None:
            with contextlib.suppress(OverunderError):
                runtime.resume(rec.id)
    with store_lock(paths):
        base = load_config(s, rec.image_id)
        diff_ids = [*base.diff_ids, written.diff_id]
        chains = chain_ids(diff_ids)
        style, ns = whiteout_mode(s)

        def apply(fs: Path) -> Any:
            with s.content.open(blob) as f:
                return apply_layer(f, fs, whiteout_style=style, xattr_ns=ns, name=blob)

        s.snapshots.ensure_layer(
            chains[-1], chains[-2] if len(chains) > 1 else None, apply, diff_id=written.diff_id
        )
        command = " ".join([rec.path, *rec.args])
        step: dict[str, Any] = {"created": created}
        if author:
            step["author"] = author
        step["created_by"] = command
        if message:
            step["comment"] = message
        history = base.history or [{"created": base.created}] * len(base.diff_ids)
        container_config = dict(rec.config)
        new_config.setdefault("Hostname", rec.short_id)
        new_config["Image"] = rec.image_name
        if new_config.get("Labels") is None:
            new_config["Labels"] = {}
        extra: dict[str, Any] = {
            "container": rec.id,
            "container_config": container_config,
        }
        if author:
            extra["author"] = author
        if message:
            extra["comment"] = message
        if base.variant:
            extra["variant"] = base.variant
        cfg_bytes = build_config(
            diff_ids=diff_ids,
            history=[*history, step],
            config=new_config,
            created=created,
            extra=extra,
        )
        cfg_digest = s.content.put(cfg_bytes)
        ImageConfig.parse(cfg_bytes, digest=cfg_digest)
        manifest_digest, media = _manifest(s, rec.image_id, cfg_digest, len(cfg_bytes), blob)
        record_image(
            s,
            config_digest=cfg_digest,
            manifest_digest=manifest_digest,
            manifest_media_type=media,
            names=[ref] if ref is not None else [],
            parent=rec.image_id,
        )
    return cfg_digest


def _manifest(
    s: Any, base_id: str, cfg_digest: str, cfg_size: int, blob: str
) -> tuple[str | None, str | None]:
    """A manifest for the new image: the base image's layers plus the new one. None when the
    base image has no manifest (an image recorded without one cannot be saved either)."""
    base_rec = s.images.get(base_id)
    base_manifest = load_manifest(s, base_rec)
    if base_manifest is None:
        return None, None
    oci = base_manifest.media_type == mt.OCI_MANIFEST
    layer = Descriptor(mt.OCI_LAYER if oci else mt.DOCKER_LAYER, blob, s.content.size(blob))
    config = Descriptor(mt.OCI_CONFIG if oci else mt.DOCKER_CONFIG, cfg_digest, cfg_size)
    manifest = manifest_for(config, [*base_manifest.layers, layer], oci=oci)
    digest: str = s.content.put(manifest.to_bytes())
    return digest, manifest.media_type
