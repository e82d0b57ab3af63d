"""What this host offers, checked one piece at a time.

Each check says whether a piece works, what is missing, what breaks without it and how to
get it. Checks only look; the one that mounts does so in a private temp dir and unmounts.
Later parts of overunder add their own checks to ``CHECKS``.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from overunder.engine.paths import EnginePaths


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    breaks: str = ""  # what does not work when this check fails
    fix: str = ""  # how to get it (a package, a command)
    required: bool = True  # a failed optional check is a warning, not an error

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _existing_parent(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def check_kernel_overlay(paths: EnginePaths) -> Check:
    breaks = "'overunder mount -t overlay' and --storage-driver overlay (use fuse.overunder)"
    known = Path("/proc/filesystems").read_text()
    if "\toverlay\n" not in known:
        return Check(
            "kernel overlay",
            False,
            "overlay is not in /proc/filesystems",
            breaks,
            "modprobe overlay (kernel config CONFIG_OVERLAY_FS)",
        )
    if os.geteuid() != 0:
        return Check(
            "kernel overlay",
            False,
            "available, but mounting it needs root",
            breaks,
            "run as root (or use -t fuse.overunder)",
        )
    libc = ctypes.CDLL(None, use_errno=True)
    with tempfile.TemporaryDirectory(prefix="overunder-doctor-") as tmp:
        for d in ("l", "u", "w", "m"):
            os.mkdir(os.path.join(tmp, d))
        opts = f"lowerdir={tmp}/l,upperdir={tmp}/u,workdir={tmp}/w".encode()
        rc = libc.mount(b"overlay", f"{tmp}/m".encode(), b"overlay", 0, opts)
        if rc != 0:
            err = ctypes.get_errno()
            return Check(
                "kernel overlay",
                False,
                f"a test mount failed: {os.strerror(err)}",
                breaks,
                "check 'dmesg | grep overlayfs' for the kernel's reason",
            )
        libc.umount2(f"{tmp}/m".encode(), 0)
    return Check("kernel overlay", True, "a test mount and unmount worked")


def check_xattrs(paths: EnginePaths) -> Check:
    where = _existing_parent(paths.root)
    name = "trusted.overunder.probe" if os.geteuid() == 0 else "user.overunder.probe"
    breaks = "opaque directories in layers and upper dirs (deleted-then-recreated dirs)"
    try:
        with tempfile.NamedTemporaryFile(dir=where, prefix=".overunder-probe-") as f:
            os.setxattr(f.name, name, b"y")
    except OSError as err:
        return Check(
            "xattrs on the store",
            False,
            f"{name} on {where}: {os.strerror(err.errno or 0)}",
            breaks,
            "put --root on ext4, xfs, btrfs or tmpfs",
        )
    return Check("xattrs on the store", True, f"{name} works on {where}")


def check_whiteout_mknod(paths: EnginePaths) -> Check:
    where = _existing_parent(paths.root)
    breaks = "overlay whiteouts (char 0/0) in the layer store; .wh. files are used instead"
    with tempfile.TemporaryDirectory(dir=where, prefix=".overunder-probe-") as tmp:
        try:
            os.mknod(os.path.join(tmp, "wh"), 0o020000, os.makedev(0, 0))
        except OSError as err:
            return Check(
                "whiteout devices",
                False,
                f"mknod 0/0 on {where}: {os.strerror(err.errno or 0)}",
                breaks,
                "run as root",
                required=False,
            )
    return Check("whiteout devices", True, f"mknod 0/0 works on {where}")


def check_dev_fuse(paths: EnginePaths) -> Check:
    breaks = "'overunder mount -t fuse.overunder' and --storage-driver fuse"
    if not os.path.exists("/dev/fuse"):
        return Check("/dev/fuse", False, "missing", breaks, "apt-get install fuse3; modprobe fuse")
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError as err:
        mode = oct(os.stat("/dev/fuse").st_mode & 0o777)
        return Check(
            "/dev/fuse",
            False,
            f"cannot open ({os.strerror(err.errno or 0)}, mode {mode})",
            breaks,
            "chmod 0666 /dev/fuse (Debian's default)",
        )
    os.close(fd)
    helper = shutil.which("fusermount3")
    detail = "opens read-write" + ("" if helper else "; fusermount3 missing (unprivileged mounts)")
    return Check("/dev/fuse", True, detail)


def check_runtime(paths: EnginePaths) -> Check:
    breaks = "running containers (run, exec, start)"
    runc = shutil.which("runc")
    if runc is None:
        return Check("OCI runtime", False, "runc not found in PATH", breaks, "apt-get install runc")
    try:
        out = subprocess.run(
            [runc, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as err:
        return Check(
            "OCI runtime", False, f"{runc} --version failed: {err}", breaks, "reinstall runc"
        )
    return Check("OCI runtime", True, f"{runc}: {out.splitlines()[0]}")


def cgroup_version() -> str:
    """``"v2"``, ``"hybrid"`` (v1 controllers plus a v2 tree) or ``"v1"``."""
    fs = Path("/sys/fs/cgroup")
    if (fs / "cgroup.controllers").exists():
        return "v2"
    if (fs / "unified").is_dir() and any(
        "/sys/fs/cgroup/unified " in line for line in Path("/proc/mounts").read_text().splitlines()
    ):
        return "hybrid"
    return "v1"


def check_cgroups(paths: EnginePaths) -> Check:
    version = cgroup_version()
    if not Path("/sys/fs/cgroup").is_dir():
        return Check(
            "cgroups",
            False,
            "/sys/fs/cgroup is missing",
            "--memory, --pids-limit, --cpus and pausing containers for commit",
            "mount cgroupfs",
        )
    note = {
        "v2": "unified (v2)",
        "hybrid": "hybrid: v1 controllers plus a v2 tree (runc works; crun 1.8 refuses)",
        "v1": "v1 controllers",
    }[version]
    return Check("cgroups", True, note)


def _tool_check(
    name: str, binary: str, package: str, breaks: str
) -> Callable[[EnginePaths], Check]:
    def check(paths: EnginePaths) -> Check:
        found = shutil.which(binary)
        if found:
            return Check(name, True, found)
        return Check(
            name,
            False,
            f"{binary} not found in PATH",
            breaks,
            f"apt-get install {package}",
            required=False,
        )

    return check


CHECKS: list[Callable[[EnginePaths], Check]] = [
    check_kernel_overlay,
    check_xattrs,
    check_whiteout_mknod,
    check_dev_fuse,
    check_runtime,
    check_cgroups,
    _tool_check(
        "registry",
        "docker-registry",
        "docker-registry",
        "the tour's push/pull round trip and the registry tests",
    ),
    _tool_check("skopeo", "skopeo", "skopeo", "interop tests with other image tools"),
    _tool_check("umoci", "umoci", "umoci", "interop tests with other image tools"),
]


def run_checks(paths: EnginePaths) -> list[Check]:
    results = []
    for check in CHECKS:
        try:
            results.append(check(paths))
        except OSError as err:  # a check must never take the whole report down
            name = check.__name__.removeprefix("check_").replace("_", " ")
            results.append(Check(name, False, f"check failed: {err}"))
    return results
