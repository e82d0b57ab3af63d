"""``overunder tour --part linux-fuse``: the Linux-level walkthrough on overunder's FUSE
overlay, mounted with ``--trace``, with the copy-up and whiteout it logged shown under the
steps that caused them; and the FUSE process and mount gone however the tour ends."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import require_binary, require_fuse, require_overlay, require_root
from overunder.errors import FailedPrecondition
from overunder.mount.fuse import pid_file_for
from overunder.mount.mountinfo import read_mountinfo
from overunder.tour import Step, Tour

# What lower/lower1.txt holds when step 13 appends through merged: the copy-up's size.
LOWER_AT_COPY_UP = "I am lower 1\nI am another line in lower 1\n"


def _tour(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("OVERUNDER_ROOT", None)  # the Docker part uses a private store under its dir
    env.pop("OVERUNDER_RUN_ROOT", None)
    return subprocess.run(
        [sys.executable, "-m", "overunder", "tour", *map(str, args)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
        check=False,
        env=env,
    )


def _mounted_under(path: Path) -> list[str]:
    root = os.path.realpath(path)
    return [e.target for e in read_mountinfo() if e.target.startswith(root)]


def _fuse_daemons_under(path: Path) -> list[int]:
    """Live fuse.overunder processes serving a mount point under ``path``."""
    root = os.path.realpath(path).encode()
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if b"overunder.fuse.daemon" in cmd and root in cmd and state != "Z":
            found.append(int(d.name))
    return found


def _step(out: str, number: str, title_start: str = "") -> str:
    """The text of step ``number`` (the first one whose title starts with ``title_start``)."""
    for block in out.split("\n\n"):
        if block.startswith(f"Step {number}: {title_start}"):
            return block
    raise AssertionError(f"step {number} {title_start!r} not in the output")


@pytest.fixture(scope="module")
def fuse_text(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    require_root()
    require_fuse()
    base = tmp_path_factory.mktemp("fuse-tour") / "t"
    r = _tour("--part", "linux-fuse", "--dir", base)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr == ""
    return r.stdout, base


def test_the_fuse_pass_says_what_is_different(fuse_text: tuple[str, Path]) -> None:
    out, _ = fuse_text
    heading, intro = out.split("\n\n")[:2]
    assert heading == "=== At the Linux File System Level, again on the FUSE overlay ==="
    assert "a userspace filesystem written in Python" in intro
    assert "same on-disk format" in intro
    assert "Step 21:" not in out
    assert out.count("\nStep ") == 21  # two step 18s, as in the tutorial


def test_the_copy_up_is_shown_under_the_append(fuse_text: tuple[str, Path]) -> None:
    out, _ = fuse_text
    step = _step(out, "13")
    size = len(LOWER_AT_COPY_UP.encode())
    assert size == 42
    lines = step.splitlines()
    assert lines[1] == (
        '$ echo "I am yet another amazing, incredible line in lower 1" >> merged/lower1.txt'
    )
    assert lines[2].startswith("-- trace: what the fuse.overunder process logged to ")
    assert "../fuse-trace.jsonl" in lines[2]
    assert re.fullmatch(
        rf"   \d\d:\d\d:\d\d copy-up   /lower1\.txt  file {size} bytes from lower 1", lines[3]
    ), lines[3]
    assert lines[4].startswith("  >> ")
    assert (
        f"  >> In the trace: the copy-up wrote {size} bytes of /lower1.txt from lower 1 "
        "into ./upper/lower1.txt" in step
    )


def test_the_whiteout_is_shown_under_the_rm(fuse_text: tuple[str, Path]) -> None:
    out, _ = fuse_text
    step = _step(out, "16")
    lines = step.splitlines()
    assert lines[1] == "$ rm ./merged/lower1.txt"
    assert lines[2].startswith("-- trace: ")
    assert re.fullmatch(r"   \d\d:\d\d:\d\d whiteout  /lower1\.txt  \(chardev\)", lines[3])
    assert (
        "  >> In the trace: the whiteout ./upper/lower1.txt, a char device 0/0, was created" in step
    )


def test_each_event_is_shown_once_under_its_own_step(fuse_text: tuple[str, Path]) -> None:
    out, _ = fuse_text
    events = re.findall(r"^   \d\d:\d\d:\d\d (\S+) ", out, flags=re.MULTILINE)
    assert events[:3] == ["mount", "copy-up", "whiteout"]
    assert set(events[3:]) <= {"unmount"}  # logged at umount when the overlay does
    # Steps that only read (or write lower and upper directly) log nothing.
    for number in ("9", "10", "11", "12", "14", "15", "17"):
        assert "-- trace: " not in _step(out, number), number
    assert "-- trace: " in _step(out, "8")  # the mount event
    assert re.search(r"\n   \d\d:\d\d:\d\d mount     \S+/over-under/merged\n", _step(out, "8"))


def test_the_fuse_pass_cleans_up(fuse_text: tuple[str, Path]) -> None:
    out, base = fuse_text
    assert out.rstrip().endswith(f"{base} has been removed.")
    assert not base.exists()
    assert _mounted_under(base.parent) == []
    assert _fuse_daemons_under(base.parent) == []
    # Nor the run-dir files of its mount (pid file; the log, empty when all went well).
    pid_file = pid_file_for(base / "over-under" / "merged")
    assert not pid_file.exists()
    assert not pid_file.with_suffix(".log").exists()


def test_the_fuse_pass_as_json(tmp_path: Path) -> None:
    require_root()
    require_fuse()
    r = _tour("--part", "linux-fuse", "--format", "json", "--dir", tmp_path / "j")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["Parts"] == ["linux-fuse"]
    steps = doc["Steps"]
    assert {s["Part"] for s in steps} == {"linux-fuse"}
    by_number = {s["Step"]: s for s in steps}

    def records(number: str) -> list[dict[str, Any]]:
        observed = by_number[number].get("Observed")
        return [] if observed is None else list(observed["Records"])

    [copy_up] = records("13")
    assert copy_up["event"] == "copy-up"
    assert copy_up["path"] == "/lower1.txt"
    assert copy_up["bytes"] == len(LOWER_AT_COPY_UP.encode())
    assert copy_up["layer"] == 1
    assert copy_up["kind"] == "file"
    [whiteout] = records("16")
    assert whiteout == {**whiteout, "event": "whiteout", "path": "/lower1.txt", "style": "chardev"}
    assert records("14") == []
    assert "In the trace: the copy-up wrote 42 bytes" in by_number["13"]["Notice"]
    assert "merged shows the change here too" in by_number["12"]["Notice"]
    assert not (tmp_path / "j").exists()


def test_the_fuse_pass_cleans_up_when_interrupted(tmp_path: Path) -> None:
    """SIGTERM right after the copy-up: the FUSE process ends, the mount and dir are gone."""
    require_root()
    require_fuse()
    base = tmp_path / "i"
    proc = subprocess.Popen(
        [sys.executable, "-m", "overunder", "tour", "--part", "linux-fuse", "--dir", str(base)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    assert proc.stdout is not None
    seen_mounted = False
    try:
        deadline = time.monotonic() + 60
        for line in proc.stdout:
            if line.startswith("Step 14:") or time.monotonic() > deadline:
                seen_mounted = bool(_mounted_under(base)) and bool(_fuse_daemons_under(base))
                break
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert seen_mounted, "the tour had not mounted the FUSE overlay yet"
    assert proc.returncode != 0
    assert not base.exists()
    assert _mounted_under(tmp_path) == []
    assert _fuse_daemons_under(tmp_path) == []


def test_cleanup_ends_a_busy_fuse_mount(tmp_path: Path) -> None:
    """A process still inside merged: the mount can only be detached lazily, which would
    leave the FUSE process serving it; cleanup ends that process too."""
    require_root()
    require_fuse()
    env = Tour.make_env(tmp_path / "b")
    project = env.project
    steps = [
        Step("1", "dirs", (f"mkdir -p {project}/{{l,u,w,m}}",), "", cwd=project.parent),
        Step(
            "2",
            "mount",
            ("overunder mount -t fuse.overunder -o lowerdir=./l,upperdir=./u,workdir=./w x ./m",),
            "",
        ),
        Step("3", "hold", ("cd m && { sleep 60 >/dev/null 2>&1 & echo $! > ../holder.pid; }",), ""),
        Step("4", "fails", ("false",), ""),
    ]
    pid = 0
    daemons: list[int] = []

    def note(step: Step) -> None:
        nonlocal pid
        if step.number == "4":
            pid = int((project / "holder.pid").read_text())
            daemons.extend(_fuse_daemons_under(env.base))

    t = Tour(env, on_step=note)
    try:
        with pytest.raises(FailedPrecondition, match="step 4: 'false' failed"):
            t.run(steps)
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
    assert pid
    assert len(daemons) == 1
    assert t.leftovers == []
    assert _fuse_daemons_under(tmp_path) == []
    assert _mounted_under(tmp_path) == []
    assert not env.base.exists()


def test_driver_fuse_is_for_the_container_part(tmp_path: Path) -> None:
    """--driver picks the Docker part's storage driver; --part linux stays on the kernel."""
    require_overlay()
    r = _tour("--part", "linux", "--driver", "fuse", "--format", "json", "--dir", tmp_path / "d")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["Driver"] == "fuse.overunder"
    commands = [c["Command"] for s in doc["Steps"] for c in s["Commands"]]
    assert any(c.startswith("overunder mount -t overlay ") for c in commands)
    assert not any("fuse.overunder" in c for c in commands)


