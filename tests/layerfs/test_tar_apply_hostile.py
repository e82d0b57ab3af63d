"""apply_layer against hostile layer tars: one test per case of issue 4's "Hostile input".

Every test plants a sentinel dir next to the layer dir and checks that nothing outside the
layer dir changed, and that the error names the offending entry. The tars are built by hand
with ``tarfile`` (``addfile`` writes names verbatim, ``..`` and ``/`` included).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard

from conftest import require_root
from overunder.errors import IntegrityError, InvalidArgument, Unsupported
from overunder.layerfs.tar_apply import ApplyResult, apply_layer, verify_diff_id

Entry = tuple[tarfile.TarInfo, bytes]


def reg(name: str, data: bytes = b"x", mode: int = 0o644, uid: int = 0, gid: int = 0) -> Entry:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.uid, ti.gid, ti.mtime = len(data), mode, uid, gid, 1_600_000_000
    return ti, data


def d(name: str, mode: int = 0o755) -> Entry:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, mode, 1_600_000_000
    return ti, b""


def sym(name: str, target: str) -> Entry:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = tarfile.SYMTYPE, target
    return ti, b""


def lnk(name: str, target: str) -> Entry:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = tarfile.LNKTYPE, target
    return ti, b""


def dev(name: str, kind: bytes, major: int = 1, minor: int = 3) -> Entry:
    ti = tarfile.TarInfo(name)
    ti.type, ti.devmajor, ti.devminor, ti.mode = kind, major, minor, 0o666
    return ti, b""


def make_tar(*entries: Entry) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in entries:
            tf.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    return buf.getvalue()


@dataclass
class Box:
    """A layer dir and a sentinel dir beside it, with a snapshot of everything outside."""

    top: Path
    dest: Path
    outside: Path

    def snapshot(self) -> dict[str, tuple[int, bytes]]:
        out: dict[str, tuple[int, bytes]] = {}
        for dirpath, dirnames, filenames in os.walk(self.top):
            if Path(dirpath).is_relative_to(self.dest):
                dirnames[:] = []
                continue
            for n in dirnames + filenames:
                p = Path(dirpath, n)
                if p == self.dest:
                    continue
                st = p.lstat()
                data = p.read_bytes() if stat.S_ISREG(st.st_mode) else b""
                out[str(p)] = (st.st_mode, data)
        return out

    def apply(self, data: bytes, **kw: object) -> ApplyResult:
        return apply_layer(io.BytesIO(data), self.dest, name="hostile", **kw)  # type: ignore[arg-type]


@pytest.fixture
def box(tmp_path: Path) -> Iterator[Box]:
    dest = tmp_path / "layer"
    outside = tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (outside / "sentinel").write_bytes(b"keep me")
    b = Box(tmp_path, dest, outside)
    before = b.snapshot()
    yield b
    assert b.snapshot() == before, "something outside the layer dir changed"


def test_dotdot_name_is_refused(box: Box) -> None:
    with pytest.raises(InvalidArgument, match=r"'\.\./outside/pwn'.*'\.\.'"):
        box.apply(make_tar(reg("../outside/pwn")))


def test_dotdot_inside_the_name_is_refused(box: Box) -> None:
    with pytest.raises(InvalidArgument, match=r"a/\.\./\.\./outside/pwn"):
        box.apply(make_tar(d("a"), reg("a/../../outside/pwn")))


def test_absolute_name_is_refused(box: Box) -> None:
    target = str(box.outside / "pwn")
    with pytest.raises(InvalidArgument, match="absolute names"):
        box.apply(make_tar(reg(target)))
    assert not (box.outside / "pwn").exists()


@pytest.mark.parametrize("how", ["absolute", "relative"])
def test_symlink_planted_then_written_through_same_layer_fails(box: Box, how: str) -> None:
    target = str(box.outside) if how == "absolute" else "../outside"
    with pytest.raises(InvalidArgument, match=r"entry 'x/pwn'.*x is a symlink"):
        box.apply(make_tar(sym("x", target), reg("x/pwn", b"owned")))
    # The link itself is data and stays; nothing went through it.
    assert os.readlink(box.dest / "x") == target
    assert not (box.outside / "pwn").exists()


def test_symlink_planted_in_a_lower_layer_is_not_written_through(box: Box) -> None:
    """Layer N plants the link, layer N+1 writes through it (GNU tar CVE-2025-45582)."""
    box.apply(make_tar(sym("etc", str(box.outside))))
    with pytest.raises(InvalidArgument, match=r"entry 'etc/cron\.d/?'.*etc is a symlink"):
        box.apply(make_tar(d("etc/cron.d"), reg("etc/cron.d/pwn")), flatten=True)
    with pytest.raises(InvalidArgument, match=r"entry 'etc/pwn'"):
        box.apply(make_tar(reg("etc/pwn")))


def test_chained_symlinks_are_not_written_through(box: Box) -> None:
    tar = make_tar(
        sym("a", "b"),
        sym("b", "c/../c"),
        d("c0"),
        sym("c", str(box.outside)),
        reg("a/pwn"),
    )
    with pytest.raises(InvalidArgument, match=r"entry 'a/pwn'.*a is a symlink"):
        box.apply(tar)


def test_file_entry_over_a_symlink_replaces_the_link(box: Box) -> None:
    """A later entry named like a planted link replaces the link; it never writes the target."""
    box.apply(make_tar(sym("s", str(box.outside / "sentinel")), reg("s", b"new")))
    assert not (box.dest / "s").is_symlink()
    assert (box.dest / "s").read_bytes() == b"new"


def test_hard_link_to_outside_is_refused(box: Box) -> None:
    with pytest.raises(InvalidArgument, match=r"entry 'h'.*hard link target '\.\./outside"):
        box.apply(make_tar(lnk("h", "../outside/sentinel")))
    with pytest.raises(InvalidArgument, match=r"entry 'h2'.*absolute"):
        box.apply(make_tar(lnk("h2", str(box.outside / "sentinel"))))


def test_hard_link_to_missing_target_is_refused(box: Box) -> None:
    with pytest.raises(InvalidArgument, match=r"entry 'h'.*'nothere' is not an entry of this"):
        box.apply(make_tar(reg("a"), lnk("h", "nothere")))


def test_hard_link_to_a_later_entry_is_refused(box: Box) -> None:
    with pytest.raises(InvalidArgument, match=r"entry 'h'"):
        box.apply(make_tar(lnk("h", "a"), reg("a")))


def test_hard_link_through_a_symlinked_dir_is_refused(box: Box) -> None:
    tar = make_tar(
        d("real"), reg("real/f"), sym("real2", str(box.outside)), lnk("h", "real2/sentinel")
    )
    with pytest.raises(InvalidArgument, match=r"entry 'h'"):
        box.apply(tar)


def test_hard_link_to_a_symlink_links_the_symlink_itself(box: Box) -> None:
    """cpython#157190: a hard link to a symlink must not copy or open the link's target."""
    box.apply(make_tar(sym("s", str(box.outside / "sentinel")), lnk("h", "s")))
    assert (box.dest / "h").is_symlink()
    assert os.lstat(box.dest / "h").st_ino == os.lstat(box.dest / "s").st_ino


