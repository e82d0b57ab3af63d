"""``overunder overlay tree``: the merged tree with each entry's layer, whiteouts and opaque
dirs made by the kernel, and what they hide; as text and JSON."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from mount_helpers import cli, overlay_sandbox

from conftest import require, require_fuse
from overunder.mount import mount_entry


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Path]:
    """l1 over l2, an upper changed through the kernel overlay: a copied-up file, a whiteout,
    an opaque dir (rm -rf + mkdir of a lower dir)."""
    with overlay_sandbox(tmp_path) as d:
        for p in ("l1/etc", "l2/etc", "l2/d", "l2/keep", "u", "w", "m"):
            (d / p).mkdir(parents=True)
        (d / "l1/etc/hosts").write_text("h\n")
        (d / "l2/etc/localtime").write_text("UTC\n")
        (d / "l2/d/x").write_text("x\n")
        (d / "l2/d/y").write_text("y\n")
        (d / "l2/a.txt").write_text("old\n")
        (d / "l2/keep/k").write_text("k\n")
        (d / "l2/link").symlink_to("a.txt")
        r = cli(
            "mount",
            "-t",
            "overlay",
            "-o",
            "lowerdir=./l1:./l2,upperdir=./u,workdir=./w",
            "overlay",
            "./m",
            cwd=d,
        )
        assert r.returncode == 0, r.stderr
        m = d / "m"
        with open(m / "a.txt", "a") as f:
            f.write("new\n")
        (m / "etc" / "localtime").unlink()
        shutil.rmtree(m / "d")
        (m / "d").mkdir()
        (m / "d" / "n").write_text("n\n")
        yield d


def test_tree_text(stack: Path) -> None:
    r = cli("overlay", "tree", "./m", cwd=stack)
    assert r.returncode == 0, r.stderr
    lines = [line.rstrip() for line in r.stdout.splitlines()]
    assert lines[:6] == [
        "Layers (top first):",
        f"  upper    {stack}/u",
        f"  lower 1  {stack}/l1",
        f"  lower 2  {stack}/l2",
        f"  work     {stack}/w  (scratch dir, not a layer)",
        f"  merged   {stack}/m  (overlay)",
    ]
    body = [" ".join(line.split()) for line in lines[7:]]  # columns collapsed
    assert body == [
        ". merged: upper + lower 1 + lower 2",
        "├── a.txt upper; hides /a.txt (lower 2)",
        "├── d/ upper; opaque dir in upper, hides /d/x, /d/y (lower 2)",
        "│ └── n upper",
        "├── etc/ merged: upper + lower 1 + lower 2",
        "│ ├── hosts lower 1",
        "│ └── localtime (whiteout) whiteout (char 0/0) in upper, hides /etc/localtime (lower 2)",
        "├── keep/ lower 2",
        "│ └── k lower 2",
        "└── link -> a.txt lower 2",
    ]


def test_tree_json_mounted_and_from_dirs_agree(stack: Path) -> None:
    r = cli("overlay", "tree", "--format", "json", "./m", cwd=stack)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["Merged"] == f"{stack}/m"
    assert doc["Type"] == "overlay"
    assert [(x["Name"], x["Dir"]) for x in doc["Layers"]] == [
        ("upper", f"{stack}/u"),
        ("lower 1", f"{stack}/l1"),
        ("lower 2", f"{stack}/l2"),
    ]
    entries = {e["Path"]: e for e in doc["Entries"]}
    assert sorted(entries) == [
        "/",
        "/a.txt",
        "/d",
        "/d/n",
        "/etc",
        "/etc/hosts",
        "/etc/localtime",
        "/keep",
        "/keep/k",
        "/link",
    ]
    assert entries["/etc/localtime"]["Kind"] == "whiteout"
    assert entries["/etc/localtime"]["Whiteouts"] == [
        {
            "Layer": "upper",
            "Form": "char 0/0",
            "Hides": [{"Path": "/etc/localtime", "Layer": "lower 2", "Dir": f"{stack}/l2"}],
        }
    ]
    assert entries["/d"]["Opaque"]["Layer"] == "upper"
    assert [h["Path"] for h in entries["/d"]["Opaque"]["Hides"]] == ["/d/x", "/d/y"]
    assert entries["/etc"]["MergedFrom"] == ["upper", "lower 1", "lower 2"]
    assert entries["/etc/hosts"]["Layer"] == "lower 1"
    assert entries["/a.txt"]["Layer"] == "upper"
    assert entries["/link"]["Target"] == "a.txt"
    # The merged names are exactly what the kernel shows.
    for path, e in entries.items():
        if e["Kind"] == "dir":
            kids = sorted(
                p.rsplit("/", 1)[1]
                for p, c in entries.items()
                if p != "/" and (p.rsplit("/", 1)[0] or "/") == path and c["Kind"] != "whiteout"
            )
            assert kids == sorted(os.listdir(stack / "m" / path.lstrip("/"))), path

    r2 = cli(
        "overlay",
        "tree",
        "--format",
        "json",
        "--lowerdir",
        "./l1:./l2",
        "--upperdir",
        "./u",
        cwd=stack,
    )
    assert r2.returncode == 0, r2.stderr
    assert json.loads(r2.stdout)["Entries"] == doc["Entries"]


def test_tree_reads_oci_whiteout_files_in_lower_dirs(tmp_path: Path) -> None:
    (tmp_path / "top").mkdir()
    (tmp_path / "bottom").mkdir()
    (tmp_path / "bottom" / "gone").write_text("g\n")
    (tmp_path / "top" / ".wh.gone").write_text("")
    r = cli("overlay", "tree", "--format", "json", "--lowerdir", "top:bottom", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    entries = {e["Path"]: e for e in json.loads(r.stdout)["Entries"]}
    assert entries["/gone"]["Whiteouts"][0]["Form"] == ".wh. file"
    assert entries["/gone"]["Whiteouts"][0]["Hides"][0]["Layer"] == "lower 2"


def test_tree_errors(tmp_path: Path) -> None:
    r = cli("overlay", "tree", tmp_path)
    assert r.returncode == 1
    assert f"Error: nothing is mounted on {tmp_path}" in r.stderr
    r = cli("overlay", "tree")
    assert r.returncode == 1
    assert "needs MERGED or --lowerdir" in r.stderr
    r = cli("overlay", "tree", "--lowerdir", tmp_path / "nope")
    assert r.returncode == 1
    assert "does not exist" in r.stderr


def test_fuse_mount_dispatch_and_tree(tmp_path: Path) -> None:
    """-t fuse.overunder goes to engineer C2's driver; umount and overlay tree find it."""
    require(importlib.util.find_spec("overunder.mount.fuse") is not None, "overunder.mount.fuse")
    require_fuse()
    with overlay_sandbox(tmp_path) as d:
        for p in ("l1", "l2", "u", "w", "m"):
            (d / p).mkdir()
        (d / "l1" / "top").write_text("1\n")
        (d / "l2" / "gone").write_text("2\n")
        r = cli(
            "mount",
            "-t",
            "fuse.overunder",
            "-o",
            "lowerdir=./l1:./l2,upperdir=./u,workdir=./w",
            "overlay",
            "./m",
            cwd=d,
        )
        assert (r.returncode, r.stdout) == (0, ""), r.stderr
        entry = mount_entry(d / "m")
        assert entry is not None
        assert entry.fstype == "fuse.overunder"
        (d / "m" / "gone").unlink()
        r = cli("overlay", "tree", "--format", "json", "./m", cwd=d)
        assert r.returncode == 0, r.stderr
        doc = json.loads(r.stdout)
        assert doc["Type"] == "fuse.overunder"
        entries = {e["Path"]: e for e in doc["Entries"]}
        assert entries["/top"]["Layer"] == "lower 1"
        assert entries["/gone"]["Whiteouts"][0]["Hides"][0]["Layer"] == "lower 2"
        r = cli("umount", "./m", cwd=d)
        assert r.returncode == 0, r.stderr
        assert mount_entry(d / "m") is None
