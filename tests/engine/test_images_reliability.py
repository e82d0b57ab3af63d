"""Concurrent loads serialize; a load killed at any moment leaves nothing that claims to be
complete, and the next command cleans up."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from image_fixtures import base_layer, data_layer, layer_tar, make_image, write_docker_archive
from overunder.engine.image_load import CRASH_ENV
from overunder.engine.images import TRACE_ENV, layer_dirs, load_config, stores
from overunder.engine.paths import EnginePaths

OVERUNDER = [sys.executable, "-m", "overunder"]


def _env(root: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["OVERUNDER_ROOT"] = str(root)
    env.pop(CRASH_ENV, None)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four archives; all share the base layer, pairs share the second."""
    d = tmp_path_factory.mktemp("arch")
    rnd = random.Random(5)
    big = layer_tar(
        {"big/": None, "big/r.bin": rnd.randbytes(8 << 20)}
        | {f"big/f{i:04d}": rnd.randbytes(200) for i in range(600)}
    )
    base = base_layer()
    mid = data_layer()
    out = []
    for i in range(4):
        layers = [base, mid if i % 2 else big, layer_tar({f"top{i}": str(i).encode()})]
        img = make_image(layers, [f"demo/c{i}:1"])
        p = d / f"c{i}.tar"
        write_docker_archive(p, [img])
        out.append(p)
    return out


def test_parallel_loads_share_layers_once(tmp_path: Path, archives: list[Path]) -> None:
    root = tmp_path / "root"
    trace = tmp_path / "trace"
    procs = [
        subprocess.Popen(
            [*OVERUNDER, "load", "-q", "-i", str(a)],
            env=_env(root, **{TRACE_ENV: str(trace)}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for a in archives
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    unpacks = trace.read_text().split()
    chains = [w for w in unpacks if w.startswith("sha256:")]
    assert len(chains) == len(set(chains))  # each layer unpacked once
    s = stores(EnginePaths(root=root, run_root=tmp_path / "run"))
    recs = s.images.list()
    assert len(recs) == 4
    for rec in recs:
        for d in layer_dirs(s, load_config(s, rec.id)):
            assert d.is_dir()
    # base (1) + big/mid chains (2) + four tops = 7 layer dirs
    assert len(list((root / "snapshots").glob("*/fs"))) == 7
    assert len(chains) == 7


def _assert_clean_state(root: Path, run_root: Path) -> None:
    """No image claims to be complete unless all its layers are there; after a writer ran,
    no ingest or half-made layer remains."""
    s = stores(EnginePaths(root=root, run_root=run_root))
    for rec in s.images.list():
        for d in layer_dirs(s, load_config(s, rec.id)):
            assert d.is_dir()


@pytest.mark.slow
def test_load_killed_at_many_points(tmp_path: Path, archives: list[Path]) -> None:
    archive = archives[0]
    points = ["ingest:1", "ingested", "layers:3"]
    delays_ms = [0, 100, 250, 450, 700]
    runs: list[tuple[str, str | int]] = [("point", p) for p in points] + [
        ("delay", d) for d in delays_ms
    ]
    for i, (kind, what) in enumerate(runs):
        root = tmp_path / f"r{i}"
        run_root = tmp_path / f"run{i}"
        env = _env(root)
        if kind == "point":
            env[CRASH_ENV] = str(what)
        p = subprocess.Popen(
            [*OVERUNDER, "load", "-q", "-i", str(archive)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if kind == "delay":
            time.sleep(int(what) / 1000)
            p.send_signal(signal.SIGKILL)
        p.wait(timeout=120)
        killed = p.returncode == -signal.SIGKILL
        if kind == "point":
            assert killed, f"crash point {what} was not reached"
        _assert_clean_state(root, run_root)
        images = subprocess.run(
            [*OVERUNDER, "images", "-q"],
            env=env | {CRASH_ENV: ""},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        if killed and kind == "point":
            assert images == []
        # The next writer cleans the leftovers and completes the load.
        ok = subprocess.run(
            [*OVERUNDER, "load", "-q", "-i", str(archive)],
            env=_env(root),
            check=False,
            capture_output=True,
            text=True,
        )
        assert ok.returncode == 0, ok.stderr
        assert list((root / "content" / "ingest").glob("*")) == []
        s = stores(EnginePaths(root=root, run_root=run_root))
        snaps = s.snapshots.snapshots()
        assert len(snaps) == 3
        known = {info.id for info in snaps.values()}
        on_disk = {p.name for p in (root / "snapshots").iterdir() if len(p.name) == 10}
        assert on_disk == known
        (rec,) = s.images.list()
        assert [d.is_dir() for d in layer_dirs(s, load_config(s, rec.id))] == [True] * 3
