"""The on-disk whiteout and opaque formats, on real dirs (and read back by the real kernel)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import require_overlay, require_root
from overunder.errors import AlreadyExists, InvalidArgument
from overunder.layerfs.whiteout import (
    OCI_OPAQUE_MARKER,
    WhiteoutStyle,
    XattrNS,
    is_chardev_whiteout,
    is_opaque,
    is_xattr_whiteout,
    list_dir_layer,
    make_opaque,
    make_whiteout,
    opaque_value,
    probe_capabilities,
    whiteout_target,
)


def test_chardev_whiteout_is_char_0_0_mode_0(tmp_path: Path) -> None:
    require_root()
    make_whiteout(tmp_path, "gone", style=WhiteoutStyle.CHARDEV)
    st = os.lstat(tmp_path / "gone")
    assert stat.S_ISCHR(st.st_mode)
    assert st.st_rdev == 0
    assert stat.S_IMODE(st.st_mode) == 0
    assert is_chardev_whiteout(st)
    with pytest.raises(AlreadyExists):
        make_whiteout(tmp_path, "gone", style=WhiteoutStyle.CHARDEV)


def test_other_char_devices_are_not_whiteouts(tmp_path: Path) -> None:
    require_root()
    os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    assert not is_chardev_whiteout(os.lstat(tmp_path / "null"))
    assert list_dir_layer(tmp_path) == (["null"], set(), False)


def test_wh_file_style(tmp_path: Path) -> None:
    make_whiteout(tmp_path, "gone", style=WhiteoutStyle.WH_FILE)
    st = os.lstat(tmp_path / ".wh.gone")
    assert stat.S_ISREG(st.st_mode)
    assert st.st_size == 0
    assert list_dir_layer(tmp_path) == ([], {"gone"}, False)


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b"])
def test_make_whiteout_rejects_non_names(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidArgument):
        make_whiteout(tmp_path, bad, style=WhiteoutStyle.WH_FILE)


@pytest.mark.parametrize("ns", list(XattrNS))
def test_opaque_xattr_in_both_namespaces(tmp_path: Path, ns: XattrNS) -> None:
    require_root()
    d = tmp_path / "d"
    d.mkdir()
    assert opaque_value(d) is None
    assert not is_opaque(d)
    make_opaque(d, ns=ns)
    assert os.getxattr(d, f"{ns.value}opaque") == b"y"
    assert opaque_value(d) == b"y"
    assert is_opaque(d)
    assert list_dir_layer(d) == ([], set(), True)


def test_opaque_x_is_not_opaque_but_enables_xattr_whiteouts(tmp_path: Path) -> None:
    require_root()
    d = tmp_path / "d"
    d.mkdir()
    (d / "gone").touch()
    os.setxattr(d / "gone", "trusted.overlay.whiteout", b"y")
    (d / "keep").touch()
    # Without "x" on the parent, the kernel does not look for xattr whiteouts.
    assert list_dir_layer(d) == (["gone", "keep"], set(), False)
    os.setxattr(d, "trusted.overlay.opaque", b"x")
    assert not is_opaque(d)
    assert is_xattr_whiteout(d / "gone", os.lstat(d / "gone"))
    assert not is_xattr_whiteout(d / "keep", os.lstat(d / "keep"))
    assert list_dir_layer(d) == (["keep"], {"gone"}, False)


def test_user_namespace_xattr_whiteout(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "gone").touch()
    os.setxattr(d / "gone", "user.overlay.whiteout", b"")
    os.setxattr(d, "user.overlay.opaque", b"x")
    assert list_dir_layer(d) == ([], {"gone"}, False)


def test_wh_markers_and_fuse_overlayfs_opaque_form(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / OCI_OPAQUE_MARKER).touch()
    (d / ".wh.old").touch()
    (d / "new").write_text("n")
    assert list_dir_layer(d) == (["new"], {"old"}, True)


def test_fuse_overlayfs_writes_a_chardev_dot_wh_dot_opq_too(tmp_path: Path) -> None:
    require_root()
    os.mknod(tmp_path / ".wh..opq", stat.S_IFCHR, os.makedev(0, 0))
    (tmp_path / OCI_OPAQUE_MARKER).touch()
    assert list_dir_layer(tmp_path) == ([], set(), True)


@pytest.mark.parametrize("bad", [".wh.", ".wh..", ".wh..."])
def test_markers_naming_the_dir_itself_are_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        whiteout_target(bad)


def test_whiteout_target() -> None:
    assert whiteout_target(".wh.x") == "x"
    assert whiteout_target(".wh..hidden") == ".hidden"
    assert whiteout_target(OCI_OPAQUE_MARKER) is None
    assert whiteout_target(".wh..wh.plnk") is None
    assert whiteout_target("plain") is None


def test_probe_capabilities_as_root(tmp_path: Path) -> None:
    require_root()
    assert probe_capabilities(tmp_path) == (WhiteoutStyle.CHARDEV, XattrNS.TRUSTED)
    assert list(tmp_path.iterdir()) == []


def test_probe_capabilities_unprivileged() -> None:
    require_root()
    # pytest's tmp dirs sit under a 0700 dir that nobody cannot traverse.
    d = Path(tempfile.mkdtemp(prefix="ovu-probe-"))
    try:
        d.chmod(0o755)
        os.chown(d, 65534, 65534)
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: drop to nobody, probe, report through the pipe
            try:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
                os.write(wfd, " ".join(probe_capabilities(d)).encode())
            finally:
                os._exit(0)
        os.close(wfd)
        with os.fdopen(rfd, "rb") as r:
            out = r.read().decode()
        os.waitpid(pid, 0)
        # Linux >= 5.8 lets anyone mknod the 0/0 whiteout device; trusted.* stays root's.
        assert out == "chardev user.overlay."
        assert list(d.iterdir()) == []
    finally:
        shutil.rmtree(d)


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[tuple[Path, Path, Path]]:
    """A read-only kernel overlay over two lowers (l1 top); yields (l1, l2, merged) unmounted
    lazily after the test. The test fills l1/l2 and calls the returned mount()."""
    require_overlay()
    l1, l2, m = tmp_path / "l1", tmp_path / "l2", tmp_path / "m"
    for p in (l1, l2, m):
        p.mkdir()
    yield l1, l2, m
    if os.path.ismount(m):
        subprocess.run(["umount", m], check=True)


def _mount(l1: Path, l2: Path, m: Path) -> None:
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={l1}:{l2}", m], check=True
    )


def test_kernel_reads_what_we_write(mounted: tuple[Path, Path, Path]) -> None:
    l1, l2, m = mounted
    for name in ("f", "g"):
        (l2 / name).write_text(name)
    for name in ("opq", "x", "plain"):
        (l2 / name).mkdir()
        (l2 / name / "old").write_text("old")
        (l2 / name / "keep").write_text("keep")
    make_whiteout(l1, "f", style=WhiteoutStyle.CHARDEV)
    (l1 / "opq").mkdir()
    make_opaque(l1 / "opq", ns=XattrNS.TRUSTED)
    (l1 / "opq" / "new").write_text("new")
    (l1 / "x").mkdir()
    (l1 / "x" / "old").touch()
    os.setxattr(l1 / "x" / "old", "trusted.overlay.whiteout", b"y")
    os.setxattr(l1 / "x", "trusted.overlay.opaque", b"x")
    _mount(l1, l2, m)
    assert sorted(os.listdir(m)) == ["g", "opq", "plain", "x"]
    assert os.listdir(m / "opq") == ["new"]
    assert os.listdir(m / "x") == ["keep"]
    assert sorted(os.listdir(m / "plain")) == ["keep", "old"]
    # and our reader agrees with the kernel, layer by layer
    assert list_dir_layer(l1) == (["opq", "x"], {"f"}, False)
    assert list_dir_layer(l1 / "opq") == (["new"], set(), True)
    assert list_dir_layer(l1 / "x") == ([], {"old"}, False)
