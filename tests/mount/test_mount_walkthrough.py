"""The tutorial's Linux-level walkthrough, steps 1-20, through the real ``overunder`` CLI.

Every output the tutorial shows is checked: the tree after mounting, the line appended in
lower seen through merged, lower untouched after writing through merged, the whiteout char
device 0/0 in upper, the refused ``rm -rf`` while mounted, the busy ``umount`` naming the
process that holds it, and the clean removal after ``umount``.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from mount_helpers import cli, mounts_under, overlay_sandbox

from overunder.mount import mount_entry

LOWER1 = "I am lower 1\n"
LOWER2 = "I am another line in lower 1\n"
MERGED3 = "I am yet another amazing, incredible line in lower 1\n"


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Path]:
    with overlay_sandbox(tmp_path) as d:
        yield d


def sh(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, capture_output=True, text=True, check=False
    )


def listing(d: Path) -> list[str]:
    return sorted(os.listdir(d))


def test_linux_walkthrough_steps_1_to_20(sandbox: Path) -> None:
    # Steps 1-4: root, project dir, cd, the four sub-directories.
    assert os.geteuid() == 0
    project = sandbox / "over-under"
    project.mkdir()
    assert sh("mkdir ./{lower,upper,working,merged}", project).returncode == 0
    # Step 5: four empty dirs.
    assert listing(project) == ["lower", "merged", "upper", "working"]
    assert all(listing(project / d) == [] for d in listing(project))
    # Steps 6-7.
    (project / "lower" / "lower1.txt").write_text(LOWER1)
    (project / "upper" / "upper1.txt").write_text("I am upper 1\n")

    # Step 8: the tutorial's mount line, word for word but for the command name.
    r = cli(
        "mount",
        "-t",
        "overlay",
        "-o",
        "lowerdir=./lower,upperdir=./upper,workdir=./working",
        "overlay",
        "./merged",
        cwd=project,
    )
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    merged = project / "merged"
    entry = mount_entry(merged)
    assert entry is not None
    assert entry.fstype == "overlay"
    assert entry.option("lowerdir") == str(project / "lower")
    assert entry.option("upperdir") == str(project / "upper")
    assert entry.option("workdir") == str(project / "working")

    try:
        # Step 9: merged holds both files; the kernel made working/work.
        assert listing(merged) == ["lower1.txt", "upper1.txt"]
        assert listing(project / "lower") == ["lower1.txt"]
        assert listing(project / "upper") == ["upper1.txt"]
        assert listing(project / "working") == ["work"]
        tree = sh(f"tree {project}", project)
        if tree.returncode == 0:  # tree(1) is installed by scripts/install
            drawn = tree.stdout.replace("\xa0", " ")  # tree(1) pads with no-break spaces
            assert "├── merged\n│   ├── lower1.txt\n│   └── upper1.txt" in drawn

        # Steps 10-12: a line appended in lower is visible through merged.
        assert (
            sh('echo "I am another line in lower 1" >> lower/lower1.txt', project).returncode == 0
        )
        assert sh("cat lower/lower1.txt", project).stdout == LOWER1 + LOWER2
        assert sh("cat merged/lower1.txt", project).stdout == LOWER1 + LOWER2

        # Steps 13-15: writing through merged copies up; lower stays as it was.
        cmd = 'echo "I am yet another amazing, incredible line in lower 1" >> merged/lower1.txt'
        assert sh(cmd, project).returncode == 0
        assert sh("cat merged/lower1.txt", project).stdout == LOWER1 + LOWER2 + MERGED3
        assert sh("cat lower/lower1.txt", project).stdout == LOWER1 + LOWER2
        assert (project / "upper" / "lower1.txt").read_text() == LOWER1 + LOWER2 + MERGED3

        # Steps 16-17: rm through merged leaves lower alone and a whiteout in upper.
        assert sh("rm ./merged/lower1.txt", project).returncode == 0
        assert listing(merged) == ["upper1.txt"]
        assert listing(project / "lower") == ["lower1.txt"]
        assert listing(project / "upper") == ["lower1.txt", "upper1.txt"]

        # Step 18: `ls -lh ./upper` shows a char device 0, 0.
        st = os.lstat(project / "upper" / "lower1.txt")
        assert stat.S_ISCHR(st.st_mode)
        assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (0, 0)
        ls = sh("ls -lh ./upper", project).stdout.splitlines()
        whiteout = next(line for line in ls if line.endswith(" lower1.txt"))
        assert whiteout.startswith("c---------")
        assert " 0, 0 " in whiteout

        # Step 18 (the second one): rm -rf of the project is refused while mounted.
        r = sh(f"rm -rf {project}", sandbox)
        assert r.returncode == 1
        assert f"rm: cannot remove '{merged}': Device or resource busy" in r.stderr
        assert mounts_under(project) == [str(merged)]

        # A process inside merged makes umount refuse, naming it (util-linux: target is busy).
        holder = subprocess.Popen(["sleep", "60"], cwd=merged)
        try:
            r = cli("umount", merged, cwd=sandbox)
            assert r.returncode == 1
            assert f"umount: {merged}: target is busy" in r.stderr
            assert f"pid {holder.pid} (sleep: cwd)" in r.stderr
            assert mounts_under(project) == [str(merged)]
        finally:
            holder.kill()
            holder.wait()

        # Step 19: umount, silently.
        r = cli("umount", merged, cwd=sandbox)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
        assert mounts_under(project) == []
    finally:
        if mounts_under(project):
            cli("umount", "-l", merged)

    # Step 20: now the project goes away cleanly.
    r = sh(f"rm -rf {project}", sandbox)
    assert (r.returncode, r.stderr) == (0, "")
    assert not project.exists()
