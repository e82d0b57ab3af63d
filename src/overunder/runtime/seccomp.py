"""Docker's default seccomp profile, and Docker-format profiles turned into the OCI form.

runc has no built-in profile: the engine must hand one over, as Docker's daemon does. The
profile here is written from the structure of moby's ``profiles/seccomp/default.json``
(not copied from the file): an **allow-list** with ``defaultAction`` ``SCMP_ACT_ERRNO`` and
``defaultErrnoRet`` 1 (EPERM), made of

* :data:`ALWAYS_ALLOWED`: the system calls any container may make;
* argument-filtered rules: ``personality`` only with the personas Docker lets through,
  ``socket`` with any family but ``AF_VSOCK`` (40), ``clone`` without any ``CLONE_NEW*``
  flag, and ``clone3`` failing with ENOSYS (its flags sit in a struct seccomp cannot read,
  so libc must fall back to ``clone``) unless the container has CAP_SYS_ADMIN;
* :data:`CAPABILITY_GATED`: calls allowed only when the container holds a capability
  (CAP_SYS_ADMIN → mount, umount2, unshare, setns, …; CAP_SYS_BOOT → reboot; CAP_SYS_PTRACE
  → kcmp, pidfd_getfd, process_madvise; CAP_SYS_MODULE, CAP_SYS_TIME, CAP_SYS_NICE, …);
* :data:`ARCH_SPECIFIC`: ``arch_prctl``, ``modify_ldt`` and the arm-only calls.

Everything else — keyctl, add_key, kexec_load, swapon, userfaultfd, open_by_handle_at
without CAP_DAC_READ_SEARCH, … — fails with EPERM. A system call newer than every name here
fails with **ENOSYS** instead: runc (≥ 1.0) patches its filter so that numbers above the
highest one the profile names return ENOSYS, which is what lets a new libc fall back (Docker
≥ 20.10 relies on the same runc behaviour together with ``defaultErrnoRet``).

:func:`resolve` turns a Docker-format profile (``archMap``, ``includes``/``excludes`` with
``caps``/``arches``/``minKernel``) into the OCI ``linux.seccomp`` object for one container's
capability set and this host's architecture. ``--security-opt seccomp=PROFILE.json`` goes
through the same function, so a profile that works with ``docker run`` works here.

Gaps: the list reflects Docker's profile as of the 24-27 releases to the best of our
knowledge (it is data: compare and extend :data:`ALWAYS_ALLOWED`); 32-bit ARM, ppc, s390 and
riscv are not among our architectures. Tested in ``tests/runtime/test_runtime_seccomp.py``.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from overunder.errors import InvalidArgument

__all__ = [
    "ALWAYS_ALLOWED",
    "ARCH_SPECIFIC",
    "CAPABILITY_GATED",
    "CLONE_NAMESPACE_FLAGS",
    "default_profile",
    "docker_default_profile",
    "load_profile",
    "resolve",
]

EPERM = 1
ENOSYS = 38
AF_VSOCK = 40
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
CLONE_NAMESPACE_FLAGS = 0x7E020000

ALWAYS_ALLOWED: tuple[str, ...] = (
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "cachestat",
    "capget", "capset", "chdir", "chmod", "chown", "chown32", "clock_adjtime",
    "clock_adjtime64", "clock_getres", "clock_getres_time64", "clock_gettime",
    "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64", "close", "close_range",
    "connect", "copy_file_range", "creat", "dup", "dup2", "dup3", "epoll_create",
    "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2",
    "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat", "exit",
    "exit_group", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate",
    "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32",
    "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork",
    "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64",
    "fsync", "ftruncate", "ftruncate64", "futex", "futex_requeue", "futex_time64",
    "futex_wait", "futex_waitv", "futex_wake", "futimesat", "getcpu", "getcwd", "getdents",
    "getdents64", "getegid", "getegid32", "geteuid", "geteuid32", "getgid", "getgid32",
    "getgroups", "getgroups32", "getitimer", "getpeername", "getpgid", "getpgrp", "getpid",
    "getppid", "getpriority", "getrandom", "getresgid", "getresgid32", "getresuid",
    "getresuid32", "getrlimit", "get_robust_list", "getrusage", "getsid", "getsockname",
    "getsockopt", "get_thread_area", "gettid", "gettimeofday", "getuid", "getuid32",
    "getxattr", "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch",
    "io_cancel", "ioctl", "io_destroy", "io_getevents", "io_pgetevents",
    "io_pgetevents_time64", "ioprio_get", "ioprio_set", "io_setup", "io_submit", "ipc",
    "kill", "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self",
    "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen", "listxattr", "llistxattr",
    "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "madvise",
    "map_shadow_stack", "membarrier", "memfd_create", "memfd_secret", "mincore", "mkdir",
    "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap", "mmap2",
    "mprotect", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap",
    "mseal", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall",
    "munmap", "nanosleep", "newfstatat", "_newselect", "open", "openat", "openat2", "pause",
    "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free",
    "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64", "preadv",
    "preadv2", "prlimit64", "process_mrelease", "pselect6", "pselect6_time64", "pwrite64",
    "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "recv",
    "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr",
    "rename", "renameat", "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction",
    "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend",
    "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity",
    "sched_getattr", "sched_getparam", "sched_get_priority_max", "sched_get_priority_min",
    "sched_getscheduler", "sched_rr_get_interval", "sched_rr_get_interval_time64",
    "sched_setaffinity", "sched_setattr", "sched_setparam", "sched_setscheduler",
    "sched_yield", "seccomp", "select", "semctl", "semget", "semop", "semtimedop",
    "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto",
    "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups",
    "setgroups32", "setitimer", "setpgid", "setpriority", "setregid", "setregid32",
    "setresgid", "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32",
    "setrlimit", "set_robust_list", "setsid", "setsockopt", "set_thread_area",
    "set_tid_address", "setuid", "setuid32", "setxattr", "shmat", "shmctl", "shmdt",
    "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4", "sigprocmask",
    "sigreturn", "socketcall", "socketpair", "splice", "stat", "stat64", "statfs",
    "statfs64", "statx", "symlink", "symlinkat", "sync", "sync_file_range", "syncfs",
    "sysinfo", "tee", "tgkill", "time", "timer_create", "timer_delete", "timer_getoverrun",
    "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64",
    "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
    "timerfd_settime64", "times", "tkill", "truncate", "truncate64", "ugetrlimit", "umask",
    "uname", "unlink", "unlinkat", "uretprobe", "utime", "utimensat", "utimensat_time64",
    "utimes", "vfork", "vmsplice", "wait4", "waitid", "waitpid", "write", "writev",
)  # fmt: skip

# Calls a capability unlocks (Docker's "includes": {"caps": [...]} rules).
CAPABILITY_GATED: Mapping[str, tuple[str, ...]] = {
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
    "CAP_SYS_ADMIN": (
        "bpf",
        "clone",
        "clone3",
        "fanotify_init",
        "fsconfig",
        "fsmount",
        "fsopen",
        "fspick",
        "lookup_dcookie",
        "mount",
        "mount_setattr",
        "move_mount",
        "name_to_handle_at",
        "open_tree",
        "perf_event_open",
        "quotactl",
        "quotactl_fd",
        "setdomainname",
        "sethostname",
        "setns",
        "syslog",
        "umount",
        "umount2",
        "unshare",
    ),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_CHROOT": ("chroot",),
    "CAP_SYS_MODULE": ("delete_module", "init_module", "finit_module"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_PTRACE": (
        "kcmp",
        "pidfd_getfd",
        "process_madvise",
        "process_vm_readv",
        "process_vm_writev",
        "ptrace",
    ),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_settime64"),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
    "CAP_SYS_NICE": ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"),
    "CAP_SYSLOG": ("syslog",),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
}

# Docker's arch names (as in "includes": {"arches": [...]}) → the calls only they have.
ARCH_SPECIFIC: Mapping[tuple[str, ...], tuple[str, ...]] = {
    ("amd64", "x32"): ("arch_prctl",),
    ("amd64", "x32", "x86"): ("modify_ldt",),
    ("arm", "arm64"): (
        "arm_fadvise64_64",
        "arm_sync_file_range",
        "sync_file_range2",
        "breakpoint",
        "cacheflush",
        "set_tls",
    ),
}

# Personas ``personality`` may set: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32,
# and 0xffffffff (query only).
PERSONALITIES: tuple[int, ...] = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

# Host machine → (Docker arch name, the seccomp arches a container of it may use).
_ARCH_MAP: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "x86_64": ("amd64", ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32")),
    "aarch64": ("arm64", ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM")),
}

_ACTIONS = frozenset(
    {
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_TRAP",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_TRACE",
        "SCMP_ACT_ALLOW",
        "SCMP_ACT_LOG",
        "SCMP_ACT_NOTIFY",
    }
)


def docker_default_profile() -> dict[str, Any]:
    """The default profile in Docker's own format (``archMap``, ``includes``/``excludes``);
    what ``--security-opt seccomp=FILE`` accepts, and what :func:`resolve` reads."""
    rules: list[dict[str, Any]] = [
        {"names": list(ALWAYS_ALLOWED), "action": "SCMP_ACT_ALLOW"},
        {
            "names": ["process_vm_readv", "process_vm_writev", "ptrace"],
            "action": "SCMP_ACT_ALLOW",
            # Before 4.8 ptrace could be used to get around seccomp.
            "includes": {"minKernel": "4.8"},
        },
        {
            "names": ["socket"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_NE"}],
        },
    ]
    rules += [
        {
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}],
        }
        for value in PERSONALITIES
    ]
    rules += [
        {"names": list(names), "action": "SCMP_ACT_ALLOW", "includes": {"arches": list(arches)}}
        for arches, names in ARCH_SPECIFIC.items()
    ]
    rules += [
        {"names": list(names), "action": "SCMP_ACT_ALLOW", "includes": {"caps": [cap]}}
        for cap, names in CAPABILITY_GATED.items()
    ]
    rules += [
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [
                {
                    "index": 0,
                    "value": CLONE_NAMESPACE_FLAGS,
                    "valueTwo": 0,
                    "op": "SCMP_CMP_MASKED_EQ",
                }
            ],
            "excludes": {"caps": ["CAP_SYS_ADMIN"]},
        },
        {
            "names": ["clone3"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": ENOSYS,
            "excludes": {"caps": ["CAP_SYS_ADMIN"]},
        },
    ]
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "archMap": [
            {"architecture": arches[0], "subArchitectures": list(arches[1:])}
            for _name, arches in _ARCH_MAP.values()
        ],
        "syscalls": rules,
    }


def _kernel_version() -> tuple[int, ...]:
    return _version_tuple(os.uname().release)


def _version_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split("-", 1)[0].split("."):
        digits = "".join(c for c in part if c.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def _host_arch() -> tuple[str, tuple[str, ...]]:
    machine = platform.machine()
    return _ARCH_MAP.get(machine, (machine, ()))


def _applies(rule: Mapping[str, Any], caps: frozenset[str], arch: str) -> bool:
    inc = rule.get("includes") or {}
    exc = rule.get("excludes") or {}
    if inc.get("caps") and not set(inc["caps"]) <= caps:
        return False
    if inc.get("arches") and arch not in inc["arches"]:
        return False
    if inc.get("minKernel") and _kernel_version() < _version_tuple(str(inc["minKernel"])):
        return False
    if exc.get("caps") and set(exc["caps"]) & caps:
        return False
    if exc.get("arches") and arch in exc["arches"]:
        return False
    return not (exc.get("minKernel") and _kernel_version() >= _version_tuple(str(exc["minKernel"])))


def _check_action(action: object, where: str) -> str:
    if action not in _ACTIONS:
        raise InvalidArgument(
            f"seccomp profile: {where}: unknown action {action!r}",
            hint="use one of " + ", ".join(sorted(_ACTIONS)),
        )
    return str(action)


def _oci_args(args: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for a in args:
        item: dict[str, Any] = {"index": int(a["index"]), "value": int(a.get("value", 0))}
        if a.get("valueTwo"):
            item["valueTwo"] = int(a["valueTwo"])
        item["op"] = str(a["op"])
        out.append(item)
    return out


def resolve(profile: Mapping[str, Any], capabilities: Sequence[str]) -> dict[str, Any]:
    """A Docker-format (or already OCI-format) profile → the OCI ``linux.seccomp`` object for
    a container holding ``capabilities`` on this host. InvalidArgument for a malformed one."""
    if not isinstance(profile, Mapping) or "defaultAction" not in profile:
        raise InvalidArgument(
            "seccomp profile: no defaultAction",
            hint="give a profile in Docker's format (see moby's profiles/seccomp/default.json)",
        )
    caps = frozenset(capabilities)
    docker_arch, host_arches = _host_arch()
    out: dict[str, Any] = {"defaultAction": _check_action(profile["defaultAction"], "default")}
    if profile.get("defaultErrnoRet") is not None:
        out["defaultErrnoRet"] = int(profile["defaultErrnoRet"])
    arches: list[str] = []
    for entry in profile.get("archMap") or []:
        group = [entry["architecture"], *(entry.get("subArchitectures") or [])]
        if entry["architecture"] in host_arches:
            arches += [a for a in group if a not in arches]
    for a in profile.get("architectures") or []:
        if a not in arches:
            arches.append(str(a))
    out["architectures"] = arches or list(host_arches)
    if profile.get("flags"):
        out["flags"] = list(profile["flags"])
    syscalls: list[dict[str, Any]] = []
    for i, rule in enumerate(profile.get("syscalls") or []):
        names = list(rule.get("names") or ([rule["name"]] if rule.get("name") else []))
        if not names:
            raise InvalidArgument(
                f"seccomp profile: syscalls[{i}] names no system call",
                hint="give each rule a non-empty 'names' list",
            )
        if not _applies(rule, caps, docker_arch):
            continue
        item: dict[str, Any] = {
            "names": names,
            "action": _check_action(rule.get("action"), f"syscalls[{i}]"),
        }
        if rule.get("errnoRet") is not None:
            item["errnoRet"] = int(rule["errnoRet"])
        if rule.get("args"):
            item["args"] = _oci_args(rule["args"])
        syscalls.append(item)
    out["syscalls"] = syscalls
    return out


def default_profile(capabilities: Sequence[str] | None = None) -> dict[str, Any]:
    """The OCI ``linux.seccomp`` object of Docker's default profile for a container with
    ``capabilities`` (Docker's default set when None)."""
    if capabilities is None:
        from overunder.runtime.spec import DOCKER_CAPABILITIES

        capabilities = DOCKER_CAPABILITIES
    return resolve(docker_default_profile(), capabilities)


def load_profile(text: str, *, source: str) -> dict[str, Any]:
    """Parse a profile given to ``--security-opt seccomp=...`` (the file's contents);
    checked now so that a bad file fails ``create``, not ``start``."""
    try:
        data = json.loads(text)
    except ValueError as err:
        raise InvalidArgument(
            f"--security-opt seccomp={source}: not valid JSON: {err}",
            hint="give a seccomp profile in Docker's JSON format",
        ) from None
    if not isinstance(data, dict):
        raise InvalidArgument(
            f"--security-opt seccomp={source}: the profile must be a JSON object",
            hint="give a seccomp profile in Docker's JSON format",
        )
    resolve(data, ())
    return data
