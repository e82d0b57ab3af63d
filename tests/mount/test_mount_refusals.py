"""Each bad overlay mount is refused before anything is mounted: the message names the option
and the path, the exit code is 1, and /proc/self/mountinfo shows nothing new."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mount_helpers import cli, mounts_under, overlay_sandbox

from conftest import require_binary


@pytest.fixture
def d(tmp_path: Path) -> Iterator[Path]:
    with overlay_sandbox(tmp_path) as base:
        for name in ("lower", "lower2", "upper", "work", "merged"):
            (base / name).mkdir()
        (base / "lower" / "f").write_text("lower\n")
        yield base


def refused(d: Path, options: str, *, target: str = "./merged") -> str:
    """Mount with ``options`` in ``d``; assert it failed cleanly; return stderr."""
    before = mounts_under(d)
    r = cli("mount", "-t", "overlay", "-o", options, "overlay", target, cwd=d)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert lines[0].startswith("Error: "), r.stderr
    assert lines[1].startswith("Hint: "), r.stderr
    assert "Traceback" not in r.stderr
    assert mounts_under(d) == before, "a refused mount left something mounted"
    return r.stderr


def test_missing_lowerdir(d: Path) -> None:
    err = refused(d, "lowerdir=./nope,upperdir=./upper,workdir=./work")
    assert f"Error: lowerdir {d}/nope does not exist" in err


def test_missing_upperdir(d: Path) -> None:
    err = refused(d, "lowerdir=./lower,upperdir=./nope,workdir=./work")
    assert f"Error: upperdir {d}/nope does not exist" in err


def test_missing_workdir(d: Path) -> None:
    err = refused(d, "lowerdir=./lower,upperdir=./upper,workdir=./nope")
    assert f"Error: workdir {d}/nope does not exist" in err


def test_missing_mount_point(d: Path) -> None:
    err = refused(d, "lowerdir=./lower,upperdir=./upper,workdir=./work", target="./nope")
    assert f"Error: mount point {d}/nope does not exist" in err


def test_lowerdir_is_a_file(d: Path) -> None:
    err = refused(d, "lowerdir=./lower/f,upperdir=./upper,workdir=./work")
    assert f"lowerdir {d}/lower/f is not a directory" in err


def test_no_lowerdir(d: Path) -> None:
    err = refused(d, "upperdir=./upper,workdir=./work")
    assert "overlay needs lowerdir=" in err


def test_upperdir_without_workdir(d: Path) -> None:
    err = refused(d, "lowerdir=./lower,upperdir=./upper")
    assert f"Error: upperdir={d}/upper needs workdir=" in err


def test_workdir_without_upperdir(d: Path) -> None:
    err = refused(d, "lowerdir=./lower:./lower2,workdir=./work")
    assert f"Error: workdir={d}/work is given without upperdir=" in err


def test_read_only_needs_two_lowerdirs(d: Path) -> None:
    err = refused(d, "lowerdir=./lower")
    assert "a read-only overlay (no upperdir) needs at least 2 lowerdirs" in err


def test_workdir_inside_upperdir(d: Path) -> None:
    (d / "upper" / "w").mkdir()
    err = refused(d, "lowerdir=./lower,upperdir=./upper,workdir=./upper/w")
    assert "must be separate subtrees (the workdir is inside the upperdir)" in err
    assert f"workdir {d}/upper/w and upperdir {d}/upper" in err


def test_upperdir_inside_workdir(d: Path) -> None:
    (d / "work" / "u").mkdir()
    err = refused(d, "lowerdir=./lower,upperdir=./work/u,workdir=./work")
    assert "must be separate subtrees (the upperdir is inside the workdir)" in err


def test_same_dir_for_upper_and_work(d: Path) -> None:
    err = refused(d, "lowerdir=./lower,upperdir=./upper,workdir=./upper")
    assert "must be separate subtrees" in err


def test_lowerdir_inside_upperdir(d: Path) -> None:
    (d / "upper" / "l").mkdir()
    err = refused(d, "lowerdir=./upper/l,upperdir=./upper,workdir=./work")
    assert f"lowerdir {d}/upper/l and upperdir {d}/upper overlap" in err


def test_workdir_on_another_filesystem(d: Path) -> None:
    other = d / "other"
    other.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(other)], check=True)
    (other / "work").mkdir()
    err = refused(d, "lowerdir=./lower,upperdir=./upper,workdir=./other/work")
    assert f"workdir {d}/other/work and upperdir {d}/upper must reside under the same mount" in err


def test_workdir_on_another_mount_of_the_same_filesystem(d: Path) -> None:
    # A bind mount has the same st_dev but is another mount: the kernel refuses it too.
    (d / "src").mkdir()
    (d / "src" / "work").mkdir()
    (d / "bound").mkdir()
    r = cli("mount", "--bind", "./src", "./bound", cwd=d)
    assert r.returncode == 0, r.stderr
    r = cli(
        "mount",
        "-t",
        "overlay",
        "-o",
        "lowerdir=./lower,upperdir=./upper,workdir=./bound/work",
        "overlay",
        "./merged",
        cwd=d,
    )
    assert r.returncode == 1
    assert "must reside under the same mount" in r.stderr
    assert mounts_under(d) == [str(d / "bound")]


def test_non_empty_workdir(d: Path) -> None:
    (d / "work" / "notes.txt").write_text("mine\n")
    err = refused(d, "lowerdir=./lower,upperdir=./upper,workdir=./work")
    assert f"Error: workdir {d}/work is not empty (holds notes.txt)" in err


def test_workdir_left_by_a_previous_mount_is_reused(d: Path) -> None:
    opts = "lowerdir=./lower,upperdir=./upper,workdir=./work"
    for _ in range(2):
        r = cli("mount", "-t", "overlay", "-o", opts, "overlay", "./merged", cwd=d)
        assert r.returncode == 0, r.stderr
        assert (d / "merged" / "f").read_text() == "lower\n"
        assert cli("umount", "./merged", cwd=d).returncode == 0
    assert sorted(p.name for p in (d / "work").iterdir()) == ["work"]


def test_volatile_leftover_is_refused(d: Path) -> None:
    r = cli(
        "mount",
        "-t",
        "overlay",
        "-o",
        "lowerdir=./lower,upperdir=./upper,workdir=./work,volatile",
        "overlay",
        "./merged",
        cwd=d,
    )
    assert r.returncode == 0, r.stderr
    assert cli("umount", "./merged", cwd=d).returncode == 0
    assert (d / "work" / "work" / "incompat" / "volatile").is_dir()
    err = refused(d, "lowerdir=./lower,upperdir=./upper,workdir=./work")
    assert "holds work/incompat/volatile, left by a 'volatile' mount" in err
    assert f"remove {d}/work/work/incompat" in err


def test_upper_filesystem_without_xattrs(d: Path) -> None:
    # ramfs has no extended attributes at all.
    fs = d / "ramfs"
    fs.mkdir()
    subprocess.run(["mount", "-t", "ramfs", "ramfs", str(fs)], check=True)
    (fs / "upper").mkdir()
    (fs / "work").mkdir()
    err = refused(d, "lowerdir=./lower,upperdir=./ramfs/upper,workdir=./ramfs/work")
    assert f"upperdir {d}/ramfs/upper: its filesystem does not support trusted.* extended" in err
    assert list((fs / "work").iterdir()) == [], "the probe left a file behind"


def test_kernel_refusal_reason_is_shown(d: Path) -> None:
    # An option overunder does not check itself: the kernel refuses, and we relay its reason.
    err = refused(d, "lowerdir=./lower,upperdir=./upper,workdir=./work,redirect_dir=bogus")
    assert "the kernel refused to mount overlay on" in err
    assert "redirect_dir" in err
    assert "(Invalid argument)" in err


def test_missing_type_and_container_form() -> None:
    r = cli("mount", "overlay", "./merged")
    assert r.returncode == 1
    assert "missing -t TYPE" in r.stderr
    # One argument and no -t is the container form (`overunder mount CONTAINER`).
    r = cli("mount", "mycontainer")
    assert r.returncode == 1
    assert "No such container: mycontainer" in r.stderr


def test_not_root(d: Path) -> None:
    setpriv = require_binary("setpriv")
    before = mounts_under(d)
    r = subprocess.run(
        [
            setpriv,
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "overunder",
            "mount",
            "-t",
            "overlay",
            "-o",
            "lowerdir=./lower,upperdir=./upper,workdir=./work",
            "overlay",
            "./merged",
        ],
        cwd=d,
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 1
    # pytest's tmp root is 0700, so the unprivileged user is stopped at the path walk; with
    # searchable dirs it is mount(2)'s EPERM: "... was refused: Operation not permitted
    # (needs root)".
    assert f"Error: mount point {d}/merged: permission denied" in r.stderr
    assert mounts_under(d) == before
