"""``import``: a rootfs tar (plain or compressed) becomes a one-layer image, like
``docker import``. The tar is kept byte for byte as the layer blob (its digest is the diff ID
when it is uncompressed), so ``save`` hands back the very same bytes.

``--change`` takes the Dockerfile instructions Docker allows there: CMD, ENTRYPOINT, ENV,
EXPOSE, LABEL, ONBUILD, STOPSIGNAL, USER, VOLUME, WORKDIR (HEALTHCHECK is not supported yet).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from overunder.engine.images import Stores, record_image, stores, unpack_image
from overunder.engine.paths import EnginePaths
from overunder.errors import InvalidArgument, NotFound
from overunder.image import mediatypes as mt
from overunder.image.config import ImageConfig, build_config, rfc3339nano
from overunder.image.manifest import Descriptor, manifest_for
from overunder.image.reference import Reference

__all__ = ["apply_changes", "import_"]

_ALLOWED = (
    "CMD",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "LABEL",
    "ONBUILD",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
)
_CHUNK = 1 << 20


def _exec_form(arg: str) -> list[str]:
    """``["a","b"]`` (JSON) or shell form ``a b`` → ``["/bin/sh","-c","a b"]``."""
    text = arg.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    return ["/bin/sh", "-c", text]


def _pairs(arg: str, what: str) -> list[tuple[str, str]]:
    """``k=v k2="v 2"`` or the legacy ``k v`` form."""
    words = shlex.split(arg)
    if not words:
        raise InvalidArgument(f"{what} needs at least one argument")
    if "=" not in words[0]:
        key, _, value = arg.strip().partition(" ")
        return [(key, value.strip())]
    out = []
    for w in words:
        key, sep, value = w.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"{what}: {w!r} is not KEY=VALUE")
        out.append((key, value))
    return out


def apply_changes(config: dict[str, Any], changes: Sequence[str]) -> dict[str, Any]:
    """Apply ``--change`` instructions to a container config (a new dict is returned)."""
    cfg = dict(config)
    for change in changes:
        instr, _, arg = change.strip().partition(" ")
        op = instr.upper()
        arg = arg.strip()
        if op not in _ALLOWED:
            raise InvalidArgument(
                f"{instr} is not a valid change command",
                hint=f"use one of {', '.join(_ALLOWED)}",
            )
        if op == "CMD":
            cfg["Cmd"] = _exec_form(arg)
        elif op == "ENTRYPOINT":
            cfg["Entrypoint"] = _exec_form(arg)
        elif op == "ENV":
            env = list(cfg.get("Env") or [])
            for k, v in _pairs(arg, "ENV"):
                env = [e for e in env if e.split("=", 1)[0] != k] + [f"{k}={v}"]
            cfg["Env"] = env
        elif op == "LABEL":
            labels = dict(cfg.get("Labels") or {})
            labels.update(dict(_pairs(arg, "LABEL")))
            cfg["Labels"] = labels
        elif op == "EXPOSE":
            ports = dict(cfg.get("ExposedPorts") or {})
            for p in arg.split():
                ports[p if "/" in p else f"{p}/tcp"] = {}
            cfg["ExposedPorts"] = ports
        elif op == "VOLUME":
            vols = dict(cfg.get("Volumes") or {})
            items = _exec_form(arg) if arg.startswith("[") else arg.split()
            for v in items:
                vols[v] = {}
            cfg["Volumes"] = vols
        elif op == "WORKDIR":
            cfg["WorkingDir"] = arg
        elif op == "USER":
            cfg["User"] = arg
        elif op == "STOPSIGNAL":
            cfg["StopSignal"] = arg
        elif op == "ONBUILD":
            cfg["OnBuild"] = [*(cfg.get("OnBuild") or []), arg]
    return cfg


def import_(
    paths: EnginePaths,
    source: Path | BinaryIO,
    *,
    reference: str | None = None,
    changes: Sequence[str] = (),
    message: str = "",
) -> str:
    """Import a rootfs tar; returns the new image id."""
    from overunder.engine.lock import store_lock
    from overunder.image import reference as refs

    ref = refs.parse(reference) if reference else None
    config_values = apply_changes({}, changes)
    s = stores(paths)
    with store_lock(paths):
        try:
            f: BinaryIO = open(source, "rb") if isinstance(source, Path) else source  # noqa: SIM115
        except FileNotFoundError as err:
            raise NotFound(f"open {source}: no such file or directory") from err
        try:
            with s.content.writer() as w:
                while chunk := f.read(_CHUNK):
                    w.write(chunk)
                blob = w.commit()
        finally:
            if isinstance(source, Path):
                f.close()
        try:
            return _import_blob(
                s, blob, source=str(source), config_values=config_values, message=message, ref=ref
            )
        except BaseException:
            from overunder.engine.images import gc_blobs, gc_layers

            gc_layers(s)
            gc_blobs(s, {blob})
            raise


def _import_blob(
    s: Stores,
    blob: str,
    *,
    source: str,
    config_values: dict[str, Any],
    message: str,
    ref: Reference | None,
) -> str:
    # The diff ID comes from the unpack (it decompresses); build the config after it.
    from overunder.engine.images import whiteout_mode
    from overunder.layerfs.tar_apply import apply_layer

    style, ns = whiteout_mode(s)

    def apply(fs: Path) -> Any:
        with s.content.open(blob) as lf:
            return apply_layer(lf, fs, whiteout_style=style, xattr_ns=ns, name=source)

    # One layer: its chain ID is its diff ID, known only after decompressing it.
    from overunder.layerfs.compression import DEFAULT_MAX_BYTES, LayerReader

    with s.content.open(blob) as lf:
        reader = LayerReader(lf, name=source, max_bytes=DEFAULT_MAX_BYTES)
        reader.drain()
        diff_id = reader.diff_id
    s.snapshots.ensure_layer(diff_id, None, apply, diff_id=diff_id)
    created = rfc3339nano()
    comment = message or "Imported from -"
    cfg_bytes = build_config(
        diff_ids=[diff_id],
        history=[{"created": created, "comment": comment}],
        config=config_values,
        created=created,
        extra={"comment": comment},
    )
    cfg_digest = s.content.put(cfg_bytes)
    cfg = ImageConfig.parse(cfg_bytes, digest=cfg_digest)
    media = mt.DOCKER_LAYER
    if blob != diff_id:
        media = mt.DOCKER_LAYER_GZIP if reader.compression == "gzip" else mt.DOCKER_LAYER_ZSTD
    manifest = manifest_for(
        Descriptor(mt.DOCKER_CONFIG, cfg_digest, len(cfg_bytes)),
        [Descriptor(media, blob, s.content.size(blob))],
    )
    m_digest = s.content.put(manifest.to_bytes())
    unpack_image(s, manifest, cfg)
    rec = record_image(
        s,
        config_digest=cfg_digest,
        manifest_digest=m_digest,
        manifest_media_type=manifest.media_type,
        names=[ref] if ref is not None else [],
    )
    return rec.id
