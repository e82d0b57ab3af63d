"""Docker's diff rows (docker-compat.md §3) end to end on the real kernel overlay: mutate
through the mount, read the upper dir from disk, and ``changes_from_upper`` must print
Docker's lines; the OverlayModel, given the same operations, must agree."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kernel_harness import Op, kernel_op, kernel_overlay, op
from test_docker_diff_rules import BASE, CASES, INIT, T0

from conftest import require_overlay
from overunder.layerfs.reader import read_layer
from overunder.semantics import Entry, Layer, OverlayModel, changes_from_upper, content_id

CONTENTS = {
    e.data: b
    for b in (b"UTC0\n", b"x\n", b"same\n", b"", b"abc\n")
    for e in [*BASE.values(), *INIT.values()]
    if e.data == content_id(b)
}


def rm_rf(*paths: str) -> list[Op]:
    return [op("unlink", p) if "." in p.rsplit("/", 1)[-1] else op("rmdir", p) for p in paths]


MUTATIONS: dict[str, list[Op]] = {
    "walkthrough": [
        op("create", "hello.txt", b"hello\n"),
        op("create", "etc/goodbye.txt", b"goodbye\n"),
        op("unlink", "etc/localtime"),
        op("append", "hello.txt", b"hello again\n"),
        op("create", "root/.ash_history", b"cat /hello.txt\n"),
    ],
    "2 new tree": [
        op("mkdir", "a"),
        op("mkdir", "a/b"),
        op("mkdir", "a/b/c"),
        op("create", "a/f1", b"\n"),
        op("create", "a/b/c/f3", b"\n"),
    ],
    "3 deep delete": [op("unlink", "data/rdir/sub/y.txt")],
    "3b deep append": [op("append", "data/rdir/sub/y.txt", b"more\n")],
    "4 chmod": [op("chmod", "data/chmod.txt", 0o600)],
    "4b chown": [op("chown", "data/touch.txt", 1, 1)],
    "4b touch file": [op("utime", "data/touch.txt", T0 + 5_000_000_000)],
    "4b same content": [op("create", "data/same.txt", b"same\n")],
    "4b retarget": [op("unlink", "data/etclink"), op("symlink", "/tmp", "data/etclink")],
    "4b chmod dir": [op("chmod", "data/keep", 0o700)],
    "5 touch dir": [op("utime", "data/keep", T0 + 5_000_000_000)],
    "5 same size rewrite, mtime restored": [
        op("create", "data/same.txt", b"SAME\n"),
        op("utime", "data/same.txt", T0),
    ],
    "6 rm lower tree": rm_rf(
        "data/rdir/x.txt", "data/rdir/sub/y.txt", "data/rdir/sub", "data/rdir"
    ),
    "7 add+delete": [
        op("create", "data/tmp.txt", b"x"),
        op("unlink", "data/tmp.txt"),
        op("create", "tmp.txt", b"x"),
        op("unlink", "tmp.txt"),
        op("mkdir", "data/emptyd"),
        op("rmdir", "data/emptyd"),
    ],
    "7b new dir, child deleted": [
        op("mkdir", "brandnew"),
        op("mkdir", "brandnew/sub"),
        op("create", "brandnew/sub/f.txt", b""),
        op("unlink", "brandnew/sub/f.txt"),
    ],
    "8 file to dir": [
        op("unlink", "data/file2dir"),
        op("mkdir", "data/file2dir"),
        op("create", "data/file2dir/n", b""),
    ],
    "8b dir to file": [*rm_rf("data/keep/keep.txt", "data/keep"), op("create", "data/keep", b"")],
    "9 opaque": [
        *rm_rf("data/opq/a.txt", "data/opq/b.txt", "data/opq/sub/c.txt", "data/opq/sub"),
        op("rmdir", "data/opq"),
        op("mkdir", "data/opq"),
        op("create", "data/opq/new.txt", b"\n"),
    ],
    "9b opaque same names": [
        *rm_rf("data/opq/a.txt", "data/opq/b.txt", "data/opq/sub/c.txt", "data/opq/sub"),
        op("rmdir", "data/opq"),
        op("mkdir", "data/opq"),
        op("create", "data/opq/a.txt", b"\n"),
        op("mkdir", "data/opq/sub"),
        op("create", "data/opq/sub/c.txt", b"\n"),
    ],
    "9c opaque empty": [
        *rm_rf("data/opq/a.txt", "data/opq/b.txt", "data/opq/sub/c.txt", "data/opq/sub"),
        op("rmdir", "data/opq"),
        op("mkdir", "data/opq"),
    ],
    "10 rename lower file": [op("rename", "data/rename-src.txt", "data/renamed.txt")],
    "11 mv lower dir": [
        op("rename", "data/rdir", "data/rdir2"),  # EXDEV: mv copies, then deletes
        op("mkdir", "data/rdir2"),
        op("create", "data/rdir2/x.txt", b"x\n"),
        op("mkdir", "data/rdir2/sub"),
        op("create", "data/rdir2/sub/y.txt", b"x\n"),
        *rm_rf("data/rdir/x.txt", "data/rdir/sub/y.txt", "data/rdir/sub", "data/rdir"),
    ],
    "11b rename new dir": [
        op("mkdir", "newdir"),
        op("create", "newdir/f", b""),
        op("rename", "newdir", "newdir2"),
    ],
    "12 hard link to lower": [op("link", "data/link-target.txt", "data/hardlink.txt")],
    "12b two new hard links": [op("create", "n1", b"1"), op("link", "n1", "n2")],
    "13 symlinks": [op("symlink", "/etc", "abs"), op("symlink", "nowhere", "dangling")],
    "14b rm init files": [op("unlink", ".dockerenv"), op("unlink", "etc/mtab")],
}


def _run(fn: Callable[..., None], *args: Any, **kw: Any) -> int:
    try:
        fn(*args, **kw)
    except OSError as err:
        return err.errno or -1
    return 0


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_docker_row_on_the_kernel(tmp_path: Path, name: str) -> None:
    require_overlay()
    expected = CASES[name][1]
    upper0 = Layer({"": Entry.dir(mtime_ns=T0)})
    model = OverlayModel([INIT, BASE], upper0, contents=CONTENTS)
    failed = []
    with kernel_overlay(tmp_path, [INIT, BASE], upper0, CONTENTS) as mnt:
        for opname, args, kw in MUTATIONS[name]:
            code = _run(kernel_op, mnt.merged, opname, args, kw)
            assert _run(getattr(model, opname), *args, **kw) == code
            if code:
                failed.append((opname, errno.errorcode[code]))
        assert mnt.upper is not None
        upper = read_layer(mnt.upper)
        lowers = [read_layer(d) for d in mnt.lowers]
    # only mv's first try fails: rename(2) of a lower dir
    assert failed == ([("rename", "EXDEV")] if name == "11 mv lower dir" else [])
    assert [str(c) for c in changes_from_upper(upper, lowers)] == expected
    model_upper = model.upper
    assert model_upper is not None
    assert [str(c) for c in changes_from_upper(model_upper, [INIT, BASE])] == expected