def test_hard_link_to_a_directory_is_refused(box: Box) -> None:
    with pytest.raises(InvalidArgument, match=r"entry 'h'.*is a directory"):
        box.apply(make_tar(d("dir"), lnk("h", "dir")))


@pytest.mark.parametrize("marker", [".wh.", ".wh..", ".wh...", "sub/.wh..", "sub/.wh..."])
def test_whiteout_names_for_the_dir_itself_or_its_parent_are_refused(box: Box, marker: str) -> None:
    with pytest.raises(InvalidArgument, match=f"entry '{marker}'"):
        box.apply(make_tar(d("sub"), reg("sub/keep"), reg(marker, b"")))
    if "/" in marker:
        assert (box.dest / "sub" / "keep").exists()


def test_whiteout_marker_must_be_a_regular_file(box: Box) -> None:
    with pytest.raises(InvalidArgument, match=r"entry '\.wh\.foo/?'.*regular file"):
        box.apply(make_tar(d(".wh.foo")))
    with pytest.raises(InvalidArgument, match=r"entry '\.wh\.foo/x'"):
        box.apply(make_tar(reg(".wh.foo/x")))


def test_whiteout_through_a_symlinked_parent_deletes_nothing_outside(box: Box) -> None:
    """tinylabscom/mvm#852: whiteout removal through a symlinked parent deleted host files."""
    tar = make_tar(sym("lnk", str(box.outside)), reg("lnk/.wh.sentinel", b""))
    with pytest.raises(InvalidArgument, match=r"entry 'lnk/\.wh\.sentinel'.*symlink"):
        box.apply(tar)
    with pytest.raises(InvalidArgument, match=r"entry 'lnk/\.wh\.sentinel'"):
        box.apply(make_tar(reg("lnk/.wh.sentinel", b"")), flatten=True)
    opq = make_tar(reg("lnk/.wh..wh..opq", b""))
    with pytest.raises(InvalidArgument, match=r"lnk/\.wh\.\.wh\.\.opq"):
        box.apply(opq, flatten=True)
    with pytest.raises(InvalidArgument, match=r"lnk/\.wh\.\.wh\.\.opq"):
        box.apply(opq)


