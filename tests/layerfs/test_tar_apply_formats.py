"""The tar dialects apply_layer reads (its own strict reader, overunder.layerfs.tarstream):
GNU long names and base-256 numbers, PAX global headers, ustar prefixes, V7 dirs, zstd, and
what it refuses (sparse files, bad checksums)."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
import zstandard

from overunder.errors import IntegrityError, InvalidArgument
from overunder.layerfs.compression import Compression, sniff
from overunder.layerfs.tar_apply import ApplyResult, apply_layer


def build(fmt: int, entries: list[tuple[tarfile.TarInfo, bytes]], **kw: object) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, **kw) as tf:  # type: ignore[call-overload]
        for ti, data in entries:
            tf.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    return buf.getvalue()


def f(name: str, data: bytes = b"data", **attrs: object) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), 0o644, 1_600_000_000
    for k, v in attrs.items():
        setattr(ti, k, v)
    return ti, data


def apply(data: bytes, dest: Path) -> ApplyResult:
    dest.mkdir(exist_ok=True)
    return apply_layer(io.BytesIO(data), dest, name="fmt")


LONG = "d" * 60 + "/" + "e" * 80 + "/" + "f" * 120


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_long_names_in_every_dialect(tmp_path: Path, fmt: int) -> None:
    name = LONG if fmt != tarfile.USTAR_FORMAT else "p" * 150 + "/" + "n" * 90
    link = tarfile.TarInfo("link")
    link.type, link.linkname = tarfile.SYMTYPE, "t" * (150 if fmt != tarfile.USTAR_FORMAT else 90)
    result = apply(build(fmt, [f(name, b"long"), (link, b"")]), tmp_path / "d")
    assert (tmp_path / "d" / name).read_bytes() == b"long"
    assert os.readlink(tmp_path / "d/link") == link.linkname
    assert result.entries == 2


def test_gnu_base256_ids_and_pax_big_ids(tmp_path: Path) -> None:
    big = 0o7777777 + 5
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        dest = tmp_path / str(fmt)
        apply(build(fmt, [f("big", uid=big, gid=big)]), dest)
        st = os.stat(dest / "big")
        assert (st.st_uid, st.st_gid) == (big, big)


def test_pax_global_header_applies_to_later_entries(tmp_path: Path) -> None:
    data = build(
        tarfile.PAX_FORMAT,
        [f("a"), f("b")],
        pax_headers={"mtime": "1234567890.5"},
    )
    apply(data, tmp_path / "d")
    assert os.stat(tmp_path / "d/a").st_mtime_ns == 1_234_567_890_500_000_000


def test_pax_fractional_mtime(tmp_path: Path) -> None:
    ti, data = f("a")
    ti.pax_headers = {"mtime": "1700000000.123456789"}
    apply(build(tarfile.PAX_FORMAT, [(ti, data)]), tmp_path / "d")
    assert os.stat(tmp_path / "d/a").st_mtime_ns == 1_700_000_000_123_456_789


def test_v7_dir_with_trailing_slash(tmp_path: Path) -> None:
    raw = bytearray(build(tarfile.USTAR_FORMAT, [f("olddir/", b"")]))
    raw[156] = 0  # typeflag NUL: a V7 "regular" entry, a dir by its trailing slash
    raw[148:156] = b"        "
    raw[148:156] = b"%06o\0 " % sum(raw[:512])
    apply(bytes(raw), tmp_path / "d")
    assert (tmp_path / "d/olddir").is_dir()


def test_non_utf8_names_round_trip_as_bytes(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9.txt")
    apply(
        build(tarfile.GNU_FORMAT, [f(name)], encoding="utf-8", errors="surrogateescape"),
        tmp_path / "d",
    )
    assert os.listdir(os.fsencode(tmp_path / "d")) == [b"caf\xe9.txt"]


def test_sparse_files_are_refused(tmp_path: Path) -> None:
    raw = bytearray(build(tarfile.GNU_FORMAT, [f("sparse")]))
    raw[156:157] = b"S"
    raw[148:156] = b"        "
    raw[148:156] = b"%06o\0 " % sum(raw[:512])
    with pytest.raises(InvalidArgument, match="GNU sparse"):
        apply(bytes(raw), tmp_path / "d")


def test_bad_checksum_is_corrupt(tmp_path: Path) -> None:
    raw = bytearray(build(tarfile.PAX_FORMAT, [f("a")]))
    raw[0:1] = b"b"
    with pytest.raises(IntegrityError, match="checksum mismatch"):
        apply(bytes(raw), tmp_path / "d")


def test_oversized_pax_header_is_refused(tmp_path: Path) -> None:
    ti, data = f("a")
    ti.pax_headers = {"SCHILY.xattr.user.big": "x" * (17 << 20)}
    with pytest.raises(InvalidArgument, match=r"PAX header .*\(limit"):
        apply(build(tarfile.PAX_FORMAT, [(ti, data)]), tmp_path / "d")


def test_zstd_layer_and_sniffing(tmp_path: Path) -> None:
    raw = build(tarfile.PAX_FORMAT, [f("a", os.urandom(100_000)), f("b", b"b" * 300_000)])
    blob = zstandard.ZstdCompressor().compress(raw)
    assert sniff(blob) is Compression.ZSTD
    result = apply(blob, tmp_path / "d")
    assert result.diff_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    # two frames concatenated are one stream
    half = len(raw) // 2
    cat = zstandard.ZstdCompressor().compress(raw[:half]) + zstandard.ZstdCompressor().compress(
        raw[half:]
    )
    assert apply(cat, tmp_path / "e").diff_id == result.diff_id


def test_modes_and_mtimes_of_dirs_are_set_after_their_children(tmp_path: Path) -> None:
    d = tarfile.TarInfo("ro")
    d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o555, 1_000_000_000
    apply(build(tarfile.PAX_FORMAT, [(d, b""), f("ro/child"), f("ro/child2")]), tmp_path / "d")
    st = os.stat(tmp_path / "d/ro")
    assert stat.S_IMODE(st.st_mode) == 0o555
    assert st.st_mtime == 1_000_000_000
    assert (tmp_path / "d/ro/child2").exists()


def test_hard_links_across_many_dirs(tmp_path: Path) -> None:
    """More dirs than the dir-fd cache holds, with links between far-apart ones."""
    entries = []
    for i in range(300):
        d = tarfile.TarInfo(f"d{i:03d}")
        d.type, d.mode = tarfile.DIRTYPE, 0o755
        entries += [(d, b""), f(f"d{i:03d}/file", str(i).encode())]
    for i in range(300):
        ln = tarfile.TarInfo(f"d{i:03d}/link")
        ln.type, ln.linkname = tarfile.LNKTYPE, f"d{(i + 150) % 300:03d}/file"
        entries.append((ln, b""))
    apply(build(tarfile.PAX_FORMAT, entries), tmp_path / "x")
    for i in range(300):
        link = tmp_path / "x" / f"d{i:03d}/link"
        assert link.read_text() == str((i + 150) % 300)
        assert link.stat().st_nlink == 2


def test_rootless_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not root: no chown (the caller's ids stay), device nodes refused by default, fifos ok.
    (Simulated: the venv's interpreter is not reachable by other users on this machine.)"""
    from overunder.errors import Unsupported

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    dev = tarfile.TarInfo("null")
    dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 3
    with pytest.raises(Unsupported, match=r"entry 'null'.*without root"):
        apply(build(tarfile.PAX_FORMAT, [(dev, b"")]), tmp_path / "a")
    fifo = tarfile.TarInfo("fifo")
    fifo.type = tarfile.FIFOTYPE
    apply(build(tarfile.PAX_FORMAT, [f("owned", uid=1234, gid=2345), (fifo, b"")]), tmp_path / "b")
    st = os.stat(tmp_path / "b/owned")
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    assert stat.S_ISFIFO(os.lstat(tmp_path / "b/fifo").st_mode)
