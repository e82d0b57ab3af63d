"""Workloads a-i of performance-anchors.md Part B on the kernel overlay, fuse-overlayfs and
overunder's FUSE overlay, from the same fixture, in one run.

    sudo .venv/bin/python bench/fuse_overlay_bench.py            # full sizes, n=3 (~10 min)
    sudo .venv/bin/python bench/fuse_overlay_bench.py --quick    # small sizes, n=1 (~1 min)
    ... --fs tmpfs                                                # tmpfs instead of a loop ext4
    ... --only ours,kernel  --workloads a,b,c                     # a subset
    ... --before-src /tmp/old/src --only ours,before,fuse-overlayfs    # compare with old code

Everything lives on a dedicated filesystem (a loop-mounted ext4 over a pre-written image, as
the reference measured, or tmpfs) under a private temp dir, removed at the end whatever
happens. Each repetition of each target gets a fresh upper and work dir and its own mount; the
workloads then run in order a..i on it. "Cold" drops the page cache first
(``echo 3 > /proc/sys/vm/drop_caches``). Prints the median seconds per target and our ratio to
each other target. Needs root (mount, drop_caches); not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

TARGETS = ("kernel", "fuse-overlayfs", "ours", "before")
WORKLOADS = [
    ("a", "create 10k x 4 KiB"),
    ("b_warm", "stat 10k, warm"),
    ("b_cold", "stat 10k, cold"),
    ("c", "ls -f 10k dir x100"),
    ("d", "write 1 GiB + fsync"),
    ("e_cold", "read 1 GiB lower, cold"),
    ("e_warm", "read 1 GiB lower, warm"),
    ("f", "1st append to 100 MiB lower"),
    ("g", "rm -rf 10k-file lower tree"),
    ("h", "untar 47 MB"),
    ("i_cold", "find 50k lower tree, cold"),
    ("i_warm", "find 50k lower tree, warm"),
]
METADATA = {"a", "b_warm", "b_cold", "c", "g", "h", "i_cold", "i_warm"}


@dataclass(frozen=True)
class Sizes:
    files: int  # a, b, c
    big_mib: int  # d, e
    app_mib: int  # f
    rm_dirs: int  # g: dirs x 100 files
    find_dirs: int  # i: dirs x 199 files
    ls_repeat: int  # c
    image_gib: int


FULL = Sizes(10_000, 1024, 100, 100, 250, 100, 8)
QUICK = Sizes(2_000, 128, 16, 20, 50, 20, 2)


def sh(*args: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(args), check=check, capture_output=True, **kw)  # type: ignore[call-overload,no-any-return]


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


@contextlib.contextmanager
def scratch_fs(kind: str, gib: int) -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="ovu-bench-"))
    mnt = base / "fs"
    mnt.mkdir()
    image = base / "image"
    loop = ""
    try:
        if kind == "tmpfs":
            sh("mount", "-t", "tmpfs", "-o", f"size={gib + 1}g", "bench", str(mnt))
        else:
            # Pre-written (not sparse) so writes measure the fs, not block allocation on /.
            sh("dd", "if=/dev/zero", f"of={image}", "bs=16M", f"count={gib * 64}")
            res = sh("losetup", "--direct-io=on", "--show", "-f", str(image))
            loop = res.stdout.decode().strip()
            sh("mkfs.ext4", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard", loop)
            sh("mount", "-o", "nodiscard", loop, str(mnt))
        mnt.chmod(0o755)
        yield mnt
    finally:
        sh("umount", "-l", str(mnt), check=False)
        if loop:
            sh("losetup", "-d", loop, check=False)
        shutil.rmtree(base, ignore_errors=True)


def build_fixture(lower: Path, tarball: Path, sizes: Sizes) -> None:
    lower.mkdir()
    chunk = os.urandom(1 << 20)
    for name, mib in (("big1g", sizes.big_mib), ("app100m", sizes.app_mib)):
        with open(lower / name, "wb") as fh:
            for _ in range(mib):
                fh.write(chunk)
    data = os.urandom(4096)
    for d in range(sizes.rm_dirs):
        p = lower / "rmtree" / f"d{d}"
        p.mkdir(parents=True)
        for f in range(100):
            (p / f"f{f}").write_bytes(data)
    small = b"x" * 64
    for d in range(sizes.find_dirs):
        p = lower / "tree50k" / f"d{d}"
        p.mkdir(parents=True)
        for f in range(199):
            (p / f"f{f}").write_bytes(small)
    stdlib = Path(os.__file__).parent
    skip = ("__pycache__", "site-packages", "lib-dynload", "config-")

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if any(s in info.name for s in skip) or info.name.endswith((".so", ".a")):
            return None
        return info

    with tarfile.open(tarball, "w") as tar:
        if sizes is FULL:
            tar.add(stdlib, arcname="stdlib", filter=keep)
            tar.add("/usr/include/linux", arcname="include-linux")
        else:
            tar.add(stdlib / "email", arcname="stdlib-email", filter=keep)
            tar.add("/usr/include/linux", arcname="include-linux")


BEFORE_SRC: str | None = None  # --before-src: the "before" target's daemon runs that code


@contextlib.contextmanager
def mounted(target: str, lower: Path, state: Path) -> Iterator[Path]:
    upper, work, mnt = state / "upper", state / "work", state / "merged"
    for p in (upper, work, mnt):
        p.mkdir(parents=True)
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}"
    if target == "kernel":
        sh("mount", "-t", "overlay", "overlay", "-o", opts, str(mnt))
    elif target == "fuse-overlayfs":
        sh("fuse-overlayfs", "-o", opts, str(mnt))
    else:
        from overunder.mount.fuse import mount_fuse
        from overunder.mount.options import parse_overlay_options

        # The daemon inherits the environment: PYTHONPATH selects the code it runs.
        saved = os.environ.get("PYTHONPATH")
        if target == "before" and BEFORE_SRC:
            os.environ["PYTHONPATH"] = BEFORE_SRC
        try:
            mount_fuse(parse_overlay_options(opts), mnt)
        finally:
            if saved is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = saved
    try:
        yield mnt
    finally:
        if target in {"ours", "before"}:
            from overunder.mount.fuse import unmount_fuse

            try:
                unmount_fuse(mnt)
            except Exception:
                sh("umount", "-l", str(mnt), check=False)
        elif sh("umount", str(mnt), check=False).returncode != 0:
            sh("umount", "-l", str(mnt), check=False)
        shutil.rmtree(state, ignore_errors=True)


def timed(fn: Callable[[], object], *, cold: bool = False) -> float:
    if cold:
        drop_caches()
    t0 = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - t0
    os.sync()  # untimed, as in the reference
    return elapsed


def run_workloads(m: Path, tarball: Path, sizes: Sizes, wanted: set[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    many = m / "many"
    data = b"y" * 4096

    def a() -> None:
        many.mkdir()
        for i in range(sizes.files):
            fd = os.open(many / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.write(fd, data)
            os.close(fd)

    def b() -> None:
        lstat = os.lstat
        for i in range(sizes.files):
            lstat(f"{many}/f{i}")

    def c() -> None:
        for _ in range(sizes.ls_repeat):
            subprocess.run(["ls", "-f", str(many)], stdout=subprocess.DEVNULL, check=True)

    if wanted & {"a", "b_warm", "b_cold", "c"}:
        out["a"] = timed(a)
        out["b_warm"] = timed(b)
        out["b_cold"] = timed(b, cold=True)
        out["c"] = timed(c)
    if "d" in wanted:
        out["d"] = timed(lambda: sh("dd", "if=/dev/zero", f"of={m}/zeros", "bs=1M",
                                    f"count={sizes.big_mib}", "conv=fsync"))  # fmt: skip
        os.unlink(m / "zeros")
    if wanted & {"e_cold", "e_warm"}:
        read = lambda: sh("dd", f"if={m}/big1g", "of=/dev/null", "bs=1M")  # noqa: E731
        out["e_cold"] = timed(read, cold=True)
        out["e_warm"] = timed(read)

    def f() -> None:
        fd = os.open(m / "app100m", os.O_WRONLY | os.O_APPEND)
        os.write(fd, data)
        os.close(fd)

    if "f" in wanted:
        out["f"] = timed(f, cold=True)
    if "g" in wanted:
        out["g"] = timed(lambda: sh("rm", "-rf", f"{m}/rmtree"), cold=True)
    if "h" in wanted:
        tarball.read_bytes()  # pre-read
        (m / "untar").mkdir()
        out["h"] = timed(lambda: sh("tar", "-xf", str(tarball), "-C", f"{m}/untar"))
    if wanted & {"i_cold", "i_warm"}:
        find = lambda: sh("sh", "-c", f"find {m}/tree50k -type f | wc -l")  # noqa: E731
        out["i_cold"] = timed(find, cold=True)
        out["i_warm"] = timed(find)
    return {k: v for k, v in out.items() if k in wanted}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    p.add_argument("-n", type=int, default=None, help="repetitions (default 3, quick 1)")
    p.add_argument("--fs", choices=("ext4", "tmpfs"), default="ext4")
    p.add_argument("--only", default=",".join(TARGETS[:3]), help="targets, comma separated")
    p.add_argument("--workloads", default=",".join(k for k, _ in WORKLOADS))
    p.add_argument("--before-src", default=None, help="a src dir with older overunder code: "
                   "adds the target 'before' (its daemon runs that code)")  # fmt: skip
    args = p.parse_args(argv)
    global BEFORE_SRC  # a module setting, read by mounted()
    BEFORE_SRC = args.before_src
    if os.geteuid() != 0:
        print("needs root (mounts, drop_caches)", file=sys.stderr)
        return 2
    sizes = QUICK if args.quick else FULL
    reps = args.n or (1 if args.quick else 3)
    default_only = p.get_default("only")
    only = args.only if args.only != default_only or not BEFORE_SRC else args.only + ",before"
    targets = [t for t in only.split(",") if t in TARGETS]
    if "before" in targets and not BEFORE_SRC:
        targets.remove("before")
    wanted = set(args.workloads.split(","))
    if "fuse-overlayfs" in targets and shutil.which("fuse-overlayfs") is None:
        print("fuse-overlayfs not installed: skipped", file=sys.stderr)
        targets.remove("fuse-overlayfs")
    results: dict[str, dict[str, list[float]]] = {t: {} for t in targets}
    with scratch_fs(args.fs, sizes.image_gib) as fs:
        lower, tarball = fs / "lower", fs / "src.tar"
        t0 = time.perf_counter()
        build_fixture(lower, tarball, sizes)
        print(f"fixture built in {time.perf_counter() - t0:.1f} s on {args.fs}; "
              f"{reps} repetition(s)", flush=True)  # fmt: skip
        for rep in range(reps):
            for target in targets:
                with mounted(target, lower, fs / f"state-{target}") as m:
                    for k, v in run_workloads(m, tarball, sizes, wanted).items():
                        results[target].setdefault(k, []).append(v)
                print(f"  rep {rep + 1} {target}: done", flush=True)
    print_table(results, targets)
    return 0


def print_table(results: dict[str, dict[str, list[float]]], targets: list[str]) -> None:
    med = {t: {k: statistics.median(v) for k, v in results[t].items()} for t in targets}
    others = [t for t in targets if t != "ours"]
    head = f"{'workload':<32}" + "".join(f"{t:>16}" for t in targets)
    head += "".join(f"{'ours/' + t:>22}" for t in others if "ours" in targets)
    print(head)
    for key, label in WORKLOADS:
        if not any(key in med[t] for t in targets):
            continue
        row = f"{key + ' ' + label:<32}"
        for t in targets:
            v = med[t].get(key)
            row += f"{v:>16.3f}" if v is not None else f"{'-':>16}"
        if "ours" in targets:
            ours = med["ours"].get(key)
            for t in others:
                ref = med[t].get(key)
                row += f"{ours / ref:>22.2f}" if ours and ref else f"{'-':>22}"
        print(row + ("  (metadata)" if key in METADATA else ""))


if __name__ == "__main__":
    sys.exit(main())
