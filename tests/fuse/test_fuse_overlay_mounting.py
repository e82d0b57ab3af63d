"""Mounting the FUSE overlay: interop with the kernel overlay on the same upper dir, read-only
and multi-layer mounts, dead mounts, the mount(8) helper, unprivileged mounts, the trace, and
the kernel's permission model."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuse_overlay_helpers import (
    describe_diff,
    mounted_kernel,
    mounted_ours,
    ours_mount,
    ours_umount,
    remove_tree,
    set_past,
    snapshot,
    whiteout,
    world_dir,
    write,
)

from conftest import require, require_fuse, require_overlay, require_root
from overunder.errors import FailedPrecondition, InvalidArgument
from overunder.fuse.daemon import run_file
from overunder.mount.fuse import mount_fuse, pid_file_for, unmount_fuse
from overunder.mount.options import parse_overlay_options

pytestmark = [pytest.mark.root, pytest.mark.fuse]


@pytest.fixture
def base() -> Iterator[Path]:
    require_root()
    require_fuse()
    d = world_dir("ovu-fuse-mnt-")
    try:
        yield d
    finally:
        for name in ("m", "m2", "km"):
            if os.path.ismount(d / name) or _dead(d / name):
                subprocess.run(["umount", "-l", str(d / name)], check=False, capture_output=True)
        remove_tree(d)


def _dead(p: Path) -> bool:
    try:
        os.statvfs(p)  # statfs always reaches the daemon; stat may be answered from cache
    except OSError as err:
        return err.errno == 107
    return False


def layers(d: Path) -> tuple[Path, Path, Path, Path, Path]:
    l1, l2, u, w, m = (d / n for n in ("l1", "l2", "u", "w", "m"))
    for p in (u, w, m):
        p.mkdir()
    write(l2 / "f", "l2\n")
    write(l2 / "dir/a", "a\n")
    write(l2 / "dir/b", "b\n")
    write(l2 / "keep/k", "k\n")
    write(l1 / "f", "l1\n")
    write(l1 / "dir/c", "c\n")
    set_past(l1)
    set_past(l2)
    return l1, l2, u, w, m


def _work_through(m: Path) -> None:
    with open(m / "f", "a") as fh:
        fh.write("more\n")
    os.unlink(m / "dir/a")
    os.rename(m / "dir", m / "dir2")
    os.mkdir(m / "new")
    (m / "new/n").write_text("n")
    os.rename(m / "keep/k", m / "k2")
    for name in os.listdir(m / "keep"):
        os.unlink(m / "keep" / name)
    os.rmdir(m / "keep")
    os.mkdir(m / "keep")


def test_our_upper_mounts_under_the_kernel(base: Path) -> None:
    require_overlay()
    l1, l2, u, w, m = layers(base)
    with mounted_ours([l1, l2], u, w, m):
        _work_through(m)
        ours_view = snapshot(m)
    (base / "kw").mkdir()
    (base / "km").mkdir()
    with mounted_kernel([l1, l2], u, base / "kw", base / "km", ["redirect_dir=on"]):
        kernel_view = snapshot(base / "km")
    assert kernel_view == ours_view, describe_diff(kernel_view, ours_view)
    # ...and we read our own upper back the same after a remount.
    with mounted_ours([l1, l2], u, w, m):
        again = snapshot(m)
    assert again == ours_view, describe_diff(again, ours_view)


def test_kernel_upper_mounts_under_ours(base: Path) -> None:
    require_overlay()
    l1, l2, u, w, m = layers(base)
    (base / "km").mkdir()
    with mounted_kernel([l1, l2], u, w, base / "km", ["redirect_dir=on"]):
        _work_through(base / "km")
        kernel_view = snapshot(base / "km")
    (base / "ow").mkdir()
    with mounted_ours([l1, l2], u, base / "ow", m):
        ours_view = snapshot(m)
    assert ours_view == kernel_view, describe_diff(ours_view, kernel_view)


def test_lowerdir_only_mount_is_read_only_with_three_layers(base: Path) -> None:
    l1, l2, _u, _w, m = layers(base)
    l3 = base / "l3"
    write(l3 / "f", "l3\n")
    write(l3 / "only3", "3\n")
    write(l3 / "dir/d3", "d3\n")
    whiteout(l2 / "only3")  # l2 hides l3's name: whiteout in a middle layer
    with mounted_ours([l1, l2, l3], None, None, m):
        assert (m / "f").read_text() == "l1\n"
        assert sorted(os.listdir(m)) == ["dir", "f", "keep"]
        assert sorted(os.listdir(m / "dir")) == ["a", "b", "c", "d3"]
        with pytest.raises(OSError, match="Read-only file system"):
            (m / "new").write_text("x")
        with pytest.raises(OSError, match="Read-only file system"):
            os.unlink(m / "f")


def test_reads_wh_files_and_xattr_whiteouts(base: Path) -> None:
    l1, l2, u, w, m = layers(base)
    write(l1 / ".wh.keep", "")  # OCI/fuse-overlayfs style whiteout of a lower dir
    write(l1 / "dir/.wh..wh..opq", "")  # opaque marker file
    write(l2 / "x/gone", "")
    write(l2 / "x/stay", "s")
    os.setxattr(l2 / "x/gone", "trusted.overlay.whiteout", b"y")
    os.setxattr(l2 / "x", "trusted.overlay.opaque", b"x")
    write(base / "l0/x/new", "n")
    with mounted_ours([base / "l0", l1, l2], u, w, m):
        assert sorted(os.listdir(m)) == ["dir", "f", "x"]
        assert sorted(os.listdir(m / "dir")) == ["c"]
        assert sorted(os.listdir(m / "x")) == ["new", "stay"]


def test_options_validated_like_the_kernel(base: Path) -> None:
    l1, _l2, u, _w, m = layers(base)
    inner = u / "work"
    inner.mkdir()
    opts = parse_overlay_options([f"lowerdir={l1}", f"upperdir={u}", f"workdir={inner}"])
    with pytest.raises(InvalidArgument, match="separate subtrees"):
        mount_fuse(opts, m)
    assert not os.path.ismount(m)


def test_killed_process_leaves_a_dead_mount_that_unmount_clears(base: Path) -> None:
    l1, l2, u, w, m = layers(base)
    pid = ours_mount([l1, l2], u, w, m)
    try:
        assert (m / "f").read_text() == "l1\n"
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while not _dead(m) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _dead(m), "a killed daemon must leave ENOTCONN behind"
        message = unmount_fuse(m)
        assert "transport endpoint is not connected" in message
        assert "dead" in message
        assert not os.path.ismount(m)
        assert not pid_file_for(m).exists()
        assert not run_file(m, ".log").exists(), "the killed process's log was empty"
    finally:
        ours_umount(m)


def test_unmount_ends_the_process(base: Path) -> None:
    l1, l2, u, w, m = layers(base)
    pid = ours_mount([l1, l2], u, w, m)
    message = unmount_fuse(m)
    assert f"process {pid} ended" in message
    assert not os.path.exists(f"/proc/{pid}") or _zombie(pid)


def test_clean_unmount_leaves_nothing_in_the_run_dir(base: Path) -> None:
    """The pid file lives while mounted; after a clean unmount neither it nor the (empty) log
    is left in /run/overunder/fuse (one pair per mount used to pile up there)."""
    l1, l2, u, w, m = layers(base)
    run_dir = run_file(m, ".log").parent
    ours = {run_file(m, ".log").name, run_file(m, ".pid").name}
    before = set(os.listdir(run_dir)) & ours if run_dir.exists() else set()
    assert not before
    pid = ours_mount([l1, l2], u, w, m)
    try:
        assert pid_file_for(m).read_text().strip() == str(pid)
        assert stat.S_IMODE(pid_file_for(m).stat().st_mode) == 0o644
    finally:
        unmount_fuse(m)
    assert set(os.listdir(run_dir)) & ours == set()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_busy_unmount_is_refused(base: Path) -> None:
    l1, l2, u, w, m = layers(base)
    ours_mount([l1, l2], u, w, m)
    try:
        fh = open(m / "f")  # noqa: SIM115 - held open on purpose
        try:
            with pytest.raises(FailedPrecondition, match="busy"):
                unmount_fuse(m)
        finally:
            fh.close()
    finally:
        ours_umount(m)


def test_trace_records_copy_up_whiteout_opaque_redirect(base: Path) -> None:
    l1, l2, u, w, m = layers(base)
    trace = base / "trace.jsonl"
    ours_mount_traced = mount_fuse(
        parse_overlay_options([f"lowerdir={l1}:{l2}", f"upperdir={u}", f"workdir={w}"]),
        m,
        trace=trace,
    )
    assert ours_mount_traced > 0
    try:
        _work_through(m)
    finally:
        ours_umount(m)
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    kinds = [(e["event"], e.get("path")) for e in events]
    assert ("copy-up", "/f") in kinds
    assert ("whiteout", "/dir/a") in kinds
    assert ("redirect", "/dir2") in kinds
    assert ("opaque", "/keep") in kinds
    copy = next(e for e in events if e["event"] == "copy-up" and e["path"] == "/f")
    assert copy["bytes"] == 3
    assert copy["layer"] == 1  # "lower 1": the leftmost lowerdir
    assert events[0]["event"] == "mount"
    assert events[-1]["event"] == "unmount"
    assert events[-1]["mountpoint"] == str(m)
    # made by the daemon (umask 0), readable by its owner only: it names files
    assert stat.S_IMODE(trace.stat().st_mode) == 0o600


def test_mount_8_uses_the_helper(base: Path) -> None:
    # libmount looks for mount.<type> helpers only in /sbin (FS_SEARCH_PATH), not in
    # /usr/local/sbin; without it mount.fuse3 would run a program named "overunder".
    helper = Path("/sbin/mount.fuse.overunder")
    require(helper.exists(), "/sbin/mount.fuse.overunder (ln -s .venv/bin/mount.fuse.overunder)")
    l1, l2, u, w, m = layers(base)
    res = subprocess.run(
        ["mount", "-t", "fuse.overunder", "overlay", str(m), "-o",
         f"lowerdir={l1}:{l2},upperdir={u},workdir={w}"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    try:
        assert res.returncode == 0, res.stderr
        assert (m / "f").read_text() == "l1\n"
        mountinfo = Path("/proc/self/mountinfo").read_text()
        assert f" {m} " in mountinfo
        assert "fuse.overunder" in mountinfo
    finally:
        subprocess.run(["umount", str(m)], check=False, capture_output=True)
        ours_umount(m)
    assert not os.path.ismount(m)


def _as_user(uid: int, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


def test_permissions_checked_like_the_kernel(base: Path) -> None:
    l1, l2, u, w, m = layers(base)
    with mounted_ours([l1, l2], u, w, m):
        res = _as_user(1, ["sh", "-c", f"echo x >> {m}/f"])
        assert res.returncode != 0
        assert "Permission denied" in res.stderr
        assert not (u / "f").exists(), "a refused write must not copy up"
        res = _as_user(1, ["cat", f"{m}/f"])
        assert res.stdout == "l1\n"


@pytest.mark.usefixtures("dev_fuse_0666")
def test_unprivileged_mount_as_nobody(base: Path) -> None:
    l1, l2, u, w, m = layers(base)
    nobody = 65534
    for top in (l1, l2, u, w, m):  # a rootless user's own layers
        for dirpath, dirnames, filenames in os.walk(top):
            for name in [dirpath, *(os.path.join(dirpath, n) for n in dirnames + filenames)]:
                os.lchown(name, nobody, nobody)
    script = f"""
