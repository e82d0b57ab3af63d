"""``diff CONTAINER`` on a container whose upper dir holds 100,000 entries.

    .venv/bin/python bench/diff_bench.py                   # 100,000 entries, n=5
    .venv/bin/python bench/diff_bench.py --entries 20000 --repeat 3

Builds, in a private temp dir removed at the end, an engine root with a busybox image (D's
``import`` of ``/bin/busybox`` with its applet links) and one created (never started)
container, then fills the container's upper dir *directly* (no overlay in the way): new dirs of
1,000 files each, a copied-up ``/etc`` with changed files, and char 0/0 whiteouts for every
applet in ``/bin`` (about 400 deletions of lower files).

Measured, median (min-max) of ``--repeat`` runs:

* ``diff`` in-process: :func:`overunder.engine.container_diff.container_changes` (reads the
  upper dir and the lowers, applies Docker's rules) plus rendering the lines;
* ``overunder diff`` end to end (a new Python process: interpreter start-up included);
* the naive double walk as a reference: mount the container, read the whole merged tree and
  the flattened lowers, and :func:`overunder.semantics.diff_trees` them (what a differ without
  an upper dir must do; Docker's naive differ does this).

``docker diff`` over the same changes is measured only when a Docker daemon answers
(``docker version``; it follows ``DOCKER_HOST``) and keeps its overlay2 dirs on this host: the
same tar is ``docker import``-ed, a created container's UpperDir is filled the same way, and
the sorted ``docker diff`` lines are compared with ours; otherwise the script says why not.
Needs root (whiteouts, trusted xattrs, mounting). Target: a few seconds at most.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "engine"))
sys.path.insert(0, str(ROOT / "tests" / "runtime"))

from overunder.engine.container_diff import container_changes  # noqa: E402
from overunder.engine.container_mount import (  # noqa: E402
    container_layers,
    mount_container,
    umount_container,
)
from overunder.engine.containers import find_container  # noqa: E402
from overunder.engine.paths import EnginePaths  # noqa: E402
from overunder.layerfs.reader import read_layer  # noqa: E402
from overunder.semantics import diff_trees, flatten  # noqa: E402


def timed(fn: Callable[[], object], repeat: int) -> tuple[list[float], object]:
    times = []
    result: object = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


def fmt(times: list[float]) -> str:
    return f"{statistics.median(times):7.3f} s ({min(times):.3f}-{max(times):.3f})"


def populate(upper: Path, lower_bin: Path, entries: int) -> int:
    """Fill ``upper`` with about ``entries`` entries; returns how many were made."""
    made = 0
    per_dir = 1000
    data = upper / "bench"
    data.mkdir()
    made += 1
    d = 0
    while made < entries - 1000:
        sub = data / f"d{d:04d}"
        sub.mkdir()
        made += 1
        for i in range(min(per_dir, entries - 1000 - made)):
            (sub / f"f{i:04d}.txt").write_bytes(b"x" * (i % 64))
            made += 1
        d += 1
    etc = upper / "etc"
    etc.mkdir(exist_ok=True)
    for i in range(100):
        (etc / f"conf{i}.txt").write_text(f"{i}\n")
        made += 1
    (upper / "bin").mkdir(exist_ok=True)
    for name in sorted(os.listdir(lower_bin)):
        if made >= entries:
            break
        os.mknod(upper / "bin" / name, 0o020000, os.makedev(0, 0))
        made += 1
    return made


def docker_daemon() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        r = subprocess.run(
            ["docker", "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0 and bool(r.stdout.strip())


def _docker(*args: str) -> str:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def docker_side(
    work: Path, *, tar_bytes: bytes, entries: int, repeat: int, t_cli: list[float], ours: list[str]
) -> None:
    """The same image (``docker import`` of the same tar) and the same upper-dir contents,
    written straight into the overlay2 UpperDir of a created container; then ``docker diff``
    (a new client process each time, like our CLI row) and a check that both list the same
    changes. Needs the daemon on this host (its UpperDir must be a local path)."""
    (work / "docker-rootfs.tar").write_bytes(tar_bytes)
    img = "overunder-bench/diff:1"
    _docker("import", str(work / "docker-rootfs.tar"), img)
    cid = ""
    try:
        cid = _docker("create", "--network", "none", img, "sleep", "100000")
        gd = json.loads(_docker("inspect", "--format", "{{json .GraphDriver}}", cid))
        upper = Path(gd.get("Data", {}).get("UpperDir", ""))
        if gd.get("Name") != "overlay2" or not upper.is_dir():
            print(f"docker diff: driver {gd.get('Name')} / UpperDir not local; not measured")
            return
        lower = Path(gd["Data"]["LowerDir"].split(":")[-1])  # bottom = the imported layer
        populate(upper, lower / "bin", entries)

        def run() -> str:
            return _docker("diff", cid)

        t_docker, out = timed(run, max(1, min(repeat, 3)))
        theirs = sorted(str(out).splitlines())
        print(f"{'docker diff (CLI + daemon)':36} {fmt(t_docker)}  [{len(theirs)} lines]")
        ratio = statistics.median(t_docker) / statistics.median(t_cli)
        print(f"overunder diff CLI is {ratio:.2f}x docker diff's speed")
        if theirs == ours:
            print("sorted output: identical to docker diff")
        else:
            only_ours = sorted(set(ours) - set(theirs))
            only_docker = sorted(set(theirs) - set(ours))
            print(
                f"sorted output DIFFERS: {len(only_ours)} only ours, {len(only_docker)} only docker"
            )
            for line in only_ours[:10]:
                print(f"  ours only:   {line}")
            for line in only_docker[:10]:
                print(f"  docker only: {line}")
    finally:
        if cid:
            subprocess.run(["docker", "rm", "-f", cid], capture_output=True, check=False)
        subprocess.run(["docker", "rmi", img], capture_output=True, check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (whiteouts, trusted xattrs, mounts)")
        return 1
    import h_layer_helpers as h

    from overunder.engine.image_import import import_

    work = Path(tempfile.mkdtemp(prefix="diff-bench-"))
    root = work / "engine"
    paths = EnginePaths.resolve(str(root), None)
    try:
        tar_bytes = h.busybox_tar(work)
        import_(paths, io.BytesIO(tar_bytes), reference="bench:1")
        h.create(paths, "bench:1", "bench")
        rec = find_container(paths, "bench")
        layers = container_layers(paths, rec)
        t0 = time.perf_counter()
        made = populate(layers.upper, layers.lowers[-1] / "bin", args.entries)
        print(f"upper dir: {made} entries written in {time.perf_counter() - t0:.1f} s")

        def ours() -> int:
            return len("\n".join(str(c) for c in container_changes(paths, "bench")))

        t_ours, _ = timed(ours, args.repeat)
        lines = container_changes(paths, "bench")
        print(f"diff lines: {len(lines)}")
        env = {**os.environ, "OVERUNDER_ROOT": str(root), "PYTHONPATH": str(ROOT / "src")}

        def cli() -> int:
            r = subprocess.run(
                [sys.executable, "-m", "overunder", "diff", "bench"],
                capture_output=True,
                env=env,
                check=True,
            )
            return len(r.stdout)

        t_cli, n_bytes = timed(cli, max(1, min(args.repeat, 3)))
        merged = mount_container(paths, "bench")
        try:

            def naive() -> int:
                old = flatten([read_layer(d, with_data=False) for d in layers.lowers])
                new = read_layer(merged, with_data=False)
                return len(diff_trees(old, new))

            t_naive, n_naive = timed(naive, max(1, min(args.repeat, 3)))
        finally:
            umount_container(paths, "bench")
        assert n_naive == len(lines), (n_naive, len(lines))
        print(f"{'overunder diff (in-process)':36} {fmt(t_ours)}")
        print(f"{'overunder diff (CLI, new process)':36} {fmt(t_cli)}  [{n_bytes} bytes out]")
        print(f"{'naive double walk (mounted)':36} {fmt(t_naive)}")
        ratio = statistics.median(t_naive) / statistics.median(t_ours)
        print(f"upper-dir diff vs naive double walk: {ratio:.1f}x faster")
        if docker_daemon():
            ours_sorted = sorted(str(c) for c in lines)
            docker_side(
                work,
                tar_bytes=tar_bytes,
                entries=args.entries,
                repeat=args.repeat,
                t_cli=t_cli,
                ours=ours_sorted,
            )
        else:
            print("docker diff: no Docker daemon reachable on this host; not measured")
    finally:
        h.cleanup_engine(root)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