@pytest.mark.parametrize("entry", [reg("./"), reg("."), sym(".", "/"), sym("./", "x"), reg("")])
def test_entry_changing_the_type_of_the_root_is_refused(box: Box, entry: Entry) -> None:
    with pytest.raises(InvalidArgument, match="change the type of the layer root"):
        box.apply(make_tar(entry))
    assert box.dest.is_dir()
    assert not box.dest.is_symlink()


def test_root_dir_entry_sets_root_metadata(box: Box) -> None:
    box.apply(make_tar(d("./", mode=0o750), reg("a")))
    assert stat.S_IMODE(box.dest.stat().st_mode) == 0o750


def test_device_nodes_need_permission(box: Box) -> None:
    require_root()
    tar = make_tar(dev("null", tarfile.CHRTYPE), dev("sda", tarfile.BLKTYPE, 8, 0))
    with pytest.raises(Unsupported, match=r"entry 'null'.*device node"):
        box.apply(tar, devices=False)
    assert not (box.dest / "null").exists()
    box.apply(tar)  # root: allowed by default, like Docker
    st = os.lstat(box.dest / "null")
    assert stat.S_ISCHR(st.st_mode)
    assert os.major(st.st_rdev) == 1
    assert os.minor(st.st_rdev) == 3
    assert stat.S_ISBLK(os.lstat(box.dest / "sda").st_mode)


def test_fifo_is_created_without_device_permission(box: Box) -> None:
    box.apply(make_tar(dev("fifo", tarfile.FIFOTYPE)), devices=False)
    assert stat.S_ISFIFO(os.lstat(box.dest / "fifo").st_mode)


def test_setuid_and_setgid_are_kept_as_data(box: Box) -> None:
    require_root()
    tar = make_tar(
        reg("su", b"#!", mode=0o4755, uid=1000, gid=1000),
        reg("sg", b"#!", mode=0o2711, uid=0, gid=50),
        d("sticky", mode=0o1777),
    )
    box.apply(tar)
    st = os.lstat(box.dest / "su")
    assert stat.S_IMODE(st.st_mode) == 0o4755
    assert (st.st_uid, st.st_gid) == (1000, 1000)
    st = os.lstat(box.dest / "sg")
    assert stat.S_IMODE(st.st_mode) == 0o2711
    assert st.st_gid == 50
    assert stat.S_IMODE(os.lstat(box.dest / "sticky").st_mode) == 0o1777


def test_duplicate_file_entries_later_wins(box: Box) -> None:
    box.apply(make_tar(reg("f", b"first", mode=0o600), reg("f", b"second", mode=0o640)))
    assert (box.dest / "f").read_bytes() == b"second"
    assert stat.S_IMODE((box.dest / "f").stat().st_mode) == 0o640


def test_duplicate_dir_entries_merge_and_later_metadata_wins(box: Box) -> None:
    box.apply(make_tar(d("a", 0o700), reg("a/x"), d("a", 0o751), reg("a/y")))
    assert sorted(p.name for p in (box.dest / "a").iterdir()) == ["x", "y"]
    assert stat.S_IMODE((box.dest / "a").stat().st_mode) == 0o751


def test_file_over_dir_replaces_the_dir_like_docker(box: Box) -> None:
    box.apply(make_tar(d("a"), reg("a/x"), d("a/sub"), reg("a", b"now a file")))
    assert (box.dest / "a").read_bytes() == b"now a file"


