"""``info``: what the engine is and holds (like ``docker info``)."""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overunder.engine.paths import EnginePaths
from overunder.errors import OverunderError

__all__ = ["EngineInfo", "backing_filesystem", "engine_info"]

# Docker's names for the filesystem under its root (graphdriver.FsNames).
_FS_NAMES = {
    "ext2": "extfs",
    "ext3": "extfs",
    "ext4": "extfs",
    "xfs": "xfs",
    "btrfs": "btrfs",
    "tmpfs": "tmpfs",
    "zfs": "zfs",
    "overlay": "overlayfs",
    "nfs": "nfs",
    "nfs4": "nfs",
}


def backing_filesystem(path: Path) -> str:
    """Docker's name for the filesystem ``path`` lives on (``extfs`` for ext4)."""
    while not path.exists():
        path = path.parent
    dev = os.stat(path).st_dev
    major, minor = os.major(dev), os.minor(dev)
    fstype = "unknown"
    best = -1
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            sep = fields.index("-")
            mm = fields[2]
            target = fields[4]
            if mm != f"{major}:{minor}":
                continue
            if str(path).startswith(target) and len(target) > best:
                best = len(target)
                fstype = fields[sep + 1]
    return _FS_NAMES.get(fstype, fstype)


@dataclass(frozen=True, slots=True)
class EngineInfo:
    containers: int
    running: int
    paused: int
    stopped: int
    images: int
    root_dir: str
    run_root: str
    storage_driver: str
    backing_filesystem: str
    runtime: str
    runtime_version: str
    runtimes: list[str]
    cgroup_version: str
    cgroup_parent: str
    kernel: str
    os_name: str
    arch: str
    cpus: int
    memory: int
    version: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "Containers": self.containers,
            "ContainersRunning": self.running,
            "ContainersPaused": self.paused,
            "ContainersStopped": self.stopped,
            "Images": self.images,
            "Driver": self.storage_driver,
            "DriverStatus": [["Backing Filesystem", self.backing_filesystem]],
            "LoggingDriver": "json-file",
            "CgroupDriver": "cgroupfs",
            "CgroupVersion": self.cgroup_version,
            "CgroupParent": self.cgroup_parent,
            "Runtimes": {r: {"path": r} for r in self.runtimes},
            "DefaultRuntime": self.runtime,
            "RuntimeVersion": self.runtime_version,
            "KernelVersion": self.kernel,
            "OperatingSystem": self.os_name,
            "OSType": "linux",
            "Architecture": self.arch,
            "NCPU": self.cpus,
            "MemTotal": self.memory,
            "DockerRootDir": self.root_dir,
            "RunRootDir": self.run_root,
            "ServerVersion": self.version,
        }


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return "Linux"


def _mem_total() -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def engine_info(paths: EnginePaths) -> EngineInfo:
    import shutil

    from overunder import __version__
    from overunder.engine.containers import list_containers, runtime_for
    from overunder.engine.doctor import cgroup_version
    from overunder.engine.images import stores

    recs = list_containers(paths)
    running = sum(1 for r in recs if r.state.status == "running")
    paused = sum(1 for r in recs if r.state.status == "paused")
    try:
        n_images = len(stores(paths).images.list())
    except (OSError, ValueError):
        n_images = 0
    version = "not available"
    with contextlib.suppress(OverunderError, OSError):
        version = runtime_for(paths, "runc").version()
    cg = cgroup_version()
    return EngineInfo(
        containers=len(recs),
        running=running,
        paused=paused,
        stopped=len(recs) - running - paused,
        images=n_images,
        root_dir=str(paths.root),
        run_root=str(paths.run_root),
        storage_driver="overlay",
        backing_filesystem=backing_filesystem(paths.root),
        runtime="runc",
        runtime_version=version,
        runtimes=[r for r in ("runc", "crun") if shutil.which(r)],
        cgroup_version={"v2": "2", "v1": "1", "hybrid": "1 (hybrid: v1 controllers + v2 tree)"}[cg],
        cgroup_parent="/overunder",
        kernel=platform.release(),
        os_name=_os_name(),
        arch=platform.machine(),
        cpus=os.cpu_count() or 1,
        memory=_mem_total(),
        version=__version__,
    )
