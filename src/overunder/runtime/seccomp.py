"""A default seccomp profile, since runc has none built in.

Docker's default profile is an allow-list of ~350 system calls with the rest failing with
EPERM. We do not ship Docker's file; this profile is our own, written the other way round: it
allows everything and refuses the calls Docker's documentation lists as "significant syscalls
blocked by the default profile" (kernel modules, keyrings, clocks, reboot, swap, ptrace of
other processes' memory, bpf, perf, userfaultfd, mount and namespace changes, ...). The effect
for ordinary programs is the same; the gap is that a system call newer than this list is
allowed here where Docker's allow-list would refuse it. Tested in
``tests/runtime/test_runtime_spec.py``.

Creating namespaces is refused by argument filters on ``clone`` (one rule per
``CLONE_NEW*`` flag) and ``unshare``; ``clone3`` gets ENOSYS so that libc falls back to
``clone``, where the flags can be checked (Docker does the same).
"""

from __future__ import annotations

from typing import Any

__all__ = ["BLOCKED_SYSCALLS", "default_profile"]

EPERM = 1
ENOSYS = 38

BLOCKED_SYSCALLS: tuple[str, ...] = (
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "stime",
    "swapoff",
    "swapon",
    "sysfs",
    "_sysctl",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
)

CLONE_NS_FLAGS: tuple[int, ...] = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)


def default_profile() -> dict[str, Any]:
    """The ``linux.seccomp`` object of the spec."""
    rules: list[dict[str, Any]] = [
        {"names": list(BLOCKED_SYSCALLS), "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
    ]
    for flag in CLONE_NS_FLAGS:
        rules.append(
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": EPERM,
                "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
            }
        )
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": rules,
    }
