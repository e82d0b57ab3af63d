"""The runtime package without an engine: spec defaults, port parsing, json-file logs, exit
codes from runc's messages, and the shim + port proxy on a plain busybox dir with real runc."""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import require_binary, require_root
from overunder.errors import InvalidArgument
from overunder.runtime import (
    ProcessSpec,
    Resources,
    RuntimeBinary,
    ShimConfig,
    SpecOptions,
    StartError,
    build_spec,
    parse_publish,
    read_exit,
    shim_alive,
    spawn_shim,
)
from overunder.runtime.exec import exec_process
from overunder.runtime.logs import LogWriter, read_log, tail_entries
from overunder.runtime.runc import exit_code_for_start_error, signal_number
from overunder.runtime.spec import DOCKER_CAPABILITIES, MASKED_PATHS, build_process

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contextlib

import g_busybox


def _spec(**kw: object) -> dict[str, object]:
    opts = SpecOptions(
        process=ProcessSpec(args=["sh"], env=["PATH=/bin"]),
        rootfs="/r",
        hostname="h",
        **kw,  # type: ignore[arg-type]
    )
    return build_spec(opts)


def test_spec_has_docker_defaults() -> None:
    spec = _spec()
    proc = spec["process"]
    assert isinstance(proc, dict)
    caps = proc["capabilities"]
    assert caps["bounding"] == list(DOCKER_CAPABILITIES)
    assert len(DOCKER_CAPABILITIES) == 14
    assert "ambient" not in caps
    assert "CAP_SYS_ADMIN" not in caps["effective"]
    assert proc["noNewPrivileges"] is False
    assert "rlimits" not in proc  # inherited: never above the hard limit
    linux = spec["linux"]
    assert isinstance(linux, dict)
    assert "/proc/kcore" in linux["maskedPaths"]
    assert list(MASKED_PATHS) == linux["maskedPaths"]
    assert "/proc/sys" in linux["readonlyPaths"]
    types = [n["type"] for n in linux["namespaces"]]
    assert sorted(types) == ["ipc", "mount", "network", "pid", "uts"]
    seccomp = linux["seccomp"]
    assert seccomp["defaultAction"] == "SCMP_ACT_ERRNO"  # an allow-list, as Docker's
    assert seccomp["defaultErrnoRet"] == 1
    rules = seccomp["syscalls"]
    allowed = {n for r in rules if r["action"] == "SCMP_ACT_ALLOW" for n in r["names"]}
    assert {"read", "execve", "chroot"} <= allowed
    assert not {"keyctl", "unshare", "mount", "reboot"} & allowed
    mounts = {m["destination"]: m for m in spec["mounts"]}  # type: ignore[union-attr]
    assert "ro" in mounts["/sys"]["options"]
    assert mounts["/dev/shm"]["type"] == "tmpfs"


def test_spec_options() -> None:
    spec = _spec(network="host", readonly_rootfs=True, cgroups_path="/overunder/x")
    linux = spec["linux"]
    assert isinstance(linux, dict)
    assert "network" not in [n["type"] for n in linux["namespaces"]]
    assert spec["root"] == {"path": "/r", "readonly": True}
    assert linux["cgroupsPath"] == "/overunder/x"
    res = Resources(memory=64 << 20, pids_limit=10, cpus=1.5).to_oci()
    assert res["memory"] == {"limit": 64 << 20}
    assert res["pids"] == {"limit": 10}
    assert res["cpu"] == {"quota": 150000, "period": 100000}
    with pytest.raises(InvalidArgument, match="Minimum memory limit"):
        Resources(memory=1024).to_oci()
    with pytest.raises(InvalidArgument, match="unknown network"):
        _spec(network="bridge")
    with pytest.raises(InvalidArgument, match="absolute path"):
        build_process(ProcessSpec(args=["sh"], cwd="tmp"))
    proc = build_process(ProcessSpec(args=["sh"], no_new_privileges=True, terminal=True))
    assert proc["noNewPrivileges"] is True
    assert proc["terminal"] is True


