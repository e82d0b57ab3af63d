"""``overunder tour``: the Linux-level walkthrough replayed with real outputs, and cleaned up
after itself however it ends."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require_fuse, require_overlay, require_root
from overunder.errors import FailedPrecondition
from overunder.mount.mountinfo import read_mountinfo
from overunder.tour import Step, Tour


def tour(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        # --part linux: the default tour also plays the Docker part first (engineer I)
        [sys.executable, "-m", "overunder", "tour", "--part", "linux", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def mounted_under(path: Path) -> list[str]:
    root = os.path.realpath(path)
    return [e.target for e in read_mountinfo() if e.target.startswith(root)]


def check_walkthrough(out: str, project: Path, *, fuse: bool = False) -> None:
    """The tutorial's outputs, on either driver (the FUSE pass must show the same)."""
    blocks = out.split("\n\n")
    assert blocks[0] == (
        "=== At the Linux File System Level, again on the FUSE overlay ==="
        if fuse
        else "=== At the Linux File System Level ==="
    )
    assert "$ mkdir ./{lower,upper,working,merged}" in out
    mount = (
        "$ overunder mount -t fuse.overunder -o lowerdir=./lower,upperdir=./upper,"
        "workdir=./working --trace ../fuse-trace.jsonl overlay ./merged\n"
        if fuse
        else "$ overunder mount -t overlay -o lowerdir=./lower,upperdir=./upper,"
        "workdir=./working overlay ./merged\n"
    )
    # mount prints nothing: the next line is the step's trace (FUSE) or its notice.
    assert re.search(re.escape(mount) + r"(-- trace: |  >> No output)", out)
    drawn = out.replace("\xa0", " ")
    assert "├── merged\n│   ├── lower1.txt\n│   └── upper1.txt\n├── upper" in drawn  # step 9
    lines2 = "I am lower 1\nI am another line in lower 1\n"
    assert f"$ cat merged/lower1.txt\n{lines2}  >>" in out  # step 12
    lines3 = lines2 + "I am yet another amazing, incredible line in lower 1\n"
    assert f"$ cat merged/lower1.txt\n{lines3}  >>" in out  # step 14
    assert (
        f"Step 15: Read the contents of the file in the read-only directory, "
        f"lower/lower1.txt\n$ cat lower/lower1.txt\n{lines2}  >>" in out
    )
    assert (
        "├── merged\n│   └── upper1.txt\n├── upper\n│   ├── lower1.txt\n│   └── upper1.txt" in drawn
    )
    ls = out.split("$ ls -lh ./upper\n", 1)[1].split("  >>", 1)[0]
    whiteout = next(line for line in ls.splitlines() if line.endswith(" lower1.txt"))
    assert whiteout.startswith("c---------")
    assert " 0, 0 " in whiteout
    # The kernel links each whiteout to a spare in working/work; the FUSE overlay mknods it.
    assert whiteout.split()[1] == ("1" if fuse else "2")
    assert (
        f"$ rm -rf {project}\nrm: cannot remove '{project}/merged': Device or resource busy\n"
        in out
    )
    assert f"$ findmnt {project}/merged\nTARGET" in out
    fstype = "fuse.overunder" if fuse else "overlay"
    assert re.search(rf"\n{re.escape(str(project))}/merged +overlay +{re.escape(fstype)} ", out)
    assert re.search(
        re.escape(f"$ overunder umount {project}/merged\n") + r"(-- trace: |  >> No output)", out
    )
    assert "Step 20: Delete the directory" in out
    assert out.rstrip().endswith("has been removed.")
    assert out.count("Step ") == 21


def test_tour_text(tmp_path: Path) -> None:
    require_overlay()
    base = tmp_path / "t"
    r = tour("--dir", base)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    check_walkthrough(r.stdout, base / "over-under")
    assert not base.exists()
    assert mounted_under(tmp_path) == []