import os, sys
from pathlib import Path
from overunder.mount.fuse import mount_fuse, unmount_fuse
from overunder.mount.options import parse_overlay_options
m = Path({str(m)!r})
mount_fuse(parse_overlay_options(["lowerdir={l1}:{l2}", "upperdir={u}", "workdir={w}"]), m)
try:
    assert (m / "f").read_text() == "l1\\n"
    os.unlink(m / "dir" / "a")          # needs a whiteout nobody cannot mknod
    (m / "mine").write_text("mine")
    print(sorted(os.listdir(m / "dir")), sorted(os.listdir(m)))
finally:
    print(unmount_fuse(m))
"""
    # The venv's interpreter may live under /root (0700): run the system python on our
    # sources, as an unprivileged user's own install would.
    python = "/usr/bin/python3"
    require(os.access(python, os.X_OK), "/usr/bin/python3 for the unprivileged user")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "XDG_RUNTIME_DIR": str(base / "run"), "HOME": str(base), "PYTHONPATH": src}
    (base / "run").mkdir()
    os.chown(base / "run", nobody, nobody)
    res = subprocess.run(
        ["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups",
         python, "-c", script],
        capture_output=True, text=True, check=False, timeout=120, env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr + res.stdout
    assert "['b', 'c'] ['dir', 'f', 'keep', 'mine']" in res.stdout
    # Kernels since 5.8 let anyone mknod a 0/0 whiteout; older ones refuse, and then the
    # rootless .wh.<name> form is written (our reader and fuse-overlayfs honour both).
    if (u / "dir/a").exists():
        st = os.lstat(u / "dir/a")
        assert stat.S_ISCHR(st.st_mode)
        assert st.st_rdev == 0
    else:
        assert (u / "dir/.wh.a").exists()
    assert (u / "mine").stat().st_uid == nobody