def test_parse_publish() -> None:
    m = parse_publish("3001:3000")
    assert (m.host_ip, m.host_port, m.container_port) == ("127.0.0.1", 3001, 3000)
    m = parse_publish("0.0.0.0:80:8080/tcp")
    assert (m.host_ip, m.host_port, m.container_port) == ("0.0.0.0", 80, 8080)
    assert parse_publish("3000").host_port == 0
    for bad in ("x:1", "1:99999", "53:53/udp"):
        with pytest.raises(InvalidArgument):
            parse_publish(bad)


def test_exit_codes_and_signals() -> None:
    assert exit_code_for_start_error('exec: "x": executable file not found in $PATH') == 127
    assert exit_code_for_start_error("stat /no/such: no such file or directory") == 127
    assert exit_code_for_start_error('exec: "/etc/passwd": permission denied') == 126
    assert exit_code_for_start_error("cgroup trouble") == 125
    assert signal_number("TERM") == 15
    assert signal_number("SIGKILL") == 9
    assert signal_number("9") == 9
    with pytest.raises(InvalidArgument):
        signal_number("NOPE")


def test_json_file_log_round_trip(tmp_path: Path) -> None:
    log = tmp_path / "c-json.log"
    w = LogWriter(log)
    w.write("stdout", b"one\ntw")
    w.write("stderr", b"err\n")
    w.write("stdout", b"o\nthree")
    w.write("stdout", b"x" * (16 * 1024 + 5) + b"\n")
    w.close()
    lines = log.read_text().splitlines()
    first = json.loads(lines[0])
    assert list(first) == ["log", "stream", "time"]
    assert first["log"] == "one\n"
    assert first["time"].endswith("Z")
    entries, offset = read_log(log)
    assert offset == log.stat().st_size
    texts = [(e.stream, e.text) for e in entries]
    assert texts[:3] == [("stdout", "one\n"), ("stderr", "err\n"), ("stdout", "two\n")]
    assert texts[3][1].startswith("three")  # 16 KiB cut: "three" + x... up to the cut
    assert len(texts[3][1]) == 16 * 1024
    assert [e.text for e in tail_entries(entries, 1)] == ["x" * 10 + "\n"]
    assert tail_entries(entries, 0) == []


def test_runtime_find_errors(tmp_path: Path) -> None:
    from overunder.errors import Unsupported

    with pytest.raises(Unsupported, match="unknown runtime"):
        RuntimeBinary.find("kata", tmp_path)
    with pytest.raises(Unsupported, match="crun"):
        # Not installed here; on a hybrid-cgroup host with crun the message says why instead.
        RuntimeBinary.find("crun", tmp_path)


# -- the shim on a plain rootfs dir -------------------------------------------------------------
@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return g_busybox.make_rootfs(tmp_path_factory.mktemp("g-rootfs") / "rootfs")


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[RuntimeBinary]:
    require_root()
    require_binary("runc")
    rt = RuntimeBinary.find("runc", tmp_path / "runc")
    yield rt
    for cid in ("plain", "plainfg", "bad"):
        with contextlib.suppress(Exception):
            rt.kill(cid, 9, all_processes=True)
        with contextlib.suppress(Exception):
            rt.delete(cid, force=True)


def _config(
    rt: RuntimeBinary, tmp: Path, rootfs: Path, cid: str, args: list[str], **kw: object
) -> ShimConfig:
    sd = tmp / cid
    sd.mkdir()
    (sd / "bundle").mkdir()
    spec = build_spec(
        SpecOptions(
            process=ProcessSpec(args=args, env=["PATH=/bin", "HOME=/root"]),
            rootfs=str(rootfs),
            hostname=cid,
            cgroups_path=f"/overunder/test-{cid}",
        )
    )
    (sd / "bundle" / "config.json").write_text(json.dumps(spec))
    return ShimConfig(
        container_id=cid,
        bundle=str(sd / "bundle"),
        state_dir=str(sd),
        log_path=str(sd / "log.json"),
        runtime_name=rt.name,
        runtime_path=rt.path,
        runtime_root=str(rt.state_root),
        **kw,  # type: ignore[arg-type]
    )