def test_dir_and_symlink_over_file_replace_it(box: Box) -> None:
    box.apply(make_tar(reg("a"), d("a"), reg("a/x"), reg("b"), sym("b", "a")))
    assert (box.dest / "a" / "x").exists()
    assert os.readlink(box.dest / "b") == "a"


def test_dir_replaced_by_symlink_then_written_through_fails(box: Box) -> None:
    """The cached dir fd of ``a`` must not survive ``a`` becoming a symlink."""
    tar = make_tar(d("a"), reg("a/x"), sym("a", str(box.outside)), reg("a/pwn"))
    with pytest.raises(InvalidArgument, match=r"entry 'a/pwn'.*a is a symlink"):
        box.apply(tar)


def test_forged_overlay_xattrs_are_dropped(box: Box) -> None:
    require_root()
    ti, data = d("dir")
    ti.pax_headers = {
        "SCHILY.xattr.trusted.overlay.opaque": "y",
        "SCHILY.xattr.user.overlay.opaque": "y",
        "SCHILY.xattr.trusted.overlay.redirect": "/etc",
        "SCHILY.xattr.user.keep": "kept",
    }
    fi, fdata = reg("dir/f", b"")
    fi.pax_headers = {"SCHILY.xattr.trusted.overlay.whiteout": "y", "SCHILY.xattr.user.k": "v"}
    box.apply(make_tar((ti, data), (fi, fdata)))
    names = os.listxattr(box.dest / "dir")
    assert "user.keep" in names
    assert not [n for n in names if ".overlay." in n]
    assert os.listxattr(box.dest / "dir" / "f") == ["user.k"]


def test_aufs_metadata_is_skipped(box: Box) -> None:
    tar = make_tar(
        d(".wh..wh.plnk"),
        reg(".wh..wh.plnk/123.456", b"aufs"),
        reg(".wh..wh.aufs", b""),
        d(".wh..wh.orph"),
        reg("real"),
    )
    result = box.apply(tar)
    assert sorted(os.listdir(box.dest)) == ["real"]
    assert result.entries == 5


def _layer_tar() -> bytes:
    return make_tar(d("dir"), reg("dir/a", os.urandom(3000)), reg("b", b"hello" * 1000))


