"""Unpack the big test image (performance-anchors.md A1) into a fresh store: ``overunder load``
of its OCI layout vs ``umoci raw unpack`` and plain ``tar -x`` of each layer, side by side in
one run, and ``docker load`` of the same blobs (as a docker-archive tarball) when a Docker
daemon answers ``docker info``. Prints medians (min–max), ratios and peak RSS. Not part of the
test suite.

    .venv/bin/python bench/store_unpack_bench.py [--runs 3] [--dir /dev/shm/ou-bench]

The image is built once (cached in ``--cache``): L1 busybox, L2 one 200 MiB random file,
L3 20,000 text files of 1–6 KiB in 100 dirs, L4 whiteouts, an opaque dir, a symlink and a
hard link, as the anchors' Dockerfile made them; layers gzip level 1, OCI layout.
The stores live on tmpfs by default (the anchors compare tools on tmpfs: ext4 file creation
from a login shell is erratic on the reference VM).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path

MTIME = 1700000000
VOCAB = (
    "container",
    "image",
    "layer",
    "overlay",
    "upper",
    "lower",
    "merged",
    "whiteout",
    "opaque",
    "tar",
    "gzip",
    "digest",
    "manifest",
    "config",
    "registry",
    "blob",
    "chain",
    "snapshot",
    "mount",
    "kernel",
    "fuse",
    "runtime",
    "process",
    "namespace",
    "cgroup",
    "volume",
    "network",
    "bridge",
    "engine",
    "store",
)


def _ti(
    name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, size: int = 0, link: str = ""
) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.size, ti.mtime, ti.linkname = kind, mode, size, MTIME, link
    ti.uname = ti.gname = "root"
    return ti


def _layer(write: object) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        write(tf)  # type: ignore[operator]
    return buf.getvalue()


def _l1(tf: tarfile.TarFile) -> None:
    bb = Path(shutil.which("busybox") or "/bin/busybox").read_bytes()
    for d in ("bin/", "etc/", "tmp/", "data/"):
        tf.addfile(_ti(d, tarfile.DIRTYPE, 0o755))
    tf.addfile(_ti("bin/busybox", mode=0o755, size=len(bb)), io.BytesIO(bb))
    for a in ("sh", "ls", "cat", "echo", "hostname", "sleep", "rm", "mkdir"):
        tf.addfile(_ti(f"bin/{a}", tarfile.SYMTYPE, 0o777, link="busybox"))


def _l2(tf: tarfile.TarFile) -> None:
    chunk = random.Random(1).randbytes(1 << 20)
    tf.addfile(_ti("data/", tarfile.DIRTYPE, 0o755))
    tf.addfile(_ti("data/random.bin", size=200 << 20), io.BytesIO(chunk * 200))


def _text(rnd: random.Random, n: int, size: int) -> bytes:
    out = []
    total = 0
    while total < size:
        line = " ".join(rnd.choice(VOCAB) for _ in range(rnd.randint(5, 14)))
        line += f" {n}:{total}\n"
        out.append(line)
        total += len(line)
    return "".join(out).encode()[:size]


def _l3(tf: tarfile.TarFile) -> None:
    rnd = random.Random(2)
    tf.addfile(_ti("data/", tarfile.DIRTYPE, 0o755))
    tf.addfile(_ti("data/small/", tarfile.DIRTYPE, 0o755))
    for d in range(100):
        tf.addfile(_ti(f"data/small/d{d:03d}/", tarfile.DIRTYPE, 0o755))
        for i in range(200):
            n = d * 200 + i
            data = _text(rnd, n, rnd.randint(1024, 6144))
            tf.addfile(_ti(f"data/small/d{d:03d}/f{n:05d}.txt", size=len(data)), io.BytesIO(data))


def _l4(tf: tarfile.TarFile) -> None:
    e = b""
    for d in (
        "bin/",
        "data/",
        "data/small/",
        "data/small/d000/",
        "data/small/d050/",
        "data/small/d051/",
    ):
        tf.addfile(_ti(d, tarfile.DIRTYPE, 0o755))
    tf.addfile(_ti("bin/.wh.hostname", mode=0o600), io.BytesIO(e))
    for n in range(20):
        tf.addfile(_ti(f"data/small/d000/.wh.f{n:05d}.txt", mode=0o600), io.BytesIO(e))
    tf.addfile(_ti("data/small/d050/.wh..wh..opq", mode=0o755), io.BytesIO(e))
    tf.addfile(_ti("data/small/d050/README", size=9), io.BytesIO(b"replaced\n"))
    tf.addfile(_ti("data/random.link", tarfile.SYMTYPE, 0o777, link="/data/random.bin"))
    body = _text(random.Random(3), 10200, 3000)
    tf.addfile(_ti("data/hard.txt", size=len(body)), io.BytesIO(body))
    tf.addfile(_ti("data/small/d051/f10200.txt", tarfile.LNKTYPE, link="data/hard.txt"))


def build(cache: Path) -> Path:
    layout = cache / "big-oci"
    if (layout / "index.json").exists():
        return layout
    tmp = cache / "big-oci.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    blobs = tmp / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        (blobs / d[7:]).write_bytes(data)
        return d

    diff_ids, descs = [], []
    for i, fn in enumerate((_l1, _l2, _l3, _l4), 1):
        print(f"building layer {i}", file=sys.stderr)
        raw = _layer(fn)
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        gz = gzip.compress(raw, compresslevel=1, mtime=0)
        descs.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": put(gz),
                "size": len(gz),
            }
        )
    cfg = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["sh"]},
            "created": "2023-11-14T22:13:20Z",
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    m = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": put(cfg),
                "size": len(cfg),
            },
            "layers": descs,
        }
    ).encode()
    md = put(m)
    (tmp / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (tmp / "index.json").write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "manifests": [
                    {
                        "mediaType": "application/vnd.oci.image.manifest.v1+json",
                        "digest": md,
                        "size": len(m),
                        "annotations": {"org.opencontainers.image.ref.name": "big"},
                    }
                ],
            }
        )
    )
    tmp.rename(layout)
    return layout


def timed(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """(wall seconds, peak RSS KiB) of one command, via GNU time."""
    out = subprocess.run(
        ["/usr/bin/time", "-f", "%e %M", *argv],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"{argv[0]} failed: {out.stderr}")
    wall, rss = out.stderr.strip().splitlines()[-1].split()
    return float(wall), int(rss)


DOCKER_REF = "overunder-bench/big:1"


def docker_daemon() -> bool:
    """A daemon answers ``docker info`` (the client follows ``DOCKER_HOST``)."""
    if shutil.which("docker") is None:
        return False
    try:
        r = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def docker_archive(layout: Path, out: Path) -> Path:
    """The same blobs as a ``docker save`` tarball (Docker 20.10 cannot load an OCI layout):
    manifest.json + config + the gzip layers as they are (``docker load`` decompresses)."""
    blobs = layout / "blobs/sha256"
    md = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    m = json.loads((blobs / md[7:]).read_text())
    cfg = m["config"]["digest"][7:]
    names = [f"{d['digest'][7:]}/layer.tar" for d in m["layers"]]
    man = [{"Config": f"{cfg}.json", "RepoTags": [DOCKER_REF], "Layers": names}]
    data = json.dumps(man).encode()
    with tarfile.open(out, "w") as tf:
        tf.add(blobs / cfg, arcname=f"{cfg}.json")
        for d, name in zip(m["layers"], names, strict=True):
            tf.add(blobs / d["digest"][7:], arcname=name)
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=Path("/dev/shm/ou-bench"))
    ap.add_argument("--cache", type=Path, default=Path("/var/tmp/overunder-bench-cache"))
    args = ap.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    layout = build(args.cache)
    manifest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    layers = json.loads((layout / "blobs/sha256" / manifest[7:]).read_text())["layers"]
    overunder = str(Path(sys.executable).with_name("overunder"))
    tools = {
        "overunder load": lambda d: (
            [overunder, "--root", str(d / "root"), "load", "-q", "-i", str(layout)],
            None,
        ),
        "overunder load (2 threads)": lambda d: (
            [overunder, "--root", str(d / "root"), "load", "-q", "-i", str(layout)],
            dict(os.environ, OVERUNDER_UNPACK_THREADS="2"),
        ),
        "umoci raw unpack": lambda d: (
            ["umoci", "raw", "unpack", "--image", f"{layout}:big", str(d / "rootfs")],
            None,
        ),
        "tar -x (per layer)": lambda d: (
            [
                "sh",
                "-c",
                " && ".join(
                    f"mkdir -p {d}/l{i} && "
                    f"tar -xzf {layout}/blobs/sha256/{ly['digest'][7:]} -C {d}/l{i}"
                    for i, ly in enumerate(layers)
                ),
            ],
            None,
        ),
    }
    if docker_daemon():
        args.dir.mkdir(parents=True, exist_ok=True)
        archive = docker_archive(layout, args.dir / "docker-archive.tar")
        root_dir = subprocess.run(
            ["docker", "info", "--format", "{{.DockerRootDir}}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        print(f"docker load: the daemon's store is {root_dir}; RSS shown is the CLI's only")
        tools["docker load (daemon)"] = lambda d: (
            ["docker", "load", "-q", "-i", str(archive)],
            None,
        )
    else:
        print("docker: no daemon reachable (docker info fails), docker load not measured")
    results: dict[str, list[tuple[float, int]]] = {k: [] for k in tools}
    for r in range(args.runs):
        for name, make in tools.items():
            d = args.dir / f"{r}-{name.split()[0]}"
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            argv, env = make(d)
            subprocess.run(["sync"], check=True)
            results[name].append(timed(argv, env))
            shutil.rmtree(d, ignore_errors=True)
            if name.startswith("docker"):
                # Untimed: the next run must unpack again, and the daemon is left as found.
                subprocess.run(["docker", "rmi", DOCKER_REF], capture_output=True, check=False)
    shutil.rmtree(args.dir, ignore_errors=True)
    base = statistics.median(w for w, _ in results["umoci raw unpack"])
    print(f"big image ({len(layers)} layers), {args.runs} runs, store on {args.dir}")
    print(f"{'tool':28} {'median s':>9} {'(min-max)':>15} {'vs umoci':>9} {'peak RSS':>10}")
    for name, runs in results.items():
        walls = [w for w, _ in runs]
        med = statistics.median(walls)
        rss = max(m for _, m in runs) / 1024
        print(
            f"{name:28} {med:9.2f} {f'({min(walls):.2f}-{max(walls):.2f})':>15} "
            f"{med / base:8.2f}x {rss:8.1f} MiB"
        )


if __name__ == "__main__":
    main()
