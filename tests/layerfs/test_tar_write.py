"""write_layer / write_tree: Docker's layer-tar conventions (docker-compat.md §10) and the
archive names of ``docker cp ... -`` / ``export``."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from conftest import require_root
from overunder.errors import NotFound
from overunder.layerfs.tar_apply import apply_layer
from overunder.layerfs.tar_write import write_layer, write_tree
from overunder.layerfs.whiteout import WhiteoutStyle, make_whiteout


def members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        return tf.getmembers()


def names(data: bytes) -> list[str]:
    """Names as written (tarfile strips a dir's trailing slash: put it back)."""
    return [m.name + ("/" if m.isdir() else "") for m in members(data)]


def layer_bytes(upper: Path, **kw: float) -> bytes:
    out = io.BytesIO()
    result = write_layer(upper, out, **kw)
    data = out.getvalue()
    assert result.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert result.size == len(data)
    return data


def kernel_upper(root: Path) -> Path:
    """An upper dir as the kernel leaves it after the tutorial's changes."""
    u = root / "upper"
    (u / "etc").mkdir(parents=True)
    (u / "etc/goodbye.txt").write_text("bye\n")
    make_whiteout(u / "etc", "localtime", style=WhiteoutStyle.CHARDEV)
    (u / "hello.txt").write_text("hello\n")
    (u / "root").mkdir()
    (u / "root/.ash_history").write_text("ls\n")
    (u / "data/rdir").mkdir(parents=True)
    make_whiteout(u / "data/rdir", "sub", style=WhiteoutStyle.CHARDEV)
    (u / "data/opq").mkdir()
    os.setxattr(u / "data/opq", "trusted.overlay.opaque", b"y")
    (u / "data/opq/new.txt").write_text("new\n")
    os.setxattr(u / "data", "trusted.overlay.impure", b"y")
    return u


def test_docker_order_whiteouts_and_opaque_marker(tmp_path: Path) -> None:
    require_root()
    data = layer_bytes(kernel_upper(tmp_path), whiteout_mtime=1_700_000_000)
    assert names(data) == [
        "data/",
        "data/opq/",
        "data/opq/.wh..wh..opq",
        "data/opq/new.txt",
        "data/rdir/",
        "data/rdir/.wh.sub",
        "etc/",
        "etc/goodbye.txt",
        "etc/.wh.localtime",
        "hello.txt",
        "root/",
        "root/.ash_history",
    ]
    by = {m.name: m for m in members(data)}
    w = by["etc/.wh.localtime"]
    assert (w.type, w.size, w.mode, w.uid, w.gid, w.mtime) == (
        tarfile.REGTYPE,
        0,
        0o600,
        0,
        0,
        1_700_000_000,
    )
    o = by["data/opq/.wh..wh..opq"]
    assert (o.type, o.size, o.mode, o.mtime) == (tarfile.REGTYPE, 0, 0o755, 0)
    assert by["hello.txt"].uname == "root"
    assert by["hello.txt"].gname == "root"
    # overlay's own xattrs never reach the tar
    assert not any("overlay" in k for m in members(data) for k in m.pax_headers)


def test_raw_header_fields_match_docker(tmp_path: Path) -> None:
    require_root()
    data = layer_bytes(kernel_upper(tmp_path), whiteout_mtime=1_700_000_000)
    first = data[:512]
    assert first[257:265] == b"ustar\x0000"
    assert first[100:108] == b"0040755\0"  # the mode field carries the type bits
    assert first[:6] == b"data/\0"
    blocks = [data[i : i + 512] for i in range(0, len(data), 512)]
    wh = next(b for b in blocks if b.startswith(b"etc/.wh.localtime\0"))
    assert wh[100:108] == b"0000600\0"  # whiteouts: plain 0600
    assert data.endswith(b"\0" * 1024)


def test_fuse_format_upper_gives_the_same_tar(tmp_path: Path) -> None:
    """fuse-overlayfs' rootless forms: .wh. files, a .wh..wh..opq file (+ its 0/0 .wh..opq)."""
    require_root()
    k = kernel_upper(tmp_path)
    f = tmp_path / "fuse"
    os.system(f"cp -a {k} {f}")
    os.unlink(f / "etc/localtime")
    (f / "etc/.wh.localtime").touch()
    os.unlink(f / "data/rdir/sub")
    (f / "data/rdir/.wh.sub").touch()
    os.removexattr(f / "data/opq", "trusted.overlay.opaque")
    (f / "data/opq/.wh..wh..opq").touch()
    os.mknod(f / "data/opq/.wh..opq", stat.S_IFCHR, os.makedev(0, 0))
    for p in (f / "data/opq", f / "data/rdir", f / "etc"):
        os.utime(p, ns=(os.stat(k / p.relative_to(f)).st_mtime_ns,) * 2)
    assert layer_bytes(f, whiteout_mtime=5) == layer_bytes(k, whiteout_mtime=5)


def test_xattr_whiteouts_in_an_opaque_x_dir(tmp_path: Path) -> None:
    require_root()
    u = tmp_path / "u"
    (u / "d").mkdir(parents=True)
    os.setxattr(u / "d", "trusted.overlay.opaque", b"x")
    (u / "d/gone").touch()
    os.setxattr(u / "d/gone", "trusted.overlay.whiteout", b"y")
    (u / "d/kept").touch()
    assert names(layer_bytes(u)) == ["d/", "d/.wh.gone", "d/kept"]


def test_hard_links_point_at_the_first_name_written(tmp_path: Path) -> None:
    u = tmp_path / "u"
    (u / "data").mkdir(parents=True)
    (u / "data/hardlink.txt").write_text("same")
    os.link(u / "data/hardlink.txt", u / "data/link-target.txt")
    ms = members(layer_bytes(u))
    link = next(m for m in ms if m.name == "data/link-target.txt")
    assert link.type == tarfile.LNKTYPE
    assert link.linkname == "data/hardlink.txt"


def test_long_and_non_ascii_names_big_ids_and_xattrs_round_trip(tmp_path: Path) -> None:
    require_root()
    u = tmp_path / "u"
    deep = u / ("d" * 120) / ("e" * 120)
    deep.mkdir(parents=True)
    (deep / ("f" * 200)).write_text("long")
    (u / "ünïcødé").write_text("u")
    raw = os.fsdecode(b"bad\xffname")
    (u / raw).write_text("b")
    (u / "big").write_text("big")
    os.chown(u / "big", 3_000_000, 3_000_000)
    os.setxattr(u / "big", "user.bin", b"\x00\xff\x01")
    os.symlink("t" * 150, u / "longlink")
    data = layer_bytes(u)
    dest = tmp_path / "dest"
    dest.mkdir()
    apply_layer(io.BytesIO(data), dest)
    assert (dest / deep.relative_to(u) / ("f" * 200)).read_text() == "long"
    assert (dest / "ünïcødé").read_text() == "u"
    assert (dest / raw).read_text() == "b"
    st = os.stat(dest / "big")
    assert (st.st_uid, st.st_gid) == (3_000_000, 3_000_000)
    assert os.getxattr(dest / "big", "user.bin") == b"\x00\xff\x01"
    assert os.readlink(dest / "longlink") == "t" * 150
    # and GNU tar reads it too
    by = {m.name: m for m in members(data)}
    assert by["big"].uid == 3_000_000


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    c = tmp_path / "c"
    (c / "data/keep").mkdir(parents=True)
    (c / "data/keep/a.txt").write_text("a")
    (c / "data/chmod.txt").write_text("c")
    (c / "etc").mkdir()
    (c / "etc/passwd").write_text("root:x:0:0")
    os.symlink("/etc", c / "data/etclink")
    return c


def tree_names(src: str | Path, **kw: object) -> list[str]:
    out = io.BytesIO()
    write_tree(src, out, **kw)  # type: ignore[arg-type]
    return names(out.getvalue())


def test_write_tree_names_like_docker_cp(tree: Path) -> None:
    assert tree_names(tree / "data/keep") == ["keep/", "keep/a.txt"]
    assert tree_names(f"{tree}/data/keep/.") == ["./", "./a.txt"]
    assert tree_names(tree / "data/chmod.txt") == ["chmod.txt"]
    assert tree_names(tree / "data/etclink") == ["etclink"]
    assert tree_names(tree / "data/keep", name="") == ["a.txt"]


def test_write_tree_inside_a_root_resolves_links_in_the_root(tree: Path) -> None:
    out = io.BytesIO()
    write_tree("/data/etclink", out, root=tree)
    (m,) = members(out.getvalue())
    assert m.issym()
    assert m.linkname == "/etc"
    # -L or a trailing slash: the container's /etc, never the host's
    assert tree_names("/data/etclink/", root=tree) == ["etc/", "etc/passwd"]
    assert tree_names("/data/etclink", root=tree, follow=True) == ["etc/", "etc/passwd"]
    assert tree_names("/data/etclink/passwd", root=tree) == ["passwd"]
    with pytest.raises(NotFound):
        write_tree("/data/nothere", io.BytesIO(), root=tree)


def test_write_tree_export_has_no_root_entry(tree: Path) -> None:
    got = tree_names("/", root=tree, name="")
    assert got[0] == "data/"
    assert "etc/passwd" in got


def _deep(root: Path, depth: int) -> int:
    """root/d/d/.../d (``depth`` levels) made through dir fds; returns the deepest dir's fd."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir("d", dir_fd=fd)
        nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    return fd


def _remove_deep(root: Path) -> None:
    """Remove a tree of single-child dirs bottom-up without recursion: pytest's and
    shutil's rmtree recurse per level and hit Python's recursion limit on these trees."""
    fds = [os.open(root, os.O_RDONLY | os.O_DIRECTORY)]
    names: list[str] = []
    while True:
        children = os.listdir(fds[-1])
        sub = [c for c in children if os.path.isdir(f"/proc/self/fd/{fds[-1]}/{c}")]
        for c in children:
            if c not in sub:
                os.unlink(c, dir_fd=fds[-1])
        if not sub:
            break
        names.append(sub[0])
        fds.append(os.open(sub[0], os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
    os.close(fds.pop())
    while names:
        os.rmdir(names.pop(), dir_fd=fds[-1])
        os.close(fds.pop())
    for fd in fds:
        os.close(fd)


def test_deep_trees_have_no_recursion_limit(tmp_path: Path) -> None:
    """A container can make a 1,200-level tree; commit and unpack must both cope."""
    u = tmp_path / "u"
    u.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    try:
        fd = _deep(u, 1200)
        os.close(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        os.close(fd)
        data = layer_bytes(u)
        assert names(data)[-1] == "d/" * 1200 + "leaf"
        apply_layer(io.BytesIO(data), dest)
        out = io.BytesIO()
        write_layer(dest, out)
        assert out.getvalue() == data
    finally:
        _remove_deep(u)
        _remove_deep(dest)
    assert os.listdir(u) == []
    assert os.listdir(dest) == []


def test_race_write_tree_never_archives_outside(tmp_path: Path) -> None:
    """docker cp out while the container swaps a dir for a symlink to a host dir
    (CVE-2018-15664, read side): the host file must never end up in the archive."""
    import ctypes
    import threading

    libc = ctypes.CDLL(None, use_errno=True)
    root = tmp_path / "root"
    (root / "data/d").mkdir(parents=True)
    (root / "data/d/inside.txt").write_text("in")
    secret = tmp_path / "host"
    secret.mkdir()
    (secret / "shadow").write_text("host secret")
    os.symlink(str(secret), root / "data/evil")
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            libc.renameat2(-100, bytes(root / "data/d"), -100, bytes(root / "data/evil"), 2)

    t = threading.Thread(target=swap, daemon=True)
    t.start()
    try:
        for _ in range(100):
            for src, follow in (("/data", False), ("/data/d", True), ("/data/d/", False)):
                out = io.BytesIO()
                try:
                    write_tree(src, out, root=root, follow=follow)
                except NotFound:
                    continue  # the link resolved (inside the root) to nothing: fine
                assert b"host secret" not in out.getvalue()
                assert "shadow" not in "".join(names(out.getvalue()))
    finally:
        stop.set()
        t.join()
