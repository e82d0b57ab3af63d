"""The short exit paths on real runc: ``rm -f`` (init signalled through a pidfd, runc's state
and cgroups removed in-process), a foreground ``run --rm`` (the caller removes the container
and the shim skips its hook) and a detached ``--rm`` (the shim's hook removes it). Each must
leave nothing behind: no processes, cgroup dirs, runc state, mounts or container dirs."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import require_binary, require_overlay, require_root

sys.path.insert(0, str(Path(__file__).resolve().parent))
import g_busybox

IMAGE = "busybox:fast"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    require_root()
    require_binary("runc")
    require_overlay()
    base = tmp_path_factory.mktemp("fast-exit")
    root = base / "root"
    g_busybox.build_image(root, IMAGE, work=base)
    yield root
    ids = ou(root, "ps", "-aq", "--no-trunc").stdout.split()
    if ids:
        ou(root, "rm", "-f", *ids)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split()[4]
        if target.startswith(str(root)):
            subprocess.run(["umount", "-l", target], check=False)


def ou(engine: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OVERUNDER_ROOT": str(engine)}
    env.pop("OVERUNDER_RUN_ROOT", None)
    return subprocess.run(
        [sys.executable, "-m", "overunder", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def pids_in_cgroup(cid: str) -> set[int]:
    pids: set[int] = set()
    for procs in glob.glob(f"/sys/fs/cgroup/*/overunder/{cid}/cgroup.procs"):
        try:
            pids.update(int(p) for p in Path(procs).read_text().split())
        except OSError:
            continue
    return pids


def alive(pid: int) -> bool:
    """Running, not a zombie (a zombie waits for its reaper, it runs nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] != "Z"


def assert_nothing_left(engine: Path, cid: str, pids: set[int] | None = None) -> None:
    assert not glob.glob(f"/sys/fs/cgroup/*/overunder/{cid}"), "cgroup dirs left"
    assert not (engine / "run" / "runc" / cid).exists(), "runc state left"
    assert not (engine / "run" / "containers" / cid).exists()
    assert not (engine / "containers" / cid).exists()
    assert cid not in Path("/proc/self/mountinfo").read_text()
    survivors = [pid for pid in pids or () if alive(pid)]
    assert not survivors, f"processes of the container survived: {survivors}"


def test_rm_force_kills_every_process_and_leaves_nothing(engine: Path) -> None:
    r = ou(engine, "run", "-d", "--network", "none", IMAGE, "sh", "-c", "sleep 1000 & sleep 1000")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    deadline = time.monotonic() + 10
    while len(pids_in_cgroup(cid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    pids = pids_in_cgroup(cid)
    assert len(pids) >= 2, pids  # the init and a background sleep
    r = ou(engine, "rm", "-f", cid)
    assert r.returncode == 0, r.stderr
    assert r.stdout == cid + "\n"
    assert_nothing_left(engine, cid, pids)


def test_kill_signals_init_and_records_the_exit(engine: Path) -> None:
    r = ou(
        engine,
        "run",
        "-d",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 7' USR1; sleep 1000 & wait",
    )
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    time.sleep(0.3)  # sh has set its trap
    assert ou(engine, "kill", "-s", "USR1", cid).returncode == 0
    assert ou(engine, "wait", cid).stdout.strip() == "7"
    assert ou(engine, "rm", cid).returncode == 0
    assert_nothing_left(engine, cid)


def test_foreground_run_rm_removes_before_returning(engine: Path) -> None:
    r = ou(
        engine,
        "run",
        "--rm",
        "--name",
        "fg-rm",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "echo hi; exit 3",
    )
    assert (r.returncode, r.stdout) == (3, "hi\n"), r.stderr
    # capture_output returned: the caller's pipes reached EOF, and everything is gone already.
    assert ou(engine, "ps", "-aq").stdout == ""
    for d in (engine / "containers", engine / "run" / "containers"):
        assert not [p for p in d.iterdir() if not p.name.startswith(".")]


def test_detached_run_rm_is_removed_by_its_shim(engine: Path) -> None:
    r = ou(engine, "run", "-d", "--rm", "--network", "none", IMAGE, "sleep", "0.2")
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    deadline = time.monotonic() + 20
    while (engine / "containers" / cid).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert_nothing_left(engine, cid)
