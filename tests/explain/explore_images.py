"""Multi-layer test images for the explorer tests, built with tarfile and loaded with D's
``load`` (a ``docker save`` tarball written by ``tests/image_fixtures.py``)."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable
from pathlib import Path

from image_fixtures import make_image, write_docker_archive
from overunder.engine.image_load import load
from overunder.engine.paths import EnginePaths

MTIME = 1700000000
BIG = bytes(range(256)) * 400  # 102400 bytes
CACHE = b"c" * 50_000
TZ_UTC = b"TZif2\x00UTC\x00\nUTC0\n"

Item = tuple[str, str, bytes | str | None, int]  # (path, kind f/d/l/w, data or target, mode)


def tar_of(items: Iterable[Item]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path, kind, data, mode in items:
            ti = tarfile.TarInfo(path)
            ti.mode = mode
            ti.mtime = MTIME
            if kind == "d":
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            elif kind == "l":
                ti.type = tarfile.SYMTYPE
                assert isinstance(data, str)
                ti.linkname = data
                tf.addfile(ti)
            else:
                raw = data if isinstance(data, bytes) else b""
                ti.size = len(raw)
                tf.addfile(ti, io.BytesIO(raw))
    return buf.getvalue()


def explore_layers() -> list[bytes]:
    """Three layers: a base, a chmod re-copy and new files, deletions and an opaque dir."""
    base = tar_of(
        [
            ("bin", "d", None, 0o755),
            ("bin/hello", "f", b"hello\n", 0o755),
            ("etc", "d", None, 0o755),
            ("etc/localtime", "f", TZ_UTC, 0o644),
            ("etc/os-release", "f", b"NAME=explore\n", 0o644),
            ("usr", "d", None, 0o755),
            ("usr/lib", "d", None, 0o755),
            ("usr/lib/big.so", "f", BIG, 0o644),
            ("lib", "l", "usr/lib", 0o777),
            ("tmp", "d", None, 0o1777),
            ("data", "d", None, 0o755),
            ("data/opq", "d", None, 0o755),
            ("data/opq/old.txt", "f", b"old\n", 0o644),
            ("data/keep.txt", "f", b"keep\n", 0o644),
        ]
    )
    chmod = tar_of(
        [
            ("usr", "d", None, 0o755),
            ("usr/lib", "d", None, 0o755),
            ("usr/lib/big.so", "f", BIG, 0o755),
            ("tmp", "d", None, 0o1777),
            ("tmp/cache.tar", "f", CACHE, 0o644),
            ("etc", "d", None, 0o755),
            ("etc/motd", "l", "/etc/os-release", 0o777),
        ]
    )
    cleanup = tar_of(
        [
            ("tmp", "d", None, 0o1777),
            ("tmp/.wh.cache.tar", "f", b"", 0o644),
            ("data", "d", None, 0o755),
            ("data/opq", "d", None, 0o755),
            ("data/opq/.wh..wh..opq", "f", b"", 0o644),
            ("data/opq/new.txt", "f", b"new\n", 0o644),
            ("etc", "d", None, 0o755),
            ("etc/.wh.localtime", "f", b"", 0o644),
        ]
    )
    return [base, chmod, cleanup]


STEPS = (
    "ADD rootfs.tar /",
    "RUN chmod 755 /usr/lib/big.so && wget -O /tmp/cache.tar http://mirror/cache.tar",
    "RUN rm -rf /tmp/cache.tar /etc/localtime /data/opq && mkdir /data/opq && echo new > …",
)


def load_explore_image(
    paths: EnginePaths, work: Path, tag: str = "explore:latest", *, docs: bool = False
) -> str:
    """Load the three-layer image as ``tag``; ``docs`` gives its history Dockerfile-like
    steps (for the examples in docs/cli.md) instead of the fixture's ``layer N``."""
    img = make_image(explore_layers(), [tag])
    if docs:
        import json

        cfg = json.loads(img.config)
        steps = iter(STEPS)
        for h in cfg["history"]:
            if not h.get("empty_layer"):
                h["created_by"] = next(steps)
        img.config = json.dumps(cfg, separators=(",", ":")).encode()
    archive = work / "explore.tar"
    write_docker_archive(archive, [img])
    loaded = load(paths, archive)
    return loaded[0].id
