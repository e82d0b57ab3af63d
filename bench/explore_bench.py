"""How fast the explorer answers on a big image: ``layers``, ``explain``, ``tree`` (and ``cat``).

    .venv/bin/python bench/explore_bench.py              # 20,000-file base layer, n=5
    .venv/bin/python bench/explore_bench.py --files 50000 --repeat 3

Builds, in a private temp dir removed at the end, a four-layer image with D's ``load`` from
generated layer tars (a ``docker save`` tarball):

1. base: ``--files`` small files in dirs of 100 (20,000 by default), plus a 4 MB library;
2. a chmod layer: the library and 500 files re-copied with mode 0755, 1,000 files rewritten;
3. a cleanup layer: 1,000 files deleted (whiteouts), one dir made opaque, a cache deleted;
4. a small app layer.

Each verb runs in-process (the engine function plus the text rendering the CLI does) ``n``
times; the median and the best are printed, and one end-to-end CLI run (a new Python process:
adds interpreter start-up) for each. The target from issue 8 is under one second per answer.

Peer: ``dive --ci`` is run on the same image when a ``dive`` binary and a Docker daemon are
available; on this host neither is (the script says so), so no ratio is printed.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from image_fixtures import make_image, write_docker_archive  # noqa: E402
from overunder.cli.commands.overlay import render_tree  # noqa: E402
from overunder.engine import explore  # noqa: E402
from overunder.engine.image_load import load  # noqa: E402
from overunder.engine.paths import EnginePaths  # noqa: E402

MTIME = 1700000000


class TarBuilder:
    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.tf = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
        self.dirs: set[str] = set()

    def _dirs(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for n in range(1, len(parts) + 1):
            d = "/".join(parts[:n])
            if d not in self.dirs:
                self.dirs.add(d)
                ti = tarfile.TarInfo(d)
                ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, MTIME
                self.tf.addfile(ti)

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self._dirs(path)
        ti = tarfile.TarInfo(path)
        ti.size, ti.mode, ti.mtime = len(data), mode, MTIME
        self.tf.addfile(ti, io.BytesIO(data))

    def bytes(self) -> bytes:
        self.tf.close()
        return self.buf.getvalue()


def build_layers(files: int) -> list[bytes]:
    lib = bytes(range(256)) * (4_000_000 // 256)
    names = [f"usr/share/d{i // 100:04d}/f{i % 100:02d}.txt" for i in range(files)]
    base = TarBuilder()
    base.file("usr/lib/libbig.so", lib)
    for i, n in enumerate(names):
        base.file(n, f"file {i}\n".encode() * 8)
    chmod = TarBuilder()
    chmod.file("usr/lib/libbig.so", lib, 0o755)
    for i, n in enumerate(names[:500]):
        chmod.file(n, f"file {i}\n".encode() * 8, 0o755)
    for i, n in enumerate(names[500:1500]):
        chmod.file(n, f"rewritten {i}\n".encode() * 8)
    chmod.file("var/cache/pkg.cache", b"x" * 2_000_000)
    cleanup = TarBuilder()
    for n in names[2000:3000]:
        d, _, base_name = n.rpartition("/")
        cleanup.file(f"{d}/.wh.{base_name}", b"")
    cleanup.file("var/cache/.wh.pkg.cache", b"")
    opaque_dir = names[5000].rpartition("/")[0]
    cleanup.file(f"{opaque_dir}/.wh..wh..opq", b"")
    cleanup.file(f"{opaque_dir}/fresh.txt", b"fresh\n")
    app = TarBuilder()
    app.file("app/server.sh", b"#!/bin/sh\necho hi\n", 0o755)
    app.file("etc/app.conf", b"port=3000\n")
    return [base.bytes(), chmod.bytes(), cleanup.bytes(), app.bytes()]


def timed(fn: Callable[[], object], n: int) -> tuple[float, float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (for profiling)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="overunder-explore-bench-"))
    try:
        paths = EnginePaths.resolve(work / "root")
        t = time.perf_counter()
        img = make_image(build_layers(args.files), ["bench:latest"])
        write_docker_archive(work / "bench.tar", [img])
        load(paths, work / "bench.tar")
        print(f"image: {args.files} base files, 4 layers, loaded in {time.perf_counter() - t:.1f}s")
        report = explore.layers(paths, "bench")
        if args.keep:
            print(f"kept: --root {paths.root}")
        n_entries = sum(r.files for r in report.rows)
        print(
            f"       {n_entries} layer entries, {report.total / 1e6:.1f} MB stored, "
            f"{report.wasted / 1e6:.1f} MB wasted ({len(report.waste)} hidden copies), "
            f"efficiency {report.efficiency * 100:.1f}%"
        )
        path = "/usr/share/d0005/f07.txt"
        cases: list[tuple[str, Callable[[], object], list[str]]] = [
            ("layers", lambda: explore.layers(paths, "bench").to_dict(top=10), ["layers", "bench"]),
            ("explain", lambda: explore.explain(paths, "bench", path), ["explain", "bench", path]),
            ("tree /", lambda: render_tree(explore.tree(paths, "bench")), ["tree", "bench"]),
            (
                "tree /usr/share/d0005",
                lambda: render_tree(explore.tree(paths, "bench", "/usr/share/d0005")),
                ["tree", "bench", "/usr/share/d0005"],
            ),
            (
                "cat",
                lambda: explore.cat(paths, "bench", "/usr/lib/libbig.so", io.BytesIO()),
                ["cat", "bench", "/etc/app.conf"],
            ),
        ]
        print(f"\n{'verb':<24}{'median':>10}{'best':>10}{'CLI (new process)':>20}")
        for name, fn, argv in cases:
            med, best = timed(fn, args.repeat)
            t = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "overunder", "--root", str(paths.root), *argv],
                stdout=subprocess.DEVNULL,
                check=True,
            )
            cli = time.perf_counter() - t
            flag = "" if med < 1.0 else "   <-- over 1 s"
            print(f"{name:<24}{med:>9.3f}s{best:>9.3f}s{cli:>19.3f}s{flag}")
        print()
        if shutil.which("dive") and shutil.which("docker"):
            t = time.perf_counter()
            subprocess.run(["dive", "--ci", "bench:latest"], check=False)
            print(f"dive --ci: {time.perf_counter() - t:.3f}s")
        else:
            print(
                "dive --ci: not measured: no dive binary on this host"
                + ("" if shutil.which("docker") else " (and no Docker daemon to feed it)")
            )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
