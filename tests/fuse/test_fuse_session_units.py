"""The FUSE transport's pure parts: struct sizes against <linux/fuse.h>, device numbers,
directory-entry packing and mount options. No /dev/fuse needed."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import require
from overunder.errors import InvalidArgument
from overunder.fuse import protocol as P
from overunder.fuse.mounting import MS_NODEV, MS_NOSUID, MS_RDONLY, parse_mount_options
from overunder.fuse.session import EntryAttributes, FileInfo, ReaddirToken, Session

HEADER = Path("/usr/include/linux/fuse.h")


def test_struct_sizes_match_the_kernel_abi() -> None:
    sizes = {
        P.IN_HEADER: 40,
        P.OUT_HEADER: 16,
        P.ATTR: 88,
        P.ENTRY_OUT: 128,
        P.ATTR_OUT: 104,
        P.KSTATFS: 80,
        P.INIT_OUT: 64,
        P.SETATTR_IN: 88,
        P.READ_IN: 40,
        P.WRITE_IN: 40,
        P.RELEASE_IN: 24,
        P.FLUSH_IN: 24,
        P.CREATE_IN: 16,
        P.MKNOD_IN: 16,
        P.RENAME2_IN: 16,
        P.SETXATTR_IN: 16,
        P.FALLOCATE_IN: 32,
        P.LSEEK_IN: 24,
        P.DIRENT: 24,
        P.NOTIFY_INVAL_INODE_OUT: 24,
        P.NOTIFY_INVAL_ENTRY_OUT: 16,
        P.NOTIFY_DELETE_OUT: 24,
    }
    assert {s.format: s.size for s in sizes} == {s.format: n for s, n in sizes.items()}


def test_opcodes_and_flags_match_the_installed_header() -> None:
    require(HEADER.exists(), "linux-libc-dev's <linux/fuse.h>")
    text = HEADER.read_text()
    for op in P.Opcode:
        if op is P.Opcode.STATX and "FUSE_STATX" not in text:
            continue
        assert re.search(rf"\bFUSE_{op.name}\s*=\s*{op.value},", text), op
    for flag in P.InitFlags:
        m = re.search(rf"#define FUSE_{flag.name}\s+\(1 << (\d+)\)", text)
        assert m is not None, flag
        assert 1 << int(m.group(1)) == flag.value, flag
    for fopen in P.FopenFlags:
        m = re.search(rf"#define FOPEN_{fopen.name}\s+\(1 << (\d+)\)", text)
        assert m is not None, fopen
        assert 1 << int(m.group(1)) == fopen.value


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 4095), st.integers(0, (1 << 20) - 1))
def test_device_numbers_survive_the_32_bit_wire_form(major: int, minor: int) -> None:
    dev = os.makedev(major, minor)
    wire = P.encode_dev(dev)
    assert wire < 1 << 32
    assert P.decode_dev(wire) == dev


def _token(size: int, plus: bool = False) -> ReaddirToken:
    session = Session.__new__(Session)
    session._entry_valid = session._attr_valid = (1, 0)
    return ReaddirToken(size, plus, lambda a: Session._entry_bytes(session, a))


def test_dirents_are_8_byte_aligned_and_carry_cookies() -> None:
    token = _token(4096)
    assert token.add(b"a", (5, stat.S_IFREG | 0o644), 1)
    assert token.add(b"longer-name", (6, stat.S_IFDIR | 0o755), 2)
    data = token._payload()
    ino, off, namelen, typ = P.DIRENT.unpack_from(data, 0)
    assert (ino, off, namelen, typ) == (5, 1, 1, 8)  # DT_REG
    assert data[24:25] == b"a"
    second = 32  # 24 + 1, rounded up to 8
    ino, off, namelen, typ = P.DIRENT.unpack_from(data, second)
    assert (ino, off, namelen, typ) == (6, 2, 11, 4)  # DT_DIR
    assert len(data) == second + 40  # 24 + 11 = 35 -> 40


def test_readdir_token_stops_when_the_reply_is_full() -> None:
    token = _token(64)
    assert token.add(b"x" * 8, (1, stat.S_IFREG), 1)  # 32 bytes
    assert token.add(b"y" * 8, (2, stat.S_IFREG), 2)  # 64
    assert not token.add(b"z", (3, stat.S_IFREG), 3)  # would overflow: not taken
    assert len(token._payload()) == 64


def test_readdirplus_entries_carry_attributes() -> None:
    token = _token(4096, plus=True)
    attrs = EntryAttributes(7, st_mode=stat.S_IFREG | 0o600, st_size=42, generation=3)
    assert token.add(b"f", attrs, 9)
    assert token.add(b"g", (8, stat.S_IFLNK), 10)  # no attributes: nodeid 0
    data = token._payload()
    nodeid, gen = P.ENTRY_OUT.unpack_from(data, 0)[:2]
    size = P.ENTRY_OUT.unpack_from(data, 0)[7]
    assert (nodeid, gen, size) == (7, 3, 42)
    assert P.DIRENT.unpack_from(data, 128)[:3] == (7, 9, 1)
    second = (152 + 1 + 7) & ~7
    assert P.ENTRY_OUT.unpack_from(data, second)[0] == 0
    assert P.DIRENT.unpack_from(data, second + 128) == (8, 10, 1, 10)  # DT_LNK


def test_file_info_flags() -> None:
    assert FileInfo(direct_io=True).open_flags() == P.FopenFlags.DIRECT_IO
    assert FileInfo(keep_cache=True, cache_readdir=True).open_flags() == (
        P.FopenFlags.KEEP_CACHE | P.FopenFlags.CACHE_DIR
    )
    assert FileInfo(noflush=True).open_flags() == P.FopenFlags.NOFLUSH


def test_mount_options_split_by_who_handles_them() -> None:
    opts = parse_mount_options(["allow_other,default_permissions", "ro,nosuid,nodev,max_read=4096"])
    assert opts.flags == MS_RDONLY | MS_NOSUID | MS_NODEV
    assert opts.kernel == ("allow_other", "default_permissions", "max_read=4096")
    assert parse_mount_options(["nosuid,suid"]).flags == 0
    assert parse_mount_options(["auto_unmount"]).fusermount == ("auto_unmount",)


@pytest.mark.parametrize("bad", ["bogus", "max_read=lots", "fd=3", "user_id=0"])
def test_unknown_or_reserved_mount_options_are_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(bad.split("=", maxsplit=1)[0])):
        parse_mount_options([bad])


def test_entry_attributes_from_stat() -> None:
    s = os.stat("/")
    a = EntryAttributes.from_stat(s, ino=1, attr_timeout=5.0)
    assert (a.st_ino, a.st_mode, a.st_mtime_ns, a.attr_timeout) == (
        1,
        s.st_mode,
        s.st_mtime_ns,
        5.0,
    )
    assert EntryAttributes.from_stat(s).st_ino == s.st_ino
