"""OCI whiteouts and opaque markers in layer tars -> overlay form, checked on disk and through
the real kernel overlay (image-spec layer.md rules and the consumer bugs of
overlay-semantics.md §3)."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import require_overlay, require_root
from overunder.layerfs.tar_apply import ApplyResult, apply_layer
from overunder.layerfs.whiteout import WhiteoutStyle, XattrNS, list_dir_layer

Entry = tuple[tarfile.TarInfo, bytes]


def reg(name: str, data: bytes = b"x") -> Entry:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), 0o644, 1_600_000_000
    return ti, data


def d(name: str) -> Entry:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 1_600_000_000
    return ti, b""


def wh(name: str) -> Entry:
    ti, data = reg(name, b"")
    ti.mode = 0o600
    return ti, data


def make_tar(*entries: Entry) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in entries:
            tf.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    return buf.getvalue()


def apply(tar: bytes, dest: Path, **kw: object) -> ApplyResult:
    dest.mkdir(exist_ok=True)
    return apply_layer(io.BytesIO(tar), dest, name="wh", **kw)  # type: ignore[arg-type]


def is_whiteout(p: Path) -> bool:
    st = os.lstat(p)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def test_whiteout_becomes_char_0_0_and_the_marker_is_not_extracted(tmp_path: Path) -> None:
    require_root()
    dest = tmp_path / "l"
    apply(make_tar(d("etc"), reg("etc/goodbye.txt"), wh("etc/.wh.localtime")), dest)
    assert sorted(os.listdir(dest / "etc")) == ["goodbye.txt", "localtime"]
    assert is_whiteout(dest / "etc" / "localtime")


def test_whiteout_creates_a_missing_parent(tmp_path: Path) -> None:
    require_root()
    dest = tmp_path / "l"
    apply(make_tar(wh("data/rdir/.wh.sub")), dest)
    assert is_whiteout(dest / "data" / "rdir" / "sub")


def test_wh_file_style_for_rootless(tmp_path: Path) -> None:
    dest = tmp_path / "l"
    apply(make_tar(d("etc"), wh("etc/.wh.localtime")), dest, whiteout_style=WhiteoutStyle.WH_FILE)
    assert os.listdir(dest / "etc") == [".wh.localtime"]
    assert list_dir_layer(dest / "etc") == ([], {"localtime"}, False)


@pytest.mark.parametrize("marker_first", [True, False])
def test_opaque_marker_sets_the_xattr_regardless_of_order(
    tmp_path: Path, marker_first: bool
) -> None:
    require_root()
    entries = [d("data/opq"), reg("data/opq/new.txt"), d("data/opq/sub"), reg("data/opq/sub/z")]
    marker = wh("data/opq/.wh..wh..opq")
    entries.insert(1 if marker_first else len(entries), marker)
    dest = tmp_path / "l"
    apply(make_tar(d("data"), *entries), dest)
    assert os.getxattr(dest / "data/opq", "trusted.overlay.opaque") == b"y"
    # entries of the same layer are kept (moby/moby#17819), the marker is not extracted
    assert sorted(os.listdir(dest / "data/opq")) == ["new.txt", "sub"]


def test_opaque_in_the_user_namespace(tmp_path: Path) -> None:
    dest = tmp_path / "l"
    apply(make_tar(d("o"), wh("o/.wh..wh..opq")), dest, xattr_ns=XattrNS.USER)
    assert os.getxattr(dest / "o", "user.overlay.opaque") == b"y"
    with pytest.raises(OSError, match="No data"):
        os.getxattr(dest / "o", "trusted.overlay.opaque")


def test_opaque_marker_is_not_a_whiteout_of_wh_opq(tmp_path: Path) -> None:
    """go-containerregistry#2372: the marker mis-parsed as ``.wh.`` + ``.wh..opq``."""
    require_root()
    dest = tmp_path / "l"
    apply(make_tar(d("o"), wh("o/.wh..wh..opq")), dest)
    assert os.listdir(dest / "o") == []


@pytest.mark.parametrize("whiteout_first", [True, False])
def test_whiteout_never_hides_an_entry_of_its_own_layer(
    tmp_path: Path, whiteout_first: bool
) -> None:
    require_root()
    entries = [reg("f", b"mine"), wh(".wh.f")]
    if whiteout_first:
        entries.reverse()
    dest = tmp_path / "l"
    apply(make_tar(*entries), dest)
    assert (dest / "f").read_bytes() == b"mine"


