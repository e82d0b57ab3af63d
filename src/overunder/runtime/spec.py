"""The OCI runtime spec (``config.json``) a container runs with, with Docker's defaults.

What Docker (moby's ``oci.DefaultLinuxSpec`` plus the daemon's additions) gives a container
and we give it too:

* its capability set (14 capabilities, :data:`DOCKER_CAPABILITIES`) in the bounding,
  effective and permitted sets; nothing ambient, nothing inheritable;
* the namespaces mount, uts, pid, ipc and (unless ``--network host``) network; a new network
  namespace gets its loopback brought up by runc (libcontainer adds a ``loopback`` network
  whenever the spec asks for an unnamed netns), which is all ``--network none`` and our
  default ``private`` network have;
* the mounts ``/proc``, ``/dev`` (tmpfs), ``/dev/pts``, ``/dev/shm``, ``/dev/mqueue``,
  ``/sys`` (read-only) and ``/sys/fs/cgroup`` (read-only) with Docker's options;
* masked paths (bind-mounted over with /dev/null or an empty read-only tmpfs) and read-only
  paths under ``/proc`` and ``/sys``, Docker's lists;
* a device cgroup that denies everything but what runc always allows (null, zero, full,
  random, urandom, tty, ptmx and the pty slaves);
* ``noNewPrivileges`` only when asked (``--security-opt no-new-privileges``), as Docker;
* a seccomp filter: runc has no built-in default profile, so :mod:`overunder.runtime.seccomp`
  provides Docker's (an allow-list, EPERM for the rest), resolved for the container's
  capabilities; ``--security-opt seccomp=unconfined`` drops it and ``seccomp=FILE`` replaces
  it with a Docker-format profile;
* ``--privileged``: every capability this host lets us hand on (the bounding set we run
  with), no seccomp, no masked or read-only paths, ``/sys`` and the cgroup tree writable and
  the device cgroup open (host devices are *not* added to ``/dev``, unlike Docker).

rlimits are deliberately absent: runc then leaves the ones the shim inherited untouched. A
spec that names RLIMIT_NOFILE above the current hard limit fails on hosts without
CAP_SYS_RESOURCE (crun's default of 1048576 does, on our CI machine), and Docker's own default
is to inherit the daemon's limits.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from overunder.errors import InvalidArgument
from overunder.runtime.seccomp import docker_default_profile, resolve

__all__ = [
    "DEFAULT_PATH",
    "DOCKER_CAPABILITIES",
    "MASKED_PATHS",
    "READONLY_PATHS",
    "BindMount",
    "ProcessSpec",
    "Resources",
    "SpecOptions",
    "build_process",
    "build_spec",
    "host_capabilities",
]

OCI_VERSION = "1.0.2"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

DOCKER_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)

MASKED_PATHS: tuple[str, ...] = (
    "/proc/asound",
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)

READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

# Every capability by number (CAP_CHOWN = 0 ... CAP_CHECKPOINT_RESTORE = 40).
ALL_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip

NETWORK_MODES = ("private", "none", "host")

# CFS period Docker uses for --cpus (100 ms).
CPU_PERIOD_US = 100_000


@dataclass(frozen=True, slots=True)
class BindMount:
    """``-v HOST:CTR[:ro]`` and the per-container files bound over /etc."""

    source: str
    destination: str
    readonly: bool = False

    def to_oci(self) -> dict[str, Any]:
        options = ["rbind", "rprivate"]
        if self.readonly:
            options.append("ro")
        return {
            "destination": self.destination,
            "type": "bind",
            "source": self.source,
            "options": options,
        }


@dataclass(frozen=True, slots=True)
class Resources:
    """Cgroup limits: ``--memory`` (bytes), ``--pids-limit``, ``--cpus`` (fractional CPUs)."""

    memory: int | None = None
    pids_limit: int | None = None
    cpus: float | None = None

    def to_oci(self) -> dict[str, Any]:
        out: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
        if self.memory is not None:
            if self.memory < 6 * 1024 * 1024:
                raise InvalidArgument(
                    f"--memory {self.memory}: Minimum memory limit allowed is 6MB",
                    hint="give at least --memory 6m, as Docker requires",
                )
            out["memory"] = {"limit": self.memory}
        if self.pids_limit is not None and self.pids_limit > 0:
            out["pids"] = {"limit": self.pids_limit}
        if self.cpus is not None:
            if self.cpus <= 0:
                raise InvalidArgument(
                    f"--cpus {self.cpus}: must be a positive number",
                    hint="give a number of CPUs such as --cpus 0.5",
                )
            out["cpu"] = {"quota": int(self.cpus * CPU_PERIOD_US), "period": CPU_PERIOD_US}
        return out


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """What runs: the OCI ``process`` object of a container or of an ``exec``."""

    args: Sequence[str]
    env: Sequence[str] = ()
    cwd: str = "/"
    uid: int = 0
    gid: int = 0
    additional_gids: Sequence[int] = ()
    terminal: bool = False
    no_new_privileges: bool = False
    capabilities: Sequence[str] = DOCKER_CAPABILITIES


@dataclass(frozen=True, slots=True)
class SpecOptions:
    """Everything :func:`build_spec` needs; the engine fills it from the container record."""

    process: ProcessSpec
    rootfs: str
    hostname: str
    readonly_rootfs: bool = False
    network: str = "private"
    binds: Sequence[BindMount] = ()
    resources: Resources = field(default_factory=Resources)
    cgroups_path: str | None = None
    seccomp: bool = True
    # A Docker-format profile replacing the default (``--security-opt seccomp=FILE``).
    seccomp_profile: Mapping[str, Any] | None = None
    privileged: bool = False
    masked_paths: Sequence[str] = MASKED_PATHS
    readonly_paths: Sequence[str] = READONLY_PATHS


def host_capabilities() -> tuple[str, ...]:
    """The capabilities in our own bounding set, by name: all a ``--privileged`` container can
    get (asking runc for one we lack fails; this host lacks CAP_SYS_RESOURCE)."""
    import re
    from pathlib import Path

    m = re.search(r"^CapBnd:\s*([0-9a-f]+)$", Path("/proc/self/status").read_text(), re.M)
    mask = int(m.group(1), 16) if m else 0
    return tuple(name for bit, name in enumerate(ALL_CAPABILITIES) if mask >> bit & 1)


def build_process(p: ProcessSpec) -> dict[str, Any]:
    """The OCI ``process`` object (also the ``--process`` file of ``runc exec``)."""
    if not p.args:
        raise InvalidArgument(
            "no command specified",
            hint="give a command after the image name, or use an image with CMD or ENTRYPOINT",
        )
    if not p.cwd.startswith("/"):
        raise InvalidArgument(
            f"the working directory '{p.cwd}' is invalid, it needs to be an absolute path",
            hint="give -w an absolute path inside the container",
        )
    caps = list(p.capabilities)
    user: dict[str, Any] = {"uid": p.uid, "gid": p.gid}
    if p.additional_gids:
        user["additionalGids"] = list(p.additional_gids)
    return {
        "terminal": p.terminal,
        "user": user,
        "args": list(p.args),
        "env": list(p.env),
        "cwd": p.cwd,
        "capabilities": {
            "bounding": caps,
            "effective": caps,
            "permitted": caps,
        },
        "noNewPrivileges": p.no_new_privileges,
    }


def _default_mounts(readonly_rootfs: bool) -> list[dict[str, Any]]:
    return [
        {
            "destination": "/proc",
            "type": "proc",
            "source": "proc",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", "ro"],
        },
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["ro", "nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev/shm",
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
    ]


def build_spec(opts: SpecOptions) -> dict[str, Any]:
    """The whole ``config.json`` for ``runc create``."""
    if opts.network not in NETWORK_MODES:
        raise InvalidArgument(
            f"--network {opts.network}: unknown network mode",
            hint="use one of: " + ", ".join(NETWORK_MODES),
        )
    namespaces: list[dict[str, str]] = [
        {"type": "pid"},
        {"type": "ipc"},
        {"type": "uts"},
        {"type": "mount"},
    ]
    if opts.network != "host":
        namespaces.append({"type": "network"})
    resources = opts.resources.to_oci()
    linux: dict[str, Any] = {"resources": resources, "namespaces": namespaces}
    if opts.privileged:
        resources["devices"] = [{"allow": True, "access": "rwm"}]
    else:
        linux["maskedPaths"] = list(opts.masked_paths)
        linux["readonlyPaths"] = list(opts.readonly_paths)
    if opts.cgroups_path:
        linux["cgroupsPath"] = opts.cgroups_path
    if opts.seccomp and not opts.privileged:
        profile = opts.seccomp_profile or docker_default_profile()
        linux["seccomp"] = resolve(profile, opts.process.capabilities)
    mounts = _default_mounts(opts.readonly_rootfs)
    if opts.privileged:  # /sys and the cgroup tree writable, as Docker's --privileged
        for m in mounts:
            if m["destination"] in ("/sys", "/sys/fs/cgroup"):
                m["options"] = [o for o in m["options"] if o != "ro"] + ["rw"]
    mounts.extend(b.to_oci() for b in opts.binds)
    return {
        "ociVersion": OCI_VERSION,
        "process": build_process(opts.process),
        "root": {"path": opts.rootfs, "readonly": opts.readonly_rootfs},
        # With --network host the container keeps the host's UTS namespace too in Docker; we
        # keep a UTS namespace of its own so that -h never renames the host.
        "hostname": opts.hostname,
        "mounts": mounts,
        "linux": linux,
    }
