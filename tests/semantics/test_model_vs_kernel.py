"""The OverlayModel against the real kernel overlay, one test per operation family: after every
operation the errno, the merged tree and the upper dir must be the same."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from kernel_harness import T_LOW, Op, op, run_and_compare

from conftest import require_overlay
from overunder.semantics import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    RENAME_WHITEOUT,
    Entry,
    Kind,
    Layer,
    OverlayModel,
    content_id,
)

T = T_LOW - 86_400 * 1_000_000_000
BLOBS = [b"f0\n", b"x\n", b"top\n", b"bottom\n", b"a\n", b"b\n", b"c\n", b"y\n", b"hl\n", b"s\n"]
CONTENTS = {content_id(b): b for b in BLOBS}


def f(data: bytes, **kw: object) -> Entry:
    kw.setdefault("mtime_ns", T)
    return Entry.file(data, **kw)  # type: ignore[arg-type]


def d(**kw: object) -> Entry:
    kw.setdefault("mtime_ns", T)
    return Entry.dir(**kw)  # type: ignore[arg-type]


L0 = Layer(
    {
        "": d(),
        "d": d(),
        "d/f": f(b"f0\n"),
        "d/sub": d(mode=0o750),
        "d/sub/x": f(b"x\n"),
        "shadow": f(b"top\n"),
        "m": d(),
        "m/a": f(b"a\n"),
        "gone": Entry.whiteout(),
        "opq": d(opaque=True),
        "opq/new": f(b"y\n"),
        "hl1": f(b"hl\n", link_id="h"),
        "hl2": f(b"hl\n", link_id="h"),
        "ln": Entry.symlink("d/f", mtime_ns=T),
        "dangling": Entry.symlink("nowhere/x", mtime_ns=T),
        "suid": f(b"s\n", mode=0o6755),
        "xf": f(b"x\n", mode=0o640, uid=1, gid=1, xattrs=[("user.foo", b"bar")]),
        "fifo": Entry.special(Kind.FIFO, mode=0o600, mtime_ns=T),
    }
)
L1 = Layer(
    {
        "": d(),
        "shadow": f(b"bottom\n"),
        "m": d(mode=0o700),
        "m/b": f(b"b\n"),
        "m/sub": d(),
        "m/sub/c": f(b"c\n"),
        "gone": f(b"c\n"),
        "opq": d(),
        "opq/old": f(b"c\n"),
        "lonely": d(),
        "lonely/y": f(b"y\n"),
        "emptydir": d(),
    }
)
LOWERS = [L0, L1]


def run(tmp_path: Path, ops: list[Op], *, upper: Layer | None = None, **kw: bool) -> OverlayModel:
    require_overlay()
    return run_and_compare(
        tmp_path, LOWERS, Layer() if upper is None else upper, ops, contents=CONTENTS, **kw
    )


FAMILIES: dict[str, list[Op]] = {
    "create and write": [
        op("create", "new.txt", b"hello"),
        op("create", "d/f", b"rewritten"),
        op("create", "d/f", b"x", exclusive=True),
        op("create", "m/sub/deep", b"1", mode=0o600),
        op("create", "gone", b"back"),
        op("create", "nodir/x", b""),
        op("create", "d", b""),
        op("create", "ln", b"via link"),
        op("create", "dangling", b"made"),
        op("write", "shadow", b"TOP", offset=0),
        op("write", "m/b", b"zz", offset=5),
        op("append", "m/a", b"more\n"),
        op("append", "missing", b"x"),
        op("truncate", "d/sub/x", 1),
        op("truncate", "m/sub/c", 0),
        op("write", "d", b"x"),
        op("append", "fifo", b"x"),
        op("truncate", "fifo", 0),
        op("create", "fifo", b"x"),
    ],
    "unlink": [
        op("unlink", "shadow"),
        op("unlink", "shadow"),
        op("unlink", "m/sub/c"),
        op("unlink", "d"),
        op("unlink", "gone"),
        op("create", "fresh", b"1"),
        op("unlink", "fresh"),
        op("unlink", "hl1"),
        op("unlink", "ln"),
        op("unlink", "fifo"),
        op("unlink", "m/a/x"),
        op("unlink", "/"),
    ],
    "rmdir and mkdir": [
        op("rmdir", "m"),
        op("rmdir", "emptydir"),
        op("rmdir", "emptydir"),
        op("mkdir", "emptydir"),
        op("rmdir", "d/f"),
        op("rmdir", "/"),
        op("unlink", "m/sub/c"),
        op("rmdir", "m/sub"),
        op("mkdir", "m/sub", 0o700),
        op("unlink", "m/a"),
        op("unlink", "m/b"),
        op("rmdir", "m"),
        op("mkdir", "m"),
        op("mkdir", "m"),
        op("mkdir", "brand/new"),
        op("mkdir", "brand"),
        op("mkdir", "brand/new", 0o2775),
        op("mkdir", "brand/new/inherits"),
        op("unlink", "opq/new"),
        op("rmdir", "opq"),
        op("unlink", "shadow"),
        op("mkdir", "shadow"),
        op("mkdir", "gone"),
        op("mkdir", "/"),
    ],
    "metadata": [
        op("chmod", "d/f", 0o600),
        op("chmod", "m", 0o711),
        op("chown", "m/sub/c", 5, 6),
        op("chown", "suid", 0, -1),
        op("utime", "shadow", 1_000_000_000),
        op("utime", "lonely", 2_000_000_000),
        op("chmod", "ln", 0o640),
        op("chown", "dangling", 3, 3, follow_symlinks=False),
        op("setxattr", "xf", "user.new", b"1"),
        op("removexattr", "xf", "user.foo"),
        op("removexattr", "xf", "user.foo"),
        op("removexattr", "m/b", "user.none"),
        op("setxattr", "lonely/y", "trusted.overlay.opaque", b"y"),
        op("chmod", "nothere", 0o600),
        op("setxattr", "ln", "user.k", b"1", follow_symlinks=False),
        op("setxattr", "ln", "trusted.k", b"1", follow_symlinks=False),
        op("setxattr", "ln", "user.k", b"via"),
        op("removexattr", "ln", "user.k", follow_symlinks=False),
        op("setxattr", "fifo", "user.k", b"1"),
        op("utime", "ln", 3_000_000_000, follow_symlinks=False),
        op("chown", "ln", 4, 4, follow_symlinks=False),
    ],
    "links and nodes": [
        op("link", "d/f", "d/f2"),
        op("link", "d/f", "hl_new"),
        op("link", "d", "dlink"),
        op("link", "nothere", "x"),
        op("link", "shadow", "d/f"),
        op("append", "d/f2", b"shared\n"),
        op("link", "hl1", "hl3"),
        op("link", "ln", "ln2"),
        op("symlink", "/abs/target", "sl"),
        op("symlink", "x", "sl"),
        op("symlink", "x", "gone"),
        op("mknod", "p", Kind.FIFO, 0o640),
        op("mknod", "dev", Kind.CHARDEV, 0o600, (1, 3)),
        op("mknod", "wh", Kind.CHARDEV, 0o600, (0, 0)),
        op("mknod", "blk", Kind.BLOCKDEV, 0o600, (7, 1)),
        op("mknod", "reg", Kind.FILE, 0o600),
    ],
    "rename files": [
        op("rename", "shadow", "renamed"),
        op("rename", "renamed", "m/a"),
        op("rename", "m/b", "lonely/b2"),
        op("rename", "missing", "x"),
        op("rename", "d/f", "d"),
        op("rename", "m/a", "m/a"),
        op("rename", "hl1", "hl2"),
        op("rename", "d/sub/x", "gone"),
        op("rename", "lonely/y", "lonely/z", RENAME_NOREPLACE),
        op("rename", "lonely/z", "lonely/b2", RENAME_NOREPLACE),
        op("rename", "lonely/z", "lonely/b2", RENAME_EXCHANGE),
        op("rename", "lonely/z", "nowhere", RENAME_EXCHANGE),
        op("rename", "lonely/z", "x", RENAME_EXCHANGE | RENAME_NOREPLACE),
        op("rename", "lonely/z", "x", RENAME_WHITEOUT),
        op("rename", "ln", "ln_moved"),
    ],
    "symlinks in paths": [
        op("symlink", "d", "dl"),
        op("create", "dl/new", b"x"),
        op("symlink", "/m", "absm"),
        op("create", "absm/z", b"z"),
        op("mkdir", "absm/newdir"),
        op("symlink", "loop2", "loop1"),
        op("symlink", "loop1", "loop2"),
        op("create", "loop1", b"x"),
        op("create", "loop1/x", b"x"),
        op("symlink", "d/sub/..", "up"),
        op("create", "up/viaparent", b"p"),
        op("symlink", "dl/../m/../shadow", "far"),
        op("append", "far", b"more"),
        op("chmod", "dl", 0o700),
        op("rename", "dl/f", "absm/f3"),
        op("link", "absm/f3", "dl/f4"),
        op("rmdir", "absm"),
        op("unlink", "dl"),
        op("create", "dangling/x", b""),
        op("create", "ln/x", b""),
    ],
    "rename dirs": [
        op("rename", "m", "m2"),
        op("rename", "lonely", "lonely2"),
        op("rename", "opq", "opq2"),
        op("mkdir", "new"),
        op("create", "new/f", b"1"),
        op("rename", "new", "new2"),
        op("rename", "new2", "d/new3"),
        op("rename", "d/new3", "emptydir"),
        op("rename", "emptydir", "emptydir/in"),
        op("rename", "m", "m/sub/x"),
        op("rename", "d", "emptydir"),
        op("mkdir", "e2"),
        op("rename", "emptydir", "e2"),
        op("mkdir", "e3"),
        op("rename", "e3", "m"),
        op("rename", "e3", "shadow"),
        op("rename", "shadow", "e3"),
        op("mkdir", "e4"),
        op("rename", "e3", "e4", RENAME_EXCHANGE),
        op("rename", "e4", "m", RENAME_EXCHANGE),
        op("rename", "e4", "d/f", RENAME_EXCHANGE),
    ],
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_model_matches_kernel(tmp_path: Path, family: str) -> None:
    run(tmp_path, FAMILIES[family])


def test_with_an_existing_upper(tmp_path: Path) -> None:
    upper = Layer(
        {
            "": Entry.dir(),
            "m": d(opaque=True),
            "m/only": f(b"a\n"),
            "lonely": d(),
            "lonely/y": Entry.whiteout(),
            "shadow": Entry.whiteout(),
        }
    )
    run(
        tmp_path,
        [
            op("rmdir", "lonely"),
            op("mkdir", "shadow"),
            op("rename", "m", "m2"),
            op("unlink", "m2/only"),
            op("create", "shadow/x", b"1"),
        ],
        upper=upper,
    )


def test_read_only_mount(tmp_path: Path) -> None:
    require_overlay()
    ops = [
        op("create", "x", b""),
        op("create", "d/f", b""),
        op("create", "no/x", b""),
        op("mkdir", "d"),
        op("mkdir", "newdir"),
        op("unlink", "shadow"),
        op("unlink", "nothere"),
        op("rmdir", "m"),
        op("rename", "shadow", "x"),
        op("chmod", "shadow", 0o600),
        op("chmod", "nothere", 0o600),
        op("link", "shadow", "d/f"),
        op("symlink", "x", "newlink"),
    ]
    model = run_and_compare(tmp_path, LOWERS, None, ops, contents=CONTENTS)
    assert model.upper is None


def test_redirect_dir(tmp_path: Path) -> None:
    run(
        tmp_path,
        [
            op("rename", "m", "m2"),
            op("rename", "m2", "m3"),
            op("rename", "m3", "d/m4"),
            op("rename", "lonely", "d/lonely"),
            op("rename", "d/lonely", "lonely"),
            op("create", "lonely/added", b"1"),
            op("rename", "opq", "opq2"),
            op("rename", "d/sub", "d/sub2"),
            op("mkdir", "e"),
            op("create", "e/x", b""),
            op("rename", "emptydir", "e"),
        ],
        redirect_dir=True,
    )


def test_errors_are_oserrors_with_paths() -> None:
    model = OverlayModel(LOWERS, Layer(), contents=CONTENTS)
    with pytest.raises(OSError, match="cross-device") as info:
        model.rename("m", "m2")
    assert info.value.errno == errno.EXDEV
    assert info.value.filename == "/m"
    assert info.value.filename2 == "/m2"
    assert model.read("ln") == b"f0\n"
