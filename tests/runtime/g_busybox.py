"""Test images built from the static busybox, offline (shared by G's container tests).

Not a test module: the container tests load it by path (tests are not packages).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUSYBOX = "/bin/busybox"


def make_rootfs(root: Path) -> Path:
    """A busybox tree: every applet as a symlink in /bin, passwd/group, /etc/localtime."""
    for d in ("bin", "etc", "root", "tmp", "proc", "sys", "dev", "var/www"):
        (root / d).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    busybox = shutil.which("busybox") or BUSYBOX
    shutil.copy2(busybox, root / "bin" / "busybox")
    import subprocess

    applets = subprocess.run(
        [str(root / "bin" / "busybox"), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for a in applets:
        if a != "busybox" and not (root / "bin" / a).exists():
            os.symlink("busybox", root / "bin" / a)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
        "app:x:1000:1000:app:/home/app:/bin/sh\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\napp:x:1000:\n")
    (root / "etc" / "localtime").write_bytes(b"TZif2UTC0\n")
    (root / "var" / "www" / "index.html").write_text("hello from overunder\n")
    return root


@dataclass
class _Applied:
    diff_id: str


def _tar_of(root: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path in sorted(root.rglob("*")):
            tf.add(path, arcname=str(path.relative_to(root)), recursive=False)
    return buf.getvalue()


def build_image(
    engine_root: Path, name: str, *, config: dict[str, Any] | None = None, work: Path
) -> str:
    """Record a one-layer image named ``name`` of ``work/rootfs`` (a busybox tree, made
    when missing) in the store at ``engine_root``; returns its id."""
    from overunder.engine.images import record_image, stores
    from overunder.engine.paths import EnginePaths
    from overunder.image.ids import chain_ids

    rootfs = work / "rootfs"
    if not rootfs.exists():
        make_rootfs(rootfs)
    data = _tar_of(rootfs)
    diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
    paths = EnginePaths.resolve(engine_root)
    s = stores(paths)

    def apply(fs: Path) -> _Applied:
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            tf.extractall(fs, numeric_owner=True, filter="fully_trusted")
        return _Applied(diff_id)

    chain = chain_ids([diff_id])[-1]
    s.snapshots.ensure_layer(chain, None, apply, diff_id=diff_id)
    cfg = {
        "architecture": "amd64",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["sh"],
            **(config or {}),
        },
        "created": "2026-11-27T00:00:00Z",
        "history": [{"created": "2026-11-27T00:00:00Z", "created_by": "busybox test image"}],
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }
    raw = json.dumps(cfg, separators=(",", ":")).encode()
    digest = s.content.put(raw)
    record_image(
        s, config_digest=digest, manifest_digest=None, manifest_media_type=None, names=[name]
    )
    return digest