def test_kernel_overlay_reads_the_converted_layer(tmp_path: Path) -> None:
    """The unpacked layer, mounted over a lower by the real kernel, hides what it should."""
    require_overlay()
    lower = tmp_path / "lower"
    for p in [
        "etc/localtime",
        "etc/hosts",
        "data/opq/old1",
        "data/opq/old2",
        "data/rdir/sub/x",
        "data/rdir/x.txt",
        "bin/hostname",
        "sub/foo",
    ]:
        (lower / p).parent.mkdir(parents=True, exist_ok=True)
        (lower / p).write_text(p)
    tar = make_tar(
        d("bin"),
        wh("bin/.wh.hostname"),
        d("data"),
        d("data/opq"),
        reg("data/opq/new.txt", b"new"),
        wh("data/opq/.wh..wh..opq"),  # after its sibling
        d("data/rdir"),
        wh("data/rdir/.wh.sub"),
        d("etc"),
        wh("etc/.wh.localtime"),
        wh(".wh.foo"),  # root-level whiteout must not hide sub/foo (fuse-overlayfs#151)
    )
    layer = tmp_path / "layer"
    apply(tar, layer)
    merged = tmp_path / "merged"
    merged.mkdir()
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={layer}:{lower}", merged],
        check=True,
    )
    try:
        assert sorted(os.listdir(merged / "etc")) == ["hosts"]
        assert os.listdir(merged / "bin") == []
        assert os.listdir(merged / "data/opq") == ["new.txt"]
        assert os.listdir(merged / "data/rdir") == ["x.txt"]
        assert (merged / "sub/foo").read_text() == "sub/foo"
    finally:
        subprocess.run(["umount", merged], check=True)


@pytest.fixture
def lower_copy(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "tree"
    for p in [
        "etc/localtime",
        "etc/hosts",
        "data/opq/old/deep",
        "data/opq/keep/lowerchild",
        "sub/foo",
        "foo",
    ]:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_text(p)
    yield root
    shutil.rmtree(root)


@pytest.mark.parametrize("marker_first", [True, False])
def test_flatten_applies_whiteouts_and_opaque_to_the_tree(
    lower_copy: Path, marker_first: bool
) -> None:
    # no entry for data/opq/keep itself: its lower content goes, this layer's file stays
    entries = [reg("data/opq/keep/mine"), reg("data/opq/new.txt")]
    marker = wh("data/opq/.wh..wh..opq")
    entries.insert(0 if marker_first else len(entries), marker)
    tar = make_tar(
        d("data"),
        d("data/opq"),
        *entries,
        wh("etc/.wh.localtime"),
        wh("etc/.wh.nothere"),  # a missing target is not an error (singularity#1261)
        wh(".wh.foo"),
    )
    apply(tar, lower_copy, flatten=True)
    assert sorted(os.listdir(lower_copy / "etc")) == ["hosts"]
    assert sorted(os.listdir(lower_copy / "data/opq")) == ["keep", "new.txt"]
    # the opaque dir's subtree holds only this layer's entries, even below a merged dir
    assert os.listdir(lower_copy / "data/opq/keep") == ["mine"]
    assert not (lower_copy / "foo").exists()
    assert (lower_copy / "sub/foo").exists()


def test_whiteout_replaces_an_existing_entry_in_layer_mode(tmp_path: Path) -> None:
    require_root()
    dest = tmp_path / "l"
    (dest / "gone").mkdir(parents=True)
    (dest / "gone" / "child").write_text("x")
    apply(make_tar(wh(".wh.gone")), dest)
    assert is_whiteout(dest / "gone")


@pytest.mark.parametrize("whiteout_first", [True, False])
def test_whiteout_of_a_dir_this_layer_recreates(tmp_path: Path, whiteout_first: bool) -> None:
    """``.wh.a`` plus ``a/new`` in one layer: the lower ``a`` is gone, ``a/new`` stays."""
    require_overlay()
    lower = tmp_path / "lower"
    (lower / "a").mkdir(parents=True)
    (lower / "a/old").write_text("old")
    entries = [wh(".wh.a"), reg("a/new", b"new")]
    if not whiteout_first:
        entries.reverse()
    tar = make_tar(*entries)
    layer = tmp_path / "layer"
    apply(tar, layer)
    merged = tmp_path / "merged"
    merged.mkdir()
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={layer}:{lower}", merged],
        check=True,
    )
    try:
        assert os.listdir(merged / "a") == ["new"]
    finally:
        subprocess.run(["umount", merged], check=True)
    flat = tmp_path / "flat"
    shutil.copytree(lower, flat)
    apply(tar, flat, flatten=True)
    assert os.listdir(flat / "a") == ["new"]
