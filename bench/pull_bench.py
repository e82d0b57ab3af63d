"""Pull the big test image from a local registry: overunder vs skopeo+umoci (and podman /
docker when installed), side by side in one run.

    .venv/bin/python bench/pull_bench.py [--runs 3] [--dir /dev/shm] [--keep-cache]

The image is performance-anchors.md A1's ``big:1``, rebuilt without Docker: busybox (1
layer), a 200 MiB incompressible file, 20,000 small text files in 100 dirs, and a layer of
whiteouts, an opaque dir, a symlink and a hard link. Blobs are built once and cached under
``<dir>/overunder-bench-cache``. A private ``docker-registry`` on 127.0.0.1 serves it from
``<dir>``; every tool pulls into a fresh store under ``<dir>`` (tmpfs by default, as the
anchors compare tools there). Each tool runs ``--runs`` times; the table shows the median
(min–max) wall time of the whole process, its peak RSS, and the ratio to overunder.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MTIME = 1700000000
RECIPE = "big-v2"
WORDS = [
    *(
        [
            "layer",
            "overlay",
            "image",
            "container",
            "whiteout",
            "opaque",
            "upper",
            "lower",
            "merged",
            "work",
            "digest",
        ]
    ),
    *(
        [
            "manifest",
            "registry",
            "blob",
            "config",
            "tar",
            "gzip",
            "mount",
            "runtime",
            "snapshot",
            "chain",
            "diff",
        ]
    ),
    *(["pull", "push", "tag", "index", "platform", "kernel", "fuse", "rootfs", "bundle"]),
]


# -- building the image --------------------------------------------------------------------


def _tar(add: Callable[[tarfile.TarFile], None]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        add(tar)
    return buf.getvalue()


def _dir(tar: tarfile.TarFile, name: str, mode: int = 0o755, mtime: int = MTIME) -> None:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, mode, mtime
    tar.addfile(ti)


def _file(
    tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644, mtime: int = MTIME
) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), mode, mtime
    tar.addfile(ti, io.BytesIO(data))


def layer1(tar: tarfile.TarFile) -> None:
    _dir(tar, "bin")
    _file(tar, "bin/busybox", Path("/bin/busybox").read_bytes(), 0o755)
    for applet in [
        "sh",
        "ls",
        "cat",
        "echo",
        "cp",
        "mv",
        "rm",
        "mkdir",
        "ln",
        "chmod",
        "chown",
        "hostname",
        "ps",
        "sleep",
        "true",
        "false",
        "env",
        "id",
        "grep",
        "sed",
    ]:
        ti = tarfile.TarInfo(f"bin/{applet}")
        ti.type, ti.linkname, ti.mtime = tarfile.SYMTYPE, "busybox", MTIME
        tar.addfile(ti)
    _dir(tar, "etc")
    _file(tar, "etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")


class _Random200:
    """200 MiB of random.Random(1).randbytes(1 MiB) repeated, read as a stream."""

    def __init__(self) -> None:
        self.block = random.Random(1).randbytes(1 << 20)
        self.left = 200 << 20
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        out = bytearray()
        while len(out) < n:
            take = min(n - len(out), len(self.block) - self.pos)
            out += self.block[self.pos : self.pos + take]
            self.pos = (self.pos + take) % len(self.block)
        self.left -= len(out)
        return bytes(out)


def layer2(tar: tarfile.TarFile) -> None:
    _dir(tar, "data")
    ti = tarfile.TarInfo("data/random.bin")
    ti.size, ti.mode, ti.mtime = 200 << 20, 0o644, MTIME
    tar.addfile(ti, _Random200())  # type: ignore[arg-type]


def small_files() -> dict[str, bytes]:
    rnd = random.Random(2)
    out: dict[str, bytes] = {}
    n = 0
    for d in range(100):
        for _ in range(200):
            size = rnd.randint(1024, 6144)
            lines = []
            total = 0
            while total < size:
                words = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(5, 14)))
                line = f"{words} {n}:{total}\n"
                lines.append(line)
                total += len(line)
            out[f"data/small/d{d:03d}/f{n:05d}.txt"] = "".join(lines).encode()[:size]
            n += 1
    return out


def layer3(tar: tarfile.TarFile) -> None:
    _dir(tar, "data")
    _dir(tar, "data/small")
    last = ""
    for name, data in small_files().items():
        d = name.rsplit("/", 1)[0]
        if d != last:
            _dir(tar, d)
            last = d
        _file(tar, name, data)


def layer4(tar: tarfile.TarFile) -> None:
    _dir(tar, "bin")
    _file(tar, "bin/.wh.hostname", b"", 0o600, 0)
    _dir(tar, "data")
    _dir(tar, "data/small")
    _dir(tar, "data/small/d000")
    for i in range(20):
        _file(tar, f"data/small/d000/.wh.f{i:05d}.txt", b"", 0o600, 0)
    _dir(tar, "data/small/d050")
    _file(tar, "data/small/d050/.wh..wh..opq", b"", 0o755, 0)
    _file(tar, "data/small/d050/README", b"replaced\n")
    _dir(tar, "data/small/d051")
    content = small_files()["data/small/d051/f10200.txt"]
    _file(tar, "data/small/d051/f10200.txt", content)
    ti = tarfile.TarInfo("data/hard.txt")
    ti.type, ti.linkname, ti.mtime, ti.mode = (
        tarfile.LNKTYPE,
        "data/small/d051/f10200.txt",
        MTIME,
        0o644,
    )
    tar.addfile(ti)
    ti = tarfile.TarInfo("data/random.link")
    ti.type, ti.linkname, ti.mtime = tarfile.SYMTYPE, "/data/random.bin", MTIME
    tar.addfile(ti)


@dataclass
class Built:
    manifest: Path
    blobs: dict[str, Path]  # digest -> file


def build_image(cache: Path) -> Built:
    d = cache / RECIPE
    done = d / "manifest.json"
    if done.exists():
        blobs = {"sha256:" + p.name: p for p in (d / "blobs").iterdir()}
        return Built(done, blobs)
    (d / "blobs").mkdir(parents=True, exist_ok=True)
    layers = []
    diff_ids = []
    for i, fn in enumerate((layer1, layer2, layer3, layer4), 1):
        print(f"building layer {i}...", file=sys.stderr)
        tar = _tar(fn)
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        gz = gzip.compress(tar, compresslevel=1 if i == 2 else 6, mtime=0)
        digest = "sha256:" + hashlib.sha256(gz).hexdigest()
        (d / "blobs" / digest[7:]).write_bytes(gz)
        layers.append(
            {
                "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "size": len(gz),
                "digest": digest,
            }
        )
        del tar, gz
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": f"layer {i}"} for i in range(4)],
        }
    ).encode()
    cdigest = "sha256:" + hashlib.sha256(config).hexdigest()
    (d / "blobs" / cdigest[7:]).write_bytes(config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": len(config),
                "digest": cdigest,
            },
            "layers": layers,
        },
        indent=3,
    ).encode()
    tmp = d / "manifest.json.tmp"
    tmp.write_bytes(manifest)
    tmp.rename(done)
    return build_image(cache)


# -- registry ---------------------------------------------------------------------------------


def start_registry(base: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = base / "registry.yml"
    cfg.write_text(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {base / 'registry-data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(cfg)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    host = f"127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://{host}/v2/", timeout=1).close()
            return proc, host
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("docker-registry did not start")


def push_image(host: str, built: Built, repo: str, tag: str) -> str:
    from overunder.registry.client import RegistryClient

    with RegistryClient(host) as c:
        for digest, path in built.blobs.items():
            c.upload_blob(repo, digest, path.stat().st_size, functools.partial(path.open, "rb"))
        data = built.manifest.read_bytes()
        return c.put_manifest(repo, tag, data, json.loads(data)["mediaType"])


# -- measuring --------------------------------------------------------------------------------


@dataclass
class Run:
    seconds: float
    peak_kib: int
    cpu: float = 0.0  # user + system seconds (less sensitive to a busy machine than wall)


def timed(argv: list[str]) -> Run:
    """Wall time and peak RSS (the process and the children it waited for) of one command.

    Run under GNU time: Linux carries a process's RSS high-water mark across fork and exec,
    so a child of this (big) bench process would report at least our own peak."""
    with tempfile.NamedTemporaryFile("r") as out:
        t0 = time.perf_counter()
        proc = subprocess.run(
            ["/usr/bin/time", "-o", out.name, "-f", "%M %U %S", *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=False,
        )
        elapsed = time.perf_counter() - t0
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace")
            raise SystemExit(f"{argv[0]} failed ({proc.returncode}): {err[-2000:]}")
        peak, user, system = out.read().split()[-3:]
    return Run(elapsed, int(peak), float(user) + float(system))


@dataclass
class Result:
    tool: str
    runs: list[Run]

    @property
    def median(self) -> float:
        return statistics.median(r.seconds for r in self.runs)

    @property
    def cpu(self) -> float:
        return statistics.median(r.cpu for r in self.runs)

    @property
    def peak_mib(self) -> float:
        return max(r.peak_kib for r in self.runs) / 1024


def bench_overunder(host: str, ref: str, work: Path, runs: int) -> Result:
    out = []
    for i in range(runs):
        root = work / f"ours-{i}"
        r = timed(
            [sys.executable, "-m", "overunder", "--root", str(root), "pull", "-q", f"{host}/{ref}"]
        )
        out.append(r)
        shutil.rmtree(root, ignore_errors=True)
    return Result("overunder pull", out)


def bench_skopeo_umoci(host: str, ref: str, work: Path, runs: int) -> list[Result]:
    copies, unpacks, both = [], [], []
    for i in range(runs):
        layout = work / f"oci-{i}"
        bundle = work / f"bundle-{i}"
        a = timed(
            [
                "skopeo",
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                f"docker://{host}/{ref}",
                f"oci:{layout}:big",
            ]
        )
        b = timed(["umoci", "unpack", "--image", f"{layout}:big", str(bundle)])
        copies.append(a)
        unpacks.append(b)
        both.append(Run(a.seconds + b.seconds, max(a.peak_kib, b.peak_kib), a.cpu + b.cpu))
        shutil.rmtree(layout, ignore_errors=True)
        shutil.rmtree(bundle, ignore_errors=True)
    return [
        Result("skopeo copy + umoci unpack", both),
        Result("  skopeo copy only", copies),
        Result("  umoci unpack only", unpacks),
    ]


def bench_podman(host: str, ref: str, work: Path, runs: int) -> Result:
    out = []
    for i in range(runs):
        root = work / f"podman-{i}"
        out.append(
            timed(
                [
                    "podman",
                    "--root",
                    str(root),
                    "--runroot",
                    str(work / f"podman-run-{i}"),
                    "pull",
                    "-q",
                    "--tls-verify=false",
                    f"{host}/{ref}",
                ]
            )
        )
        shutil.rmtree(root, ignore_errors=True)
    return Result("podman pull", out)


def _docker_daemon() -> bool:
    try:
        return (
            subprocess.run(
                ["docker", "info"], capture_output=True, timeout=10, check=False
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def bench_docker(host: str, ref: str, runs: int) -> Result:
    """dockerd does the work, so the RSS shown is the CLI's only; 127.0.0.0/8 is an insecure
    registry for dockerd by default. The image is removed after each run (not timed)."""
    out = []
    for _ in range(runs):
        out.append(timed(["docker", "pull", "-q", f"{host}/{ref}"]))
        subprocess.run(["docker", "rmi", "-f", f"{host}/{ref}"], capture_output=True, check=False)
    return Result("docker pull (CLI RSS only)", out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", default="/dev/shm", help="where stores and the registry live")
    args = ap.parse_args()
    for tool in ("docker-registry", "skopeo", "umoci"):
        if shutil.which(tool) is None:
            raise SystemExit(f"needs {tool}")
    base = Path(args.dir)
    built = build_image(base / "overunder-bench-cache")
    work = Path(tempfile.mkdtemp(prefix="overunder-pull-bench-", dir=base))
    proc, host = start_registry(work)
    try:
        digest = push_image(host, built, "t/big", "1")
        ref = "t/big:1"
        size = sum(p.stat().st_size for p in built.blobs.values())
        print(f"image {host}/{ref} {digest} ({size / 1e6:.1f} MB compressed)")
        print(f"{args.runs} runs each, stores under {work}")
        results = [bench_overunder(host, ref, work, args.runs)]
        results += bench_skopeo_umoci(host, ref, work, args.runs)
        if shutil.which("podman"):
            results.append(bench_podman(host, ref, work, args.runs))
        else:
            print("podman: not installed, skipped")
        if shutil.which("docker") and _docker_daemon():
            results.append(bench_docker(host, ref, args.runs))
        else:
            print("docker: no daemon reachable (docker info fails), skipped")
        ours = results[0].median
        print()
        print(
            f"{'tool':28} {'median s':>8} {'min-max s':>12} {'CPU s':>6} {'peak RSS':>9} "
            f"{'time vs ours':>12}"
        )
        for r in results:
            lo = min(x.seconds for x in r.runs)
            hi = max(x.seconds for x in r.runs)
            print(
                f"{r.tool:28} {r.median:8.2f} {lo:5.2f}-{hi:<6.2f} {r.cpu:6.2f} "
                f"{r.peak_mib:7.1f}Mi {r.median / ours:11.2f}x"
            )
        load = os.getloadavg()[0]
        print(f"(load average at the end: {load:.1f} on {os.cpu_count()} CPUs)")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
