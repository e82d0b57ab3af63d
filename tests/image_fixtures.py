"""Test images built from /bin/busybox with tarfile (no network, no Docker): layer tars,
``docker save`` tarballs and OCI layouts. Shared by the image-store tests (engineer D)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
APPLETS = ("sh", "ls", "cat", "echo", "sleep", "mkdir", "rm", "env")
MTIME = 1700000000


def _add(
    tf: tarfile.TarFile,
    name: str,
    *,
    data: bytes | None = None,
    kind: bytes = tarfile.REGTYPE,
    mode: int = 0o644,
    link: str = "",
) -> None:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mode = mode
    ti.mtime = MTIME
    ti.uname = ti.gname = "root"
    if link:
        ti.linkname = link
    if data is not None:
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    else:
        tf.addfile(ti)


def layer_tar(files: dict[str, bytes | str | None], *, busybox: bool = False) -> bytes:
    """A layer tar. ``files``: path -> bytes (file), str (symlink target), None (dir).
    ``busybox`` adds bin/busybox and applet symlinks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        if busybox:
            _add(tf, "bin/", kind=tarfile.DIRTYPE, mode=0o755)
            _add(tf, "bin/busybox", data=Path(BUSYBOX).read_bytes(), mode=0o755)
            for a in APPLETS:
                _add(tf, f"bin/{a}", kind=tarfile.SYMTYPE, link="busybox", mode=0o777)
            _add(tf, "etc/", kind=tarfile.DIRTYPE, mode=0o755)
            _add(tf, "etc/hostname", data=b"busybox\n")
            _add(tf, "tmp/", kind=tarfile.DIRTYPE, mode=0o1777)
        for path, content in files.items():
            if content is None:
                _add(tf, path.rstrip("/") + "/", kind=tarfile.DIRTYPE, mode=0o755)
            elif isinstance(content, str):
                _add(tf, path, kind=tarfile.SYMTYPE, link=content, mode=0o777)
            else:
                _add(tf, path, data=content)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class BuiltImage:
    layers: list[bytes]
    config: bytes
    tags: list[str]

    @property
    def id(self) -> str:
        return sha(self.config)

    @property
    def diff_ids(self) -> list[str]:
        return [sha(layer) for layer in self.layers]


def make_image(
    layers: Sequence[bytes],
    tags: Sequence[str] = (),
    *,
    cmd: Sequence[str] = ("sh",),
    created: str = "2024-01-02T03:04:05Z",
) -> BuiltImage:
    history = [{"created": created, "created_by": f"layer {i}"} for i in range(len(layers))]
    history.insert(
        1 if layers else 0, {"created": created, "created_by": "ENV A=1", "empty_layer": True}
    )
    cfg = {
        "architecture": "amd64",
        "config": {"Env": ["PATH=/bin", "A=1"], "Cmd": list(cmd)},
        "created": created,
        "history": history,
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha(layer) for layer in layers]},
    }
    return BuiltImage(list(layers), json.dumps(cfg, separators=(",", ":")).encode(), list(tags))


def base_layer() -> bytes:
    return layer_tar({}, busybox=True)


def data_layer() -> bytes:
    return layer_tar(
        {
            "data/": None,
            "data/a.txt": b"a\n",
            "data/gone.txt": b"gone\n",
            "data/opq/": None,
            "data/opq/old.txt": b"old\n",
            "data/link": "a.txt",
        }
    )


def whiteout_layer() -> bytes:
    return layer_tar(
        {
            "data/": None,
            "data/.wh.gone.txt": b"",
            "data/opq/": None,
            "data/opq/.wh..wh..opq": b"",
            "data/opq/new.txt": b"new\n",
        }
    )


def write_docker_archive(
    path: Path, images: Sequence[BuiltImage], *, gzip_layers: bool = False
) -> None:
    """A ``docker save``-style tarball (v1 dirs named by the layer's diff hex)."""
    with tarfile.open(path, "w") as tf:
        manifest = []
        seen: set[str] = set()
        for img in images:
            layer_paths = []
            for layer in img.layers:
                hexd = sha(layer)[7:]
                layer_paths.append(f"{hexd}/layer.tar")
                if hexd in seen:
                    continue
                seen.add(hexd)
                _add(tf, hexd + "/", kind=tarfile.DIRTYPE, mode=0o755)
                _add(tf, f"{hexd}/VERSION", data=b"1.0")
                _add(tf, f"{hexd}/json", data=json.dumps({"id": hexd}).encode())
                _add(tf, f"{hexd}/layer.tar", data=gzip.compress(layer) if gzip_layers else layer)
            _add(tf, img.id[7:] + ".json", data=img.config)
            manifest.append(
                {
                    "Config": img.id[7:] + ".json",
                    "RepoTags": img.tags or None,
                    "Layers": layer_paths,
                }
            )
        _add(tf, "manifest.json", data=json.dumps(manifest).encode())


def write_oci_layout(root: Path, images: Sequence[BuiltImage], *, gzip_layers: bool = True) -> None:
    """An OCI image layout dir; each image's first tag becomes its ref.name annotation."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(data: bytes) -> str:
        d = sha(data)
        (blobs / d[7:]).write_bytes(data)
        return d

    (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    entries = []
    for img in images:
        layer_descs = []
        for layer in img.layers:
            blob = gzip.compress(layer, mtime=0) if gzip_layers else layer
            layer_descs.append(
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar"
                    + ("+gzip" if gzip_layers else ""),
                    "digest": put(blob),
                    "size": len(blob),
                }
            )
        m = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": put(img.config),
                "size": len(img.config),
            },
            "layers": layer_descs,
        }
        mb = json.dumps(m).encode()
        entry: dict[str, object] = {"mediaType": m["mediaType"], "digest": put(mb), "size": len(mb)}
        if img.tags:
            entry["annotations"] = {"org.opencontainers.image.ref.name": img.tags[0]}
        entries.append(entry)
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": entries}))