def test_tour_json(tmp_path: Path) -> None:
    require_overlay()
    r = tour("--dir", tmp_path / "j", "--format", "json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["Driver"] == "overlay"
    assert doc["Parts"] == ["linux"]
    steps = doc["Steps"]
    assert [s["Step"] for s in steps] == [str(i) for i in range(1, 19)] + ["18", "19", "20"]
    by_cmd = {c["Command"]: c for s in steps for c in s["Commands"]}
    assert by_cmd["cat lower/lower1.txt"]["Output"] == (
        "I am lower 1\nI am another line in lower 1\n"
    )
    refused = steps[18]["Commands"][0]
    assert refused["ExitCode"] == 1
    assert "Device or resource busy" in refused["Output"]
    assert not (tmp_path / "j").exists()


def test_tour_refuses_a_non_empty_dir(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine\n")
    r = tour("--dir", tmp_path)
    assert r.returncode == 1
    assert f"--dir {tmp_path} exists and is not empty" in r.stderr
    assert (tmp_path / "keep.txt").read_text() == "mine\n"


def _mounting_steps(project: Path) -> list[Step]:
    return [
        Step("1", "dirs", (f"mkdir -p {project}/{{l1,l2,m}}",), "", cwd=project.parent),
        Step("2", "mount", ("overunder mount -t overlay -o lowerdir=./l1:./l2 overlay ./m",), ""),
        # A process inside the mount keeps it busy: cleanup must still get rid of it.
        Step("3", "hold", ("cd m && { sleep 60 >/dev/null 2>&1 & echo $! > ../holder.pid; }",), ""),
    ]


def test_cleanup_after_an_error(tmp_path: Path) -> None:
    require_overlay()
    env = Tour.make_env(tmp_path / "e")
    steps = [
        *_mounting_steps(env.project),
        Step("4", "fails", ("false",), ""),
    ]
    t = Tour(env)
    pid = 0

    def note_pid(step: Step) -> None:
        nonlocal pid
        if step.number == "4":
            pid = int((env.project / "holder.pid").read_text())

    t.on_step = note_pid
    try:
        with pytest.raises(FailedPrecondition, match="step 4: 'false' failed"):
            t.run(steps)
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
    assert pid
    assert t.leftovers == []
    assert not env.base.exists()
    assert mounted_under(tmp_path) == []


def test_cleanup_after_ctrl_c(tmp_path: Path) -> None:
    require_overlay()
    env = Tour.make_env(tmp_path / "c")

    def interrupt(step: Step) -> None:
        if step.number == "3":
            raise KeyboardInterrupt

    t = Tour(env, on_step=interrupt)
    with pytest.raises(KeyboardInterrupt):
        t.run(_mounting_steps(env.project))
    assert not env.base.exists()
    assert mounted_under(tmp_path) == []


def test_tour_on_the_fuse_driver(tmp_path: Path) -> None:
    """``--part linux-fuse``: the same walkthrough on the FUSE overlay, same outputs.

    Step 12 edits lower/lower1.txt under the mounted overlay (undefined for overlayfs). The
    FUSE overlay shows the change, as the kernel does: it never lets the kernel cache the
    attributes of a file still in a lower layer, and drops the file's cached pages when its
    size/mtime changed since the last open (``fuse/overlay.py``). The tour's note says so, and
    would say "still shows the old content" if that ever stopped being true.
    """
    require_root()
    require_fuse()
    base = tmp_path / "f"
    r = subprocess.run(
        [sys.executable, "-m", "overunder", "tour", "--part", "linux-fuse", "--dir", str(base)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stderr == ""
    check_walkthrough(r.stdout, base / "over-under", fuse=True)
    step12 = r.stdout.split("Step 12: ", 1)[1].split("\n\n", 1)[0]
    assert "$ cat merged/lower1.txt\nI am lower 1\nI am another line in lower 1\n  >>" in step12
    assert "  >> merged shows the change here too. overunder's FUSE overlay never lets" in step12
    assert "still shows the old content" not in step12
    assert not base.exists()
    assert mounted_under(tmp_path) == []


def test_treeview_fallback_draws_like_tree(tmp_path: Path) -> None:
    from overunder.tour.treeview import draw_tree

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("x")
    (tmp_path / "a").write_text("a")
    (tmp_path / "l").symlink_to("a")
    (tmp_path / ".hidden").write_text("h")
    expected = "\n".join(
        [str(tmp_path), "├── a", "├── b", "│   └── x", "└── l -> a", "", "2 directories, 3 files"]
    )
    assert draw_tree(tmp_path) == expected
    tree = shutil.which("tree")
    if tree is not None:
        real = subprocess.run([tree, str(tmp_path)], capture_output=True, text=True, check=True)
        assert real.stdout.replace("\xa0", " ").rstrip("\n") == expected


def test_cli_part_names_match_the_tour() -> None:
    from overunder.cli.commands.tour import PART_NAMES
    from overunder.tour import PARTS

    assert tuple(PARTS) == PART_NAMES
