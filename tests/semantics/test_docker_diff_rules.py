"""Every row of docker-compat.md §3, on the pure functions: ``changes_from_upper`` on the upper
dir the kernel leaves, and ``diff_trees`` on the two merged trees, must both give Docker's lines."""

from __future__ import annotations

import pytest

from overunder.semantics import (
    Entry,
    Layer,
    changes_from_upper,
    diff_trees,
    flatten,
    layer_from_diff,
)

T0 = 1_000_000_000_000_000_000
T1 = T0 + 5_000_000_000
W = Entry.whiteout()


def d(**kw: object) -> Entry:
    return Entry.dir(mtime_ns=T0, **kw)  # type: ignore[arg-type]


def f(content: bytes = b"x\n", **kw: object) -> Entry:
    kw.setdefault("mtime_ns", T0)
    return Entry.file(content, **kw)  # type: ignore[arg-type]


BASE = Layer(
    {
        "": d(),
        "etc": d(),
        "etc/localtime": f(b"UTC0\n"),
        "root": d(mode=0o700),
        "data": d(),
        "data/chmod.txt": f(),
        "data/file2dir": f(),
        "data/link-target.txt": f(),
        "data/rename-src.txt": f(),
        "data/same.txt": f(b"same\n"),
        "data/touch.txt": f(),
        "data/etclink": Entry.symlink("/etc", mtime_ns=T0),
        "data/keep": d(),
        "data/keep/keep.txt": f(),
        "data/opq": d(),
        "data/opq/a.txt": f(),
        "data/opq/b.txt": f(),
        "data/opq/sub": d(),
        "data/opq/sub/c.txt": f(),
        "data/rdir": d(),
        "data/rdir/x.txt": f(),
        "data/rdir/sub": d(),
        "data/rdir/sub/y.txt": f(),
    }
)
INIT = Layer(
    {
        "": d(),
        ".dockerenv": f(b""),
        "etc": d(),
        "etc/hostname": f(b"abc\n"),
        "etc/hosts": f(b""),
        "etc/mtab": Entry.symlink("/proc/mounts", mtime_ns=T0),
    }
)
LOWERS = [INIT, BASE]


def up(entries: dict[str, Entry]) -> Layer:
    """An upper dir: the given entries plus copied-up (unchanged) parents, like the kernel."""
    merged = flatten(LOWERS)
    out = dict(entries)
    for path in list(entries):
        parent = path.rpartition("/")[0]
        while parent and parent not in out:
            out[parent] = merged[parent]
            parent = parent.rpartition("/")[0]
    out.setdefault("", merged[""])
    return Layer(out)


def check(upper: Layer, expected: list[str]) -> None:
    got = [str(c) for c in changes_from_upper(upper, LOWERS)]
    assert got == expected
    old, new = flatten(LOWERS), flatten([upper, *LOWERS])
    assert [str(c) for c in diff_trees(old, new)] == expected
    assert flatten([layer_from_diff(old, new), old]) == new