def test_truncated_gzip_is_an_integrity_error_naming_the_layer(box: Box) -> None:
    gz = gzip.compress(_layer_tar())
    with pytest.raises(IntegrityError, match=r"layer hostile: the gzip stream is truncated"):
        box.apply(gz[: len(gz) // 2])
    with pytest.raises(IntegrityError, match="truncated"):
        box.apply(gz[:-4])  # only the trailer's size field missing


def test_corrupt_gzip_is_an_integrity_error(box: Box) -> None:
    gz = bytearray(gzip.compress(_layer_tar()))
    gz[len(gz) // 2] ^= 0xFF
    gz[len(gz) // 2 + 1] ^= 0xFF
    with pytest.raises(IntegrityError, match=r"layer hostile: corrupt gzip data"):
        box.apply(bytes(gz))


def test_garbage_after_gzip_is_an_integrity_error(box: Box) -> None:
    with pytest.raises(IntegrityError, match="after the end of the gzip stream"):
        box.apply(gzip.compress(_layer_tar()) + b"garbage")


def test_multi_member_gzip_is_one_stream(box: Box) -> None:
    raw = _layer_tar()
    result = box.apply(gzip.compress(raw[:4096]) + gzip.compress(raw[4096:]))
    assert result.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()


def test_truncated_and_corrupt_zstd_are_integrity_errors(box: Box) -> None:
    zs = zstandard.ZstdCompressor(write_checksum=True).compress(_layer_tar())
    with pytest.raises(IntegrityError, match=r"layer hostile: the zstd stream is truncated"):
        box.apply(zs[: len(zs) - 10])
    bad = bytearray(zs)
    bad[len(bad) // 2 : len(bad) // 2 + 8] = b"\xff" * 8
    with pytest.raises(IntegrityError, match=r"layer hostile: corrupt zstd data"):
        box.apply(bytes(bad))


def test_truncated_plain_tar_is_an_integrity_error_naming_the_entry(box: Box) -> None:
    raw = _layer_tar()
    with pytest.raises(IntegrityError, match=r"ends inside entry 'dir/a'"):
        box.apply(raw[: 1536 + 1000])


def test_garbled_header_is_not_a_quiet_end(box: Box) -> None:
    raw = bytearray(_layer_tar())
    # the third header (after dir/ and dir/a's header + 3000 bytes of data)
    off = 512 + 512 + 3072  # dir/ header, dir/a header and data, then b's header
    raw[off + 148 : off + 156] = b"garbage!"
    with pytest.raises(IntegrityError, match=r"corrupt tar header|truncated"):
        box.apply(bytes(raw))


def test_not_a_tar_is_an_integrity_error(box: Box) -> None:
    with pytest.raises(IntegrityError, match="layer hostile: corrupt tar header at offset 0"):
        box.apply(b"this is not a tar archive" * 100)


def test_empty_stream_is_an_empty_layer(box: Box) -> None:
    """Go's archive/tar (so Docker) reads an empty stream as an archive without entries."""
    result = box.apply(b"")
    assert (result.entries, result.size) == (0, 0)
    assert result.diff_id == "sha256:" + hashlib.sha256(b"").hexdigest()


def test_diff_id_covers_the_whole_tar_including_padding(box: Box) -> None:
    raw = _layer_tar() + b"\0" * 4096  # extra zero records after the trailer
    result = box.apply(gzip.compress(raw))
    assert result.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert result.size == len(raw)
    verify_diff_id(result, result.diff_id, layer="l")


def test_diff_id_mismatch_is_detected(box: Box) -> None:
    result = box.apply(_layer_tar())
    with pytest.raises(IntegrityError, match=r"layer sha256:abc: uncompressed content has diff"):
        verify_diff_id(result, "sha256:" + "0" * 64, layer="sha256:abc")


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_decompression_bomb_stops_at_the_cap(box: Box, codec: str) -> None:
    ti = tarfile.TarInfo("zeros")
    ti.size = 64 << 20
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        tf.addfile(ti, io.BytesIO(bytes(ti.size)))
    raw = buf.getvalue()
    blob = gzip.compress(raw, 9) if codec == "gzip" else zstandard.ZstdCompressor(19).compress(raw)
    del raw, buf
    assert len(blob) < 1 << 20  # a bomb: <1 MiB in, 64 MiB out
    with pytest.raises(InvalidArgument, match=r"more than 4194304 bytes.*cap") as info:
        box.apply(blob, max_bytes=4 << 20)
    assert "OVERUNDER_MAX_LAYER_BYTES" in (info.value.hint or "")
    # stopped early: the member may not even have been started
    zeros = box.dest / "zeros"
    assert not zeros.exists() or zeros.stat().st_size <= 4 << 20


def test_errors_from_the_readahead_thread_reach_the_caller(box: Box) -> None:
    """A member of 8 MiB or more is inflated on a thread: its errors must still surface."""
    raw = make_tar(reg("big", os.urandom(12 << 20)), reg("after", b"x"))
    gz = gzip.compress(raw, 1)
    result = box.apply(gz)
    assert result.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    with pytest.raises(IntegrityError, match="the gzip stream is truncated"):
        box.apply(gz[: len(gz) * 3 // 4])
    bad = bytearray(gz)
    bad[len(bad) * 3 // 4 : len(bad) * 3 // 4 + 64] = bytes(64)
    with pytest.raises(IntegrityError, match="corrupt gzip data"):
        box.apply(bytes(bad))


def test_nul_bytes_in_pax_names_are_refused(box: Box) -> None:
    ti, data = reg("placeholder")
    ti.pax_headers = {"path": "a\0b"}
    with pytest.raises(InvalidArgument, match="NUL"):
        box.apply(make_tar((ti, data)))
    si, sdata = sym("s", "x")
    si.pax_headers = {"linkpath": "/etc\0/passwd"}
    with pytest.raises(InvalidArgument, match="NUL"):
        box.apply(make_tar((si, sdata)))
    xi, xdata = reg("x")
    xi.pax_headers = {"SCHILY.xattr.user.a\0b": "v"}
    box.apply(make_tar((xi, xdata)))  # an xattr name no kernel accepts is dropped
    assert (box.dest / "x").exists()