def test_shim_proxy_exec_and_exit(tmp_path: Path, rootfs: Path, runtime: RuntimeBinary) -> None:
    cfg = _config(
        runtime,
        tmp_path,
        rootfs,
        "plain",
        ["httpd", "-f", "-p", "3000", "-h", "/var/www"],
        ports=[parse_publish("127.0.0.1:0:3000").to_dict()],
    )
    handle = spawn_shim(cfg, how="fork")
    handle.close()
    sd = Path(cfg.state_dir)
    assert shim_alive(sd)
    port = handle.ports[0].host_port
    assert port > 0
    body = b""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not body:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read()
        except OSError:
            time.sleep(0.05)
    assert body == b"hello from overunder\n"
    # Many connections at once: each gets its own socket in the container's netns.
    results: list[bytes] = []

    def fetch() -> None:
        results.append(urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read())

    threads = [threading.Thread(target=fetch) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [body] * 8
    proc = build_process(ProcessSpec(args=["sh", "-c", "exit 9"], env=["PATH=/bin"]))
    assert exec_process(runtime, "plain", proc, work_dir=sd) == 9
    proc = build_process(ProcessSpec(args=["nosuch"], env=["PATH=/bin"]))
    with pytest.raises(StartError) as info:
        exec_process(runtime, "plain", proc, work_dir=sd)
    assert info.value.exit_code == 126
    runtime.kill("plain", 9)
    deadline = time.monotonic() + 5
    while read_exit(sd) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    ex = read_exit(sd)
    assert ex is not None
    assert ex.exit_code == 137
    deadline = time.monotonic() + 5
    while shim_alive(sd) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not shim_alive(sd)
    assert runtime.state("plain") is None  # the shim ran runc delete
    with socket.socket() as s:  # the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_shim_attached_and_start_failure(
    tmp_path: Path, rootfs: Path, runtime: RuntimeBinary
) -> None:
    out = tmp_path / "out.txt"
    cfg = _config(
        runtime, tmp_path, rootfs, "plainfg", ["sh", "-c", "echo hi; exit 4"], attach=True
    )
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        handle = spawn_shim(cfg, stdout=fd, stderr=fd, how="exec")  # the fork path: above
    finally:
        os.close(fd)
    assert handle.wait_exit() == 4
    handle.close()
    assert out.read_text() == "hi\n"
    cfg = _config(runtime, tmp_path, rootfs, "bad", ["nosuchcmd"])
    with pytest.raises(StartError) as info:
        spawn_shim(cfg)
    assert info.value.exit_code == 127
    assert 'exec: "nosuchcmd": executable file not found' in info.value.message
    assert runtime.state("bad") is None
    assert (Path(cfg.state_dir) / "log.json").read_text() == ""  # runc's noise not logged


def test_crun_refused_on_hybrid_cgroups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """crun 1.8 cannot run on hybrid cgroups; we say so before creating anything."""
    from overunder.errors import Unsupported
    from overunder.runtime import runc

    monkeypatch.setattr(runc.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(runc, "cgroup_mode", lambda: "hybrid")
    with pytest.raises(Unsupported, match="hybrid") as info:
        RuntimeBinary.find("crun", tmp_path)
    assert info.value.hint is not None
    assert "--runtime runc" in info.value.hint
    monkeypatch.setattr(runc, "cgroup_mode", lambda: "v2")
    assert RuntimeBinary.find("crun", tmp_path).path == "/usr/bin/crun"
