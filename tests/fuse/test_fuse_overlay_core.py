"""The overlay core without FUSE: the rootless on-disk forms (``.wh.<name>`` whiteouts and
``user.overlay.*`` xattrs, used when this user may not mknod 0/0 or write ``trusted.*``), read
back after a "remount", and the trace events."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from overunder.fuse.core import Caller, OverlayCore
from overunder.fuse.layers import Stack
from overunder.fuse.trace import Tracer, format_event, read_events
from overunder.layerfs.whiteout import WhiteoutStyle, XattrNS

ME = Caller(os.geteuid(), os.getegid())


def _layers(tmp_path: Path) -> tuple[Path, Path, Path]:
    lower, upper, work = tmp_path / "l", tmp_path / "u", tmp_path / "w"
    for d in (lower / "d", upper, work):
        d.mkdir(parents=True)
    (lower / "f").write_text("f")
    (lower / "d" / "x").write_text("x")
    (lower / "d" / "y").write_text("y")
    return lower, upper, work


def _core(lower: Path, upper: Path, work: Path, trace: Path | None = None) -> OverlayCore:
    stack = Stack(
        [str(lower)], str(upper), str(work),
        whiteout_style=WhiteoutStyle.WH_FILE, xattr_ns=XattrNS.USER,
    )  # fmt: skip
    return OverlayCore(stack, Tracer(trace))


def _names(core: OverlayCore, node_path: str) -> list[str]:
    node = core.root
    for part in filter(None, node_path.split("/")):
        node = core.lookup(node, part)
    return sorted(e.name for e in core.merged_names(node))


def test_rootless_forms_are_written_and_read_back(tmp_path: Path) -> None:
    lower, upper, work = _layers(tmp_path)
    core = _core(lower, upper, work)
    core.unlink(core.root, "f")
    d = core.lookup(core.root, "d")
    core.unlink(d, "x")
    core.unlink(d, "y")
    core.rmdir(core.root, "d")
    core.mkdir(core.root, "d", 0o755, ME)
    assert (upper / ".wh.f").is_file()
    assert not (upper / "f").exists()
    assert os.getxattr(upper / "d", "user.overlay.opaque") == b"y"
    assert _names(core, "") == ["d"]
    assert _names(core, "d") == []
    # A new mount over the same upper reads the same tree.
    again = _core(lower, upper, work)
    assert _names(again, "") == ["d"]
    assert _names(again, "d") == []
    # Creating over a .wh. whiteout removes the marker.
    os.close(again.create(again.root, "f", 0o644, os.O_WRONLY, ME)[2])
    assert not (upper / ".wh.f").exists()
    assert _names(again, "") == ["d", "f"]


def test_lower_dir_rename_writes_a_user_redirect(tmp_path: Path) -> None:
    lower, upper, work = _layers(tmp_path)
    core = _core(lower, upper, work)
    core.rename(core.root, "d", core.root, "e", 0)
    assert os.getxattr(upper / "e", "user.overlay.redirect") == b"d"
    assert _names(_core(lower, upper, work), "e") == ["x", "y"]


def test_trace_events(tmp_path: Path) -> None:
    lower, upper, work = _layers(tmp_path)
    trace = tmp_path / "trace.jsonl"
    core = _core(lower, upper, work, trace)
    fd = core.open(core.lookup(core.root, "f"), os.O_WRONLY | os.O_APPEND)
    os.close(fd)
    core.unlink(core.root, "f")
    core.tracer.close()
    events = list(read_events(trace))
    assert [e["event"] for e in events] == ["copy-up", "whiteout"]
    assert events[0]["path"] == "/f"
    assert events[0]["bytes"] == 1
    assert events[1]["style"] == "wh-file"
    assert "copy-up   /f  file 1 bytes from lower 1" in format_event(events[0])
    assert json.loads(trace.read_text().splitlines()[0])["layer"] == 1


def test_kill_suidgid_follows_the_vfs_rule(tmp_path: Path) -> None:
    """Under HANDLE_KILLPRIV_V2 the overlay clears the bits itself: set-user-ID always,
    set-group-ID when group-executable or the caller is outside the file's group (not root);
    a lower file is copied up first, the lower layer keeps its bits."""
    lower, upper, work = _layers(tmp_path)
    modes = {"s": 0o4755, "sg": 0o6755, "g": 0o2745, "plain": 0o644}
    for name, mode in {**modes, "g2": 0o2745}.items():
        (lower / name).write_text(name)
        os.chmod(lower / name, mode)
    core = _core(lower, upper, work)
    outsider = Caller(4242, 4242)
    for name in modes:
        core.kill_suidgid(core.lookup(core.root, name), outsider)
    got = {n: os.lstat(upper / n).st_mode & 0o7777 for n in modes}
    assert got == {"s": 0o755, "sg": 0o755, "g": 0o745, "plain": 0o644}
    assert os.lstat(lower / "s").st_mode & 0o7777 == 0o4755
    core.kill_suidgid(core.lookup(core.root, "g2"), Caller(0, 0))  # root: in every group
    assert os.lstat(upper / "g2").st_mode & 0o7777 == 0o2745
    core.kill_suidgid(core.lookup(core.root, "d"), outsider)  # dirs are left alone
    assert not (upper / "d").exists()


def test_make_session_negotiates_killpriv_and_passes_debug(tmp_path: Path) -> None:
    from overunder.fuse.overlay import OverlayOperations, make_session

    lower, upper, work = _layers(tmp_path)
    stack = Stack(
        [str(lower)], str(upper), str(work),
        whiteout_style=WhiteoutStyle.WH_FILE, xattr_ns=XattrNS.USER,
    )  # fmt: skip
    ops = OverlayOperations(stack)
    try:
        session = make_session(ops, tmp_path / "m", debug=True)
        assert session.handle_killpriv_v2
        assert session.debug
    finally:
        ops.destroy()


def test_capability_probe_answered_from_memory_until_one_is_set(tmp_path: Path) -> None:
    """Files made through the mount carry no security.capability: the kernel's probe before
    writes is answered ENODATA without a syscall, until one is set through the mount."""
    from conftest import require_root

    require_root()
    lower, upper, work = _layers(tmp_path)
    core = _core(lower, upper, work)
    node, _st, fd = core.create(core.root, "new", 0o755, os.O_WRONLY, ME)
    os.close(fd)
    assert node.nocaps
    caps = b"\x01\x00\x00\x02" + b"\x00" * 16  # VFS_CAP_REVISION_2, no capabilities
    with pytest.raises(OSError, match="No data available") as info:
        core.getxattr(node, "security.capability")
    assert info.value.errno == errno.ENODATA
    core.setxattr(node, "security.capability", caps, 0)
    assert not node.nocaps
    assert core.getxattr(node, "security.capability") == caps
    lower_node = core.lookup(core.root, "f")
    assert not lower_node.nocaps  # unknown for lower files: asked from the disk