CASES: dict[str, tuple[dict[str, Entry], list[str]]] = {
    "1 fresh": ({}, []),
    "walkthrough": (
        {
            "etc/goodbye.txt": f(b"goodbye\n", mtime_ns=T1),
            "etc/localtime": W,
            "hello.txt": f(b"hello\nhello again\n", mtime_ns=T1),
            "root": Entry.dir(mode=0o700, mtime_ns=T1),
            "root/.ash_history": f(b"cat /hello.txt\n", mtime_ns=T1),
        },
        [
            "C /etc",
            "A /etc/goodbye.txt",
            "D /etc/localtime",
            "A /hello.txt",
            "C /root",
            "A /root/.ash_history",
        ],
    ),
    "2 new tree": (
        {"a": d(), "a/b": d(), "a/b/c": d(), "a/b/c/f3": f(), "a/f1": f()},
        ["A /a", "A /a/b", "A /a/b/c", "A /a/b/c/f3", "A /a/f1"],
    ),
    "3 deep delete": (
        {"data/rdir/sub/y.txt": W},
        ["C /data", "C /data/rdir", "C /data/rdir/sub", "D /data/rdir/sub/y.txt"],
    ),
    "3b deep append": (
        {"data/rdir/sub/y.txt": f(b"x\nmore\n", mtime_ns=T1)},
        ["C /data", "C /data/rdir", "C /data/rdir/sub", "C /data/rdir/sub/y.txt"],
    ),
    "4 chmod": ({"data/chmod.txt": f(mode=0o600)}, ["C /data", "C /data/chmod.txt"]),
    "4b chown": ({"data/touch.txt": f(uid=1, gid=1)}, ["C /data", "C /data/touch.txt"]),
    "4b touch file": ({"data/touch.txt": f(mtime_ns=T1)}, ["C /data", "C /data/touch.txt"]),
    "4b same content": (
        {"data/same.txt": f(b"same\n", mtime_ns=T1)},
        ["C /data", "C /data/same.txt"],
    ),
    "4b retarget": (
        {"data/etclink": Entry.symlink("/tmp", mtime_ns=T1)},
        ["C /data", "C /data/etclink"],
    ),
    "4b chmod dir": ({"data/keep": d(mode=0o700)}, ["C /data", "C /data/keep"]),
    "5 touch dir": ({"data/keep": Entry.dir(mtime_ns=T1)}, []),
    "5 same size rewrite, mtime restored": ({"data/same.txt": f(b"SAME\n")}, []),
    "6 rm lower tree": ({"data/rdir": W}, ["C /data", "D /data/rdir"]),
    "7 add+delete": ({"data": Entry.dir(mtime_ns=T1)}, []),
    "7b new dir, child deleted": (
        {"brandnew": d(), "brandnew/sub": d()},
        ["A /brandnew", "A /brandnew/sub"],
    ),
    "8 file to dir": (
        {"data/file2dir": d(opaque=True), "data/file2dir/n": f()},
        ["C /data", "C /data/file2dir", "A /data/file2dir/n"],
    ),
    "8b dir to file": ({"data/keep": f()}, ["C /data", "C /data/keep"]),
    "9 opaque": (
        {"data/opq": Entry.dir(opaque=True, mtime_ns=T1), "data/opq/new.txt": f()},
        [
            "C /data",
            "C /data/opq",
            "D /data/opq/a.txt",
            "D /data/opq/b.txt",
            "A /data/opq/new.txt",
            "D /data/opq/sub",
        ],
    ),
    "9b opaque same names": (
        {
            "data/opq": Entry.dir(opaque=True, mtime_ns=T1),
            "data/opq/a.txt": f(mtime_ns=T1),
            "data/opq/sub": Entry.dir(mtime_ns=T1),
            "data/opq/sub/c.txt": f(mtime_ns=T1),
        },
        [
            "C /data",
            "C /data/opq",
            "C /data/opq/a.txt",
            "D /data/opq/b.txt",
            "C /data/opq/sub",
            "C /data/opq/sub/c.txt",
        ],
    ),
    "9c opaque empty": (
        {"data/opq": Entry.dir(opaque=True, mtime_ns=T1)},
        ["C /data", "C /data/opq", "D /data/opq/a.txt", "D /data/opq/b.txt", "D /data/opq/sub"],
    ),
    "10 rename lower file": (
        {"data/renamed.txt": f(), "data/rename-src.txt": W},
        ["C /data", "D /data/rename-src.txt", "A /data/renamed.txt"],
    ),
    "11 mv lower dir": (
        {
            "data/rdir": W,
            "data/rdir2": d(opaque=True),
            "data/rdir2/sub": d(),
            "data/rdir2/sub/y.txt": f(),
            "data/rdir2/x.txt": f(),
        },
        [
            "C /data",
            "D /data/rdir",
            "A /data/rdir2",
            "A /data/rdir2/sub",
            "A /data/rdir2/sub/y.txt",
            "A /data/rdir2/x.txt",
        ],
    ),
    "11b rename new dir": (
        {"newdir2": d(opaque=True), "newdir2/f": f()},
        ["A /newdir2", "A /newdir2/f"],
    ),
    "12 hard link to lower": (
        {"data/link-target.txt": f(link_id="i"), "data/hardlink.txt": f(link_id="i")},
        ["C /data", "A /data/hardlink.txt"],
    ),
    "12b two new hard links": (
        {"n1": f(link_id="j"), "n2": f(link_id="j")},
        ["A /n1", "A /n2"],
    ),
    "13 symlinks": (
        {"abs": Entry.symlink("/etc"), "dangling": Entry.symlink("nowhere")},
        ["A /abs", "A /dangling"],
    ),
    "14b rm init files": (
        {".dockerenv": W, "etc/mtab": W},
        ["D /.dockerenv", "C /etc", "D /etc/mtab"],
    ),
    "whiteout of a never-existing name": ({"data/ghost": W}, []),
}


@pytest.mark.parametrize("name", list(CASES))
def test_docker_rule(name: str) -> None:
    entries, expected = CASES[name]
    check(up(entries), expected)


def test_15_image_whiteouts_give_a_clean_container() -> None:
    top = Layer({"data": d(), "data/gone.txt": W})
    assert changes_from_upper(Layer(), [top, *LOWERS]) == []


def test_str_and_order() -> None:
    changes = changes_from_upper(up({"a.txt": f(), "a": d(), "a/b": f()}), LOWERS)
    # every dir immediately before its subtree
    assert [str(c) for c in changes] == ["A /a", "A /a/b", "A /a.txt"]
