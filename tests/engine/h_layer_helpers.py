"""Shared plumbing of engineer H's layer-verb tests (diff, cp, commit, export, mount).

Not a test module: the tests load it by path. One engine root per test session holds
``base:1`` (a busybox rootfs imported with D's ``import``) and ``fixture:1`` built from it
with our own ``commit`` the way docker-compat.md's ``fixture`` image was built (a layer adding
``/data``, then one deleting ``/data/gone.txt`` and recreating ``/data/opqimg``).
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
import g_busybox

from conftest import require, require_binary, require_fuse, require_overlay, require_root
from overunder.engine.paths import EnginePaths

BASE = "base:1"
FIXTURE = "fixture:1"
DRIVERS = ["overlay", "fuse"]

# Lower files of the fixture image, as in docker-compat.md
DATA_FILES = {
    "chmod.txt": b"chmod me\n",
    "file2dir": b"becomes a dir\n",
    "link-target.txt": b"target\n",
    "rename-src.txt": b"rename me\n",
    "same.txt": b"same\n",
    "touch.txt": b"touch me\n",
    "gone.txt": b"deleted by the image's top layer\n",
    "keep/keep.txt": b"keep\n",
    "opq/a.txt": b"a\n",
    "opq/b.txt": b"b\n",
    "opq/sub/c.txt": b"c\n",
    "rdir/x.txt": b"x\n",
    "rdir/sub/y.txt": b"y\n",
    "opqimg/old.txt": b"hidden by the top layer's opaque dir\n",
}

_BUILT: dict[str, Path] = {}


def require_driver(driver: str) -> None:
    require_root()
    require_overlay()
    if driver == "fuse":
        require_fuse()
        try:
            import overunder.mount.fuse  # noqa: F401
        except ImportError:
            require(False, "the fuse.overunder driver (overunder.mount.fuse)")


def busybox_tar(work: Path) -> bytes:
    rootfs = g_busybox.make_rootfs(work / "rootfs")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for path in sorted(rootfs.rglob("*")):
            tf.add(path, arcname=str(path.relative_to(rootfs)), recursive=False)
    return buf.getvalue()


def paths_of(root: Path) -> EnginePaths:
    return EnginePaths.resolve(str(root), None)


@contextlib.contextmanager
def mounted(paths: EnginePaths, name: str) -> Iterator[Path]:
    """``overunder mount CONTAINER`` for the block; ``umount`` after, even on failure."""
    from overunder.engine.container_mount import mount_container, umount_container

    merged = mount_container(paths, name)
    try:
        yield merged
    finally:
        umount_container(paths, name)


def create(paths: EnginePaths, image: str, name: str, *, driver: str = "overlay") -> str:
    from overunder.engine.containers import RunOptions, create_container

    rec = create_container(
        paths,
        RunOptions(
            image=image,
            command=["sleep", "100000"],
            name=name,
            network="none",
            storage_driver=driver,
        ),
    )
    return rec.id


def start(paths: EnginePaths, name: str) -> None:
    from overunder.engine.containers import start_container

    start_container(paths, name)


def exec_sh(paths: EnginePaths, name: str, script: str) -> int:
    from overunder.engine.containers import ExecOptions, exec_in_container

    return exec_in_container(paths, name, ExecOptions(command=["sh", "-c", script]))


def remove(paths: EnginePaths, name: str) -> None:
    from overunder.engine.containers import remove_container
    from overunder.errors import NotFound

    with contextlib.suppress(NotFound):
        remove_container(paths, name, force=True)


def lines(paths: EnginePaths, name: str) -> list[str]:
    from overunder.engine.container_diff import container_changes

    return [str(c) for c in container_changes(paths, name)]


def _write_data(merged: Path) -> None:
    data = merged / "data"
    for rel, content in DATA_FILES.items():
        p = data / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
    os.symlink("/etc", data / "etclink")
    os.symlink("/etc/passwd", data / "pwlink")


def build_engine(base_dir: Path) -> Path:
    """The session's engine root with ``base:1`` and ``fixture:1`` (built once per process)."""
    if "root" in _BUILT:
        return _BUILT["root"]
    require_root()
    require_binary("runc")
    require_overlay()
    from overunder.engine.container_commit import commit_container
    from overunder.engine.image_import import import_

    root = base_dir / "engine"
    root.mkdir(parents=True, exist_ok=True)
    paths = paths_of(root)
    import_(paths, io.BytesIO(busybox_tar(base_dir)), reference=BASE)
    create(paths, BASE, "h-build1")
    with mounted(paths, "h-build1") as m:
        _write_data(m)
    commit_container(paths, "h-build1", "fixture:0", changes=["WORKDIR /data", "ENV FOO=bar"])
    create(paths, "fixture:0", "h-build2")
    with mounted(paths, "h-build2") as m:
        (m / "data" / "gone.txt").unlink()
        for p in sorted((m / "data" / "opqimg").iterdir()):
            p.unlink()
        (m / "data" / "opqimg").rmdir()
        (m / "data" / "opqimg").mkdir()
        (m / "data" / "opqimg" / "new.txt").write_bytes(b"new\n")
    commit_container(paths, "h-build2", FIXTURE)
    remove(paths, "h-build1")
    remove(paths, "h-build2")
    _BUILT["root"] = root
    return root


def cleanup_engine(root: Path) -> None:
    """Remove every container and anything still mounted under ``root``."""
    from overunder.engine.containers import list_containers

    paths = paths_of(root)
    with contextlib.suppress(Exception):
        for rec in list_containers(paths):
            remove(paths, rec.id)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split()[4]
        if target.startswith(str(root)):
            subprocess.run(["umount", "-l", target], check=False)