def test_the_default_tour_plays_every_part_in_order(tmp_path: Path) -> None:
    require_overlay()
    require_fuse()
    require_binary("runc")
    base = tmp_path / "all"
    r = _tour("--format", "json", "--dir", base, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    doc = json.loads(r.stdout)
    assert doc["Parts"] == ["docker", "linux", "linux-fuse"]
    parts = [s["Part"] for s in doc["Steps"]]
    assert parts == sorted(parts, key=["docker", "linux", "linux-fuse"].index)
    assert parts.count("linux") == parts.count("linux-fuse") == 21
    fuse_mounts = [
        c["Command"]
        for s in doc["Steps"]
        if s["Part"] == "linux-fuse"
        for c in s["Commands"]
        if c["Command"].startswith("overunder mount")
    ]
    assert fuse_mounts == [
        "overunder mount -t fuse.overunder -o lowerdir=./lower,upperdir=./upper,"
        "workdir=./working --trace ../fuse-trace.jsonl overlay ./merged"
    ]
    assert not base.exists()
    assert _mounted_under(tmp_path) == []
    assert _fuse_daemons_under(tmp_path) == []
    assert shutil.which("runc")


def test_step_12_says_so_when_merged_is_stale(tmp_path: Path) -> None:
    """The note of step 12 is written from what cat printed: were the FUSE overlay to show
    the lower file as it was before the edit, the tour would say so, not claim the change."""
    from overunder.tour.framework import CommandResult, TourEnv
    from overunder.tour.linux import fuse_linux_steps

    env = TourEnv(tmp_path, tmp_path / "over-under")
    (env.project / "lower").mkdir(parents=True)
    (env.project / "lower" / "lower1.txt").write_text(LOWER_AT_COPY_UP)
    [step12] = [s for s in fuse_linux_steps(env) if s.number == "12"]
    assert step12.observe is not None
    stale = step12.observe((CommandResult("cat merged/lower1.txt", "I am lower 1\n", 0),))
    assert stale is not None
    assert stale.notice.startswith("merged still shows the old content")
    assert "undefined" in stale.notice
    fresh = step12.observe((CommandResult("cat merged/lower1.txt", LOWER_AT_COPY_UP, 0),))
    assert fresh is not None
    assert fresh.notice.startswith("merged shows the change here too")
    assert stale.lines == fresh.lines == ()  # no trace file yet: nothing logged


def test_every_trace_event_kind_is_explained() -> None:
    from overunder.tour.fusetrace import explain_event

    assert explain_event({"event": "copy-up", "path": "/a", "bytes": 5, "layer": 2}) == (
        "the copy-up wrote 5 bytes of /a from lower 2 into ./upper/a before the write went "
        "there; the lower file is untouched."
    )
    assert "no data copied" in explain_event({"event": "copy-up", "path": "/a", "via-index": 1})
    assert "char device 0/0" in explain_event(
        {"event": "whiteout", "path": "/a", "style": "chardev"}
    )
    assert ".wh. file" in explain_event({"event": "whiteout", "path": "/a", "style": "wh-file"})
    assert "opaque" in explain_event({"event": "opaque", "path": "/d"})
    assert "/d -> /e" not in explain_event({"event": "redirect", "path": "/e", "from": "/d"})
    assert "/d was renamed to /e" in explain_event(
        {"event": "redirect", "path": "/e", "from": "/d"}
    )
    assert explain_event({"event": "mount"}).startswith("the mount comes first")
    assert "ended" in explain_event({"event": "unmount"})
