"""Container start latency: ``overunder run --rm IMAGE true`` and ``run -d`` + ``rm -f``,
beside plain ``runc run`` of the same tree (the floor: no CLI, no overlay, no shim) and
``docker run`` when a Docker daemon answers (``--network none`` everywhere).

Usage (root)::

    .venv/bin/python bench/run_bench.py [-n 10] [--driver overlay|fuse] [--root DIR]

The image is a one-layer busybox rootfs imported into a fresh engine root (tmpfs by default,
/dev/shm, so that the ext4 noise of this VM does not drown the numbers); each measurement is
the wall time of one whole command, as a user sees it; medians and ranges over ``-n`` runs
after one warm-up.
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
import tarfile
import tempfile
import time
from pathlib import Path

OVERUNDER = [sys.executable, "-m", "overunder"]


def busybox_tree(root: Path) -> Path:
    for d in ("bin", "etc", "root", "tmp", "proc", "sys", "dev"):
        (root / d).mkdir(parents=True, exist_ok=True)
    busybox = shutil.which("busybox") or "/bin/busybox"
    shutil.copy2(busybox, root / "bin" / "busybox")
    applets = subprocess.run(
        [busybox, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for a in applets:
        if a != "busybox":
            os.symlink("busybox", root / "bin" / a)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    return root


def tar_of(root: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for p in sorted(root.rglob("*")):
            tf.add(p, arcname=str(p.relative_to(root)), recursive=False)
    return buf.getvalue()


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    took = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr}")
    return took


def summary(name: str, xs: list[float]) -> str:
    med = statistics.median(xs)
    return f"{name:<44} median {med:6.3f} s   range {min(xs):.3f}-{max(xs):.3f} s   n={len(xs)}"


def runc_floor(tree: Path, work: Path, n: int) -> list[float]:
    bundle = work / "bundle"
    bundle.mkdir()
    spec = subprocess.run(
        ["runc", "spec", "--bundle", str(bundle)], capture_output=True, text=True, check=False
    )
    if spec.returncode != 0:
        raise SystemExit(spec.stderr)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["true"]
    cfg["process"].pop("rlimits", None)
    cfg["root"] = {"path": str(tree), "readonly": True}
    (bundle / "config.json").write_text(json.dumps(cfg))
    state = work / "runc-state"
    out = []
    for i in range(n + 1):
        t0 = time.perf_counter()
        r = subprocess.run(
            ["runc", "--root", str(state), "run", "--bundle", str(bundle), f"bench-{i}"],
            capture_output=True,
            text=True,
            check=False,
        )
        if r.returncode != 0:
            raise SystemExit(f"runc run failed: {r.stderr}")
        if i:
            out.append(time.perf_counter() - t0)
    return out


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    r = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
    return r.returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=10, help="runs per measurement (default 10)")
    ap.add_argument("--driver", default="overlay", choices=["overlay", "fuse"])
    ap.add_argument("--root", help="parent dir for the temp engine root (default /dev/shm)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (mounts and runc)", file=sys.stderr)
        return 1
    parent = args.root or ("/dev/shm" if os.path.isdir("/dev/shm") else None)
    work = Path(tempfile.mkdtemp(prefix="overunder-run-bench-", dir=parent))
    try:
        tree = busybox_tree(work / "tree")
        (work / "rootfs.tar").write_bytes(tar_of(tree))
        env = {**os.environ, "OVERUNDER_ROOT": str(work / "engine")}
        env.pop("OVERUNDER_RUN_ROOT", None)
        # An installed overunder has its bytecode compiled; a dev shell with
        # PYTHONDONTWRITEBYTECODE=1 recompiles ~90 modules per command (~0.3 s for the CLI and
        # again for the shim). Cache bytecode in the bench's temp dir, not the source tree.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
        r = subprocess.run(
            [*OVERUNDER, "import", str(work / "rootfs.tar"), "bench/busybox:1"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if r.returncode != 0:
            print(f"import failed: {r.stderr}", file=sys.stderr)
            return 1
        img = "bench/busybox:1"
        common = ["--network", "none", "--storage-driver", args.driver]
        print(f"# container start latency, {args.n} runs each after a warm-up; root {work}")
        print(f"# driver {args.driver}; runc {subprocess.getoutput('runc --version').split()[2]}")
        results: dict[str, list[float]] = {}

        rm_runs = []
        for i in range(args.n + 1):
            t = timed([*OVERUNDER, "run", "--rm", *common, img, "true"], env)
            if i:
                rm_runs.append(t)
        results["overunder run --rm IMAGE true"] = rm_runs

        d_runs, rmf_runs, both = [], [], []
        for i in range(args.n + 1):
            t0 = time.perf_counter()
            out = subprocess.run(
                [*OVERUNDER, "run", "-d", *common, img, "sleep", "1000"],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            t1 = time.perf_counter()
            timed([*OVERUNDER, "rm", "-f", out], env)
            t2 = time.perf_counter()
            if i:
                d_runs.append(t1 - t0)
                rmf_runs.append(t2 - t1)
                both.append(t2 - t0)
        results["overunder run -d IMAGE sleep"] = d_runs
        results["overunder rm -f (running)"] = rmf_runs
        results["overunder run -d + rm -f"] = both
        results["runc run (same tree, plain dir): the floor"] = runc_floor(tree, work, args.n)

        if docker_available():
            dk = []
            subprocess.run(
                ["docker", "import", str(work / "rootfs.tar"), "bench/busybox:1"],
                capture_output=True,
                check=True,
            )
            for i in range(args.n + 1):
                t = timed(
                    ["docker", "run", "--rm", "--network", "none", img, "true"], dict(os.environ)
                )
                if i:
                    dk.append(t)
            results["docker run --rm IMAGE true"] = dk
            dk_d, dk_rmf, dk_both = [], [], []
            for i in range(args.n + 1):
                t0 = time.perf_counter()
                cid = subprocess.run(
                    ["docker", "run", "-d", "--network", "none", img, "sleep", "1000"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.strip()
                t1 = time.perf_counter()
                timed(["docker", "rm", "-f", cid], dict(os.environ))
                t2 = time.perf_counter()
                if i:
                    dk_d.append(t1 - t0)
                    dk_rmf.append(t2 - t1)
                    dk_both.append(t2 - t0)
            results["docker run -d IMAGE sleep"] = dk_d
            results["docker rm -f (running)"] = dk_rmf
            results["docker run -d + rm -f"] = dk_both
            # The image was made by this run: leave the daemon as it was found.
            subprocess.run(["docker", "rmi", img], capture_output=True, check=False)
        for name, xs in results.items():
            print(summary(name, xs))
        if "docker run --rm IMAGE true" not in results:
            print(
                "docker: no Docker daemon reachable here (docker info failed), so no side-by-side "
                "run; the reference figure for this VM class is ~0.5-1 s per 'docker run --rm'."
            )
        else:
            ratio = statistics.median(results["docker run --rm IMAGE true"]) / statistics.median(
                rm_runs
            )
            print(f"overunder is {ratio:.2f}x docker's speed for run --rm")
            for what in ("run -d IMAGE sleep", "rm -f (running)", "run -d + rm -f"):
                r2 = statistics.median(results[f"docker {what}"]) / statistics.median(
                    results[f"overunder {what}"]
                )
                print(f"overunder is {r2:.2f}x docker's speed for {what}")
        floor = statistics.median(results["runc run (same tree, plain dir): the floor"])
        print(
            f"overhead over the runc floor: {statistics.median(rm_runs) - floor:.3f} s "
            "(Python start of the CLI, overlay mount, init layer, shim, records)"
        )
    finally:
        env2 = {**os.environ, "OVERUNDER_ROOT": str(work / "engine")}
        ids = subprocess.run(
            [*OVERUNDER, "ps", "-aq"], env=env2, capture_output=True, text=True, check=False
        ).stdout.split()
        if ids:
            subprocess.run(
                [*OVERUNDER, "rm", "-f", *ids], env=env2, capture_output=True, check=False
            )
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
