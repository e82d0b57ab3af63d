"""Unpack the big test image's layers: overunder's apply_layer vs ``umoci raw unpack`` vs
``tar -x``, side by side in one run (issue 4's speed target: faster than umoci, peak memory
under 100 MB).

    .venv/bin/python bench/unpack_bench.py [--runs 5] [--dir /dev/shm]

The image is performance-anchors.md A1's ``big:1`` as ``bench/pull_bench.py`` rebuilds it
(its recipe; blobs cached under ``<dir>/overunder-unpack-bench-cache``): L1 busybox, L2 one
200 MiB random file, L3 20,000 small text files in 100 dirs, L4 whiteouts + an opaque dir + a
symlink + a hard link; all gzip. The blobs sit in the page cache (they are read once before timing);
every tool unpacks into a fresh dir under ``<dir>`` (tmpfs by default: the anchors compare
tools there, since the VM's ext4 makes file creation slow and erratic).

Scenarios: each of L2, L3, L4 alone, and the whole image. Tools:

* ``overunder`` -- a fresh process running ``apply_layer`` for each layer into its own layer
  dir (the snapshotter's form: whiteouts become char 0/0 and opaque xattrs), diff IDs checked;
* ``overunder flat`` -- whole image only: every layer applied onto one dir (``flatten=True``),
  the same result umoci produces;
* ``umoci raw unpack`` -- an OCI layout holding the same blobs (one ref per scenario);
* ``tar -xzf`` -- GNU tar, one invocation per layer into one dir (no whiteout handling).

``(in-process)`` rows are the same overunder runs timed inside the worker, without the
interpreter's start-up and imports (what an engine process that is already running pays);
``overunder 2 threads`` unpacks the layers two at a time.

Each scenario x tool runs ``--runs`` times, tools interleaved within a round; the table shows
the median (min-max) wall time of the whole process, the peak RSS, and the ratio to umoci.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pull_bench import Built, Run, build_image, timed

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass
class Layer:
    blob: Path
    digest: str
    diff_id: str
    size: int


def image_layers(built: Built) -> tuple[list[Layer], bytes]:
    manifest = json.loads(built.manifest.read_bytes())
    config_blob = built.blobs[manifest["config"]["digest"]].read_bytes()
    diff_ids = json.loads(config_blob)["rootfs"]["diff_ids"]
    layers = [
        Layer(built.blobs[d["digest"]], d["digest"], diff, d["size"])
        for d, diff in zip(manifest["layers"], diff_ids, strict=True)
    ]
    return layers, config_blob


def _sha256(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


def make_oci_layout(layout: Path, scenarios: dict[str, list[Layer]], config: bytes) -> None:
    """An OCI image layout with one ref per scenario, blobs hard-linked from the cache."""
    if layout.exists():
        shutil.rmtree(layout)
    subprocess.run(["umoci", "init", "--layout", str(layout)], check=True)
    blobs = layout / "blobs" / "sha256"
    base_config = json.loads(config)
    index = json.loads((layout / "index.json").read_text())
    index["manifests"] = []

    def put(data: bytes) -> str:
        digest = _sha256(data)
        (blobs / digest[7:]).write_bytes(data)
        return digest

    for ref, layers in scenarios.items():
        for layer in layers:
            target = blobs / layer.digest[7:]
            if not target.exists():
                try:
                    target.hardlink_to(layer.blob)
                except OSError:
                    shutil.copyfile(layer.blob, target)
        cfg = dict(base_config)
        cfg["rootfs"] = {"type": "layers", "diff_ids": [la.diff_id for la in layers]}
        cfg["history"] = [{"created_by": f"layer {i}"} for i in range(len(layers))]
        cfg_bytes = json.dumps(cfg).encode()
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {
                    "mediaType": OCI_CONFIG,
                    "digest": put(cfg_bytes),
                    "size": len(cfg_bytes),
                },
                "layers": [
                    {"mediaType": OCI_LAYER_GZIP, "digest": la.digest, "size": la.size}
                    for la in layers
                ],
            }
        ).encode()
        index["manifests"].append(
            {
                "mediaType": OCI_MANIFEST,
                "digest": put(manifest),
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": ref},
            }
        )
    (layout / "index.json").write_text(json.dumps(index))


# -- the worker: what the timed overunder process runs ----------------------------------------


def worker(mode: str, out: Path, specs: list[str]) -> None:
    """Apply the layers ("layers": each into its own dir; "parallel": the same, two at a
    time on threads; "flat": all onto one dir) and leave the in-process seconds in
    ``<out>.seconds`` (the run's time without interpreter start-up and imports)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from overunder.layerfs.tar_apply import apply_layer, verify_diff_id

    t0 = time.perf_counter()
    out.mkdir(parents=True)

    def one(i: int, spec: str) -> None:
        diff_id, blob = spec.split("=", 1)
        dest = out if mode == "flat" else out / str(i)
        dest.mkdir(exist_ok=True)
        with open(blob, "rb") as fh:
            result = apply_layer(fh, dest, name=blob, flatten=mode == "flat")
        verify_diff_id(result, diff_id, layer=blob)

    if mode == "parallel":
        with ThreadPoolExecutor(2) as pool:
            for fut in [pool.submit(one, i, spec) for i, spec in enumerate(specs)]:
                fut.result()
    else:
        for i, spec in enumerate(specs):
            one(i, spec)
    Path(f"{out}.seconds").write_text(str(time.perf_counter() - t0))


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class Row:
    scenario: str
    tool: str
    runs: list[Run] = field(default_factory=list)

    def median(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    def span(self) -> str:
        s = [r.seconds for r in self.runs]
        return f"{self.median():.2f} ({min(s):.2f}-{max(s):.2f})"

    def peak_mib(self) -> float:
        return max(r.peak_kib for r in self.runs) / 1024


def commands(scenario: str, layers: list[Layer], layout: Path, out: Path) -> dict[str, list[str]]:
    specs = [f"{la.diff_id}={la.blob}" for la in layers]
    me = [sys.executable, str(Path(__file__).resolve()), "--worker"]
    tar_script = " && ".join(
        f"tar --numeric-owner -xzpf {la.blob} -C {out / 'tar'}" for la in layers
    )
    cmds = {
        "overunder": [*me, "layers", str(out / "ours"), *specs],
        "umoci raw unpack": [
            "umoci",
            "raw",
            "unpack",
            "--image",
            f"{layout}:{scenario}",
            str(out / "umoci"),
        ],
        "tar -xzf": ["sh", "-c", f"mkdir {out / 'tar'} && {tar_script}"],
    }
    if len(layers) > 1:
        cmds["overunder flat"] = [*me, "flat", str(out / "flat"), *specs]
        cmds["overunder 2 threads"] = [*me, "parallel", str(out / "par"), *specs]
    return cmds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=Path("/dev/shm"))
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker[0], Path(args.worker[1]), args.worker[2:])
        return 0
    for tool in ("umoci", "tar", "/usr/bin/time"):
        if not shutil.which(tool):
            raise SystemExit(f"needs {tool}")
    # our own copy: pull_bench may rebuild or clean its cache while we run
    cache = args.dir / "overunder-unpack-bench-cache"
    built = build_image(cache)
    layers, config = image_layers(built)
    scenarios = {
        "l2-200mb": [layers[1]],
        "l3-20k-files": [layers[2]],
        "l4-whiteouts": [layers[3]],
        "whole-image": layers,
    }
    layout = cache / "oci-layout"
    make_oci_layout(layout, scenarios, config)
    for la in layers:  # into the page cache, as blobs just pulled would be
        la.blob.read_bytes()
    work = args.dir / "overunder-unpack-bench"
    rows: dict[tuple[str, str], Row] = {}
    try:
        for rnd in range(args.runs + 1):  # round 0 warms up and is not counted
            for scenario, sl in scenarios.items():
                for tool, argv in commands(scenario, sl, layout, work).items():
                    if work.exists():
                        shutil.rmtree(work)
                    work.mkdir(parents=True)
                    run = timed(argv)
                    if not rnd:
                        continue
                    rows.setdefault((scenario, tool), Row(scenario, tool)).runs.append(run)
                    inner = list(work.glob("*.seconds"))
                    if inner:  # an overunder run: also its time without start-up
                        key = (scenario, tool + " (in-process)")
                        secs = float(inner[0].read_text())
                        rows.setdefault(key, Row(*key)).runs.append(Run(secs, run.peak_kib))
            print(f"round {rnd} done", file=sys.stderr)
    finally:
        if work.exists():
            shutil.rmtree(work)
    print(f"\nunpack into {args.dir} ({args.runs} runs, median (min-max) s, peak RSS)\n")
    print(f"{'scenario':<14} {'tool':<32} {'seconds':>20} {'peak MiB':>9} {'vs umoci':>9}")
    for scenario in scenarios:
        base = rows[(scenario, "umoci raw unpack")].median()
        for (sc, _tool), row in rows.items():
            if sc != scenario:
                continue
            print(
                f"{sc:<14} {row.tool:<32} {row.span():>20} {row.peak_mib():>9.1f} "
                f"{row.median() / base:>8.2f}x"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
