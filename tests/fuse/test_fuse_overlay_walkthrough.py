"""The tutorial's Linux walkthrough (steps 1-20) with ``-t fuse.overunder``: the same outputs
as with the kernel overlay (tests/mount/test_mount_walkthrough.py), through the real CLI."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuse_overlay_helpers import cli, ours_umount, remove_tree, world_dir

from conftest import require_fuse, require_root
from overunder.mount import mount_entry

pytestmark = [pytest.mark.root, pytest.mark.fuse]

LOWER1 = "I am lower 1\n"
LOWER2 = "I am another line in lower 1\n"
MERGED3 = "I am yet another amazing, incredible line in lower 1\n"


@pytest.fixture
def sandbox() -> Iterator[Path]:
    require_root()
    require_fuse()
    d = world_dir("ovu-fuse-walk-")
    try:
        yield d
    finally:
        ours_umount(d / "over-under" / "merged")
        remove_tree(d)


def sh(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, capture_output=True, text=True, check=False
    )


def listing(d: Path) -> list[str]:
    return sorted(os.listdir(d))


def test_linux_walkthrough_with_fuse_overunder(sandbox: Path) -> None:
    project = sandbox / "over-under"
    project.mkdir()
    assert sh("mkdir ./{lower,upper,working,merged}", project).returncode == 0
    (project / "lower" / "lower1.txt").write_text(LOWER1)
    (project / "upper" / "upper1.txt").write_text("I am upper 1\n")
    r = cli(
        "mount", "-t", "fuse.overunder", "-o",
        "lowerdir=./lower,upperdir=./upper,workdir=./working", "overlay", "./merged",
        cwd=project,
    )  # fmt: skip
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    merged = project / "merged"
    entry = mount_entry(merged)
    assert entry is not None
    assert entry.fstype == "fuse.overunder"
    try:
        assert listing(merged) == ["lower1.txt", "upper1.txt"]
        assert listing(project / "working") == ["work"]
        tree = sh(f"tree {project}", project)
        if tree.returncode == 0:
            drawn = tree.stdout.replace("\xa0", " ")
            assert "├── merged\n│   ├── lower1.txt\n│   └── upper1.txt" in drawn
        # A line appended in lower (while mounted) is seen through merged, as with the kernel.
        assert sh(f'echo "{LOWER2.strip()}" >> lower/lower1.txt', project).returncode == 0
        assert sh("cat merged/lower1.txt", project).stdout == LOWER1 + LOWER2
        assert sh(f'echo "{MERGED3.strip()}" >> merged/lower1.txt', project).returncode == 0
        assert sh("cat merged/lower1.txt", project).stdout == LOWER1 + LOWER2 + MERGED3
        assert sh("cat lower/lower1.txt", project).stdout == LOWER1 + LOWER2
        assert (project / "upper" / "lower1.txt").read_text() == LOWER1 + LOWER2 + MERGED3
        assert sh("rm ./merged/lower1.txt", project).returncode == 0
        assert listing(merged) == ["upper1.txt"]
        assert listing(project / "lower") == ["lower1.txt"]
        assert listing(project / "upper") == ["lower1.txt", "upper1.txt"]
        st = os.lstat(project / "upper" / "lower1.txt")
        assert stat.S_ISCHR(st.st_mode)
        assert st.st_rdev == 0
        ls = sh("ls -lh ./upper", project).stdout.splitlines()
        whiteout = next(line for line in ls if line.endswith(" lower1.txt"))
        assert whiteout.startswith("c---------")
        assert " 0, 0 " in whiteout
        r = sh(f"rm -rf {project}", sandbox)
        assert r.returncode == 1
        assert f"rm: cannot remove '{merged}': Device or resource busy" in r.stderr
        holder = subprocess.Popen(["sleep", "60"], cwd=merged)
        try:
            r = cli("umount", merged, cwd=sandbox)
            assert r.returncode == 1
            assert f"umount: {merged}: target is busy" in r.stderr
            assert f"pid {holder.pid} (sleep: cwd)" in r.stderr
        finally:
            holder.kill()
            holder.wait()
        r = cli("umount", merged, cwd=sandbox)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
        assert mount_entry(merged) is None
    finally:
        ours_umount(merged)
    # Step 20: the project can be removed now.
    assert sh(f"rm -rf {project}", sandbox).returncode == 0
