"""Docker's default seccomp profile as data, and its resolution into the OCI form.

That runc accepts the result and that the calls really fail inside a container is tested end
to end in ``tests/cli/test_container_verbs.py::test_seccomp_*``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from overunder.errors import InvalidArgument
from overunder.runtime import seccomp
from overunder.runtime.seccomp import (
    CLONE_NAMESPACE_FLAGS,
    default_profile,
    docker_default_profile,
    load_profile,
    resolve,
)
from overunder.runtime.spec import DOCKER_CAPABILITIES


def _allowed(profile: dict[str, Any]) -> set[str]:
    """Names allowed without an argument filter."""
    return {
        n
        for r in profile["syscalls"]
        if r["action"] == "SCMP_ACT_ALLOW" and not r.get("args")
        for n in r["names"]
    }


def _rules(profile: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [r for r in profile["syscalls"] if name in r["names"]]


def test_default_is_an_allow_list_with_eperm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seccomp.platform, "machine", lambda: "x86_64")
    p = default_profile()
    assert p["defaultAction"] == "SCMP_ACT_ERRNO"
    assert p["defaultErrnoRet"] == 1
    assert p["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    allowed = _allowed(p)
    for name in ("read", "write", "execve", "openat", "socketpair", "wait4", "chroot"):
        assert name in allowed, name
    assert "arch_prctl" in allowed
    assert "modify_ldt" in allowed
    assert "set_tls" not in allowed  # arm only
    # Docker's "significant syscalls blocked": none of them is allowed.
    for name in ("mount", "umount2", "unshare", "setns", "reboot", "swapon", "keyctl",
                 "add_key", "kexec_load", "init_module", "bpf", "userfaultfd", "acct",
                 "open_by_handle_at", "clock_settime", "pivot_root", "kcmp"):  # fmt: skip
        assert name not in allowed, name
    # ptrace is safe with seccomp since 4.8: allowed by a minKernel rule.
    assert "ptrace" in allowed


def test_argument_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seccomp.platform, "machine", lambda: "x86_64")
    p = default_profile()
    (clone,) = _rules(p, "clone")
    assert clone["action"] == "SCMP_ACT_ALLOW"
    assert clone["args"] == [
        {"index": 0, "value": CLONE_NAMESPACE_FLAGS, "op": "SCMP_CMP_MASKED_EQ"}
    ]
    assert CLONE_NAMESPACE_FLAGS == 0x7E020000
    (clone3,) = _rules(p, "clone3")
    assert clone3 == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
    (sock,) = _rules(p, "socket")
    assert sock["args"] == [{"index": 0, "value": 40, "op": "SCMP_CMP_NE"}]
    personas = sorted(r["args"][0]["value"] for r in _rules(p, "personality"))
    assert personas == [0, 8, 0x20000, 0x20008, 0xFFFFFFFF]
    assert all(r["args"][0]["op"] == "SCMP_CMP_EQ" for r in _rules(p, "personality"))


def test_capabilities_unlock_their_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seccomp.platform, "machine", lambda: "x86_64")
    admin = default_profile([*DOCKER_CAPABILITIES, "CAP_SYS_ADMIN"])
    allowed = _allowed(admin)
    assert {"mount", "umount2", "unshare", "setns", "clone", "clone3"} <= allowed
    assert not any(r.get("args") for r in _rules(admin, "clone"))  # namespace flags allowed
    assert not any(r["action"] == "SCMP_ACT_ERRNO" for r in _rules(admin, "clone3"))
    assert "reboot" not in allowed
    assert "reboot" in _allowed(default_profile(["CAP_SYS_BOOT"]))
    assert {"kcmp", "pidfd_getfd"} <= _allowed(default_profile(["CAP_SYS_PTRACE"]))
    assert "chroot" not in _allowed(default_profile([]))  # CAP_SYS_CHROOT is in Docker's set


def test_aarch64_gets_its_arches_and_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seccomp.platform, "machine", lambda: "aarch64")
    p = default_profile()
    assert p["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    allowed = _allowed(p)
    assert "set_tls" in allowed
    assert "arch_prctl" not in allowed
    assert "modify_ldt" not in allowed


def test_docker_format_round_trip_and_conditions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seccomp.platform, "machine", lambda: "x86_64")
    # The Docker-format data serialises and loads like a user's profile file.
    text = json.dumps(docker_default_profile())
    assert resolve(load_profile(text, source="x.json"), DOCKER_CAPABILITIES) == default_profile()
    monkeypatch.setattr(seccomp, "_kernel_version", lambda: (4, 4, 0))
    old = default_profile()
    assert "ptrace" not in _allowed(old)
    custom = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"name": "getpid", "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
            {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "excludes": {"arches": ["amd64"]}},
        ],
    }
    out = resolve(custom, ())
    assert out == {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    }


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        ("{}", "no defaultAction"),
        ('{"defaultAction": "SCMP_ACT_NOPE"}', "unknown action"),
        (
            '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]}',
            "names no system call",
        ),
    ],
)
def test_bad_profiles_are_refused(text: str, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        load_profile(text, source="p.json")
