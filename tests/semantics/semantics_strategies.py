"""Hypothesis strategies: small random layers, trees and stacks over a tiny name space, so that
layers collide often (same names, dir over file, whiteouts over both, opaque dirs)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import strategies as st

from overunder.semantics import Entry, Kind, Layer, join

NAMES = ("a", "b", "c")


@st.composite
def entries(draw: st.DrawFn, *, whiteouts: bool) -> Entry:
    kinds = ["file", "file", "dir", "dir", "symlink", "fifo"]
    if whiteouts:
        kinds += ["whiteout", "whiteout"]
    kind = draw(st.sampled_from(kinds))
    mode = draw(st.sampled_from([0o644, 0o600, 0o755]))
    uid = draw(st.sampled_from([0, 1]))
    mtime = draw(st.sampled_from([0, 1_000]))
    if kind == "file":
        return Entry.file(
            draw(st.sampled_from([b"", b"x", b"y", b"zz"])),
            mode=mode,
            uid=uid,
            mtime_ns=mtime,
            link_id=draw(st.sampled_from([None, None, None, "L"])),
        )
    if kind == "dir":
        e = Entry.dir(mode=mode, uid=uid, mtime_ns=mtime, opaque=whiteouts and draw(st.booleans()))
        if whiteouts and draw(st.integers(0, 3)) == 0:
            return replace(e, redirect=draw(st.sampled_from(["a", "b", "/a", "/b/c", "/c/a/b"])))
        return e
    if kind == "symlink":
        return Entry.symlink(draw(st.sampled_from(["a", "/b", "../cc"])), mtime_ns=mtime)
    if kind == "fifo":
        return Entry.special(Kind.FIFO, mode=mode)
    return Entry.whiteout()


@st.composite
def layers(draw: st.DrawFn, *, whiteouts: bool = True, depth: int = 3) -> Layer:
    out: dict[str, Entry] = {"": Entry.dir(mode=draw(st.sampled_from([0o755, 0o700])))}

    def fill(path: str, level: int) -> None:
        for name in NAMES:
            if not draw(st.booleans()):
                continue
            child = join(path, name)
            e = draw(entries(whiteouts=whiteouts))
            if level >= depth and e.kind is Kind.DIR:
                e = Entry.file(b"leaf")
            out[child] = e
            if e.kind is Kind.DIR:
                fill(child, level + 1)

    fill("", 1)
    # the names of one inode are one entry: every member of a link group equals the first
    first: dict[str, Entry] = {}
    for path, e in out.items():
        if e.link_id is not None:
            out[path] = first.setdefault(e.link_id, e)
    return Layer(out)


def trees() -> st.SearchStrategy[Layer]:
    """Flattened trees: no whiteouts, no opaque dirs."""
    return layers(whiteouts=False)


def stacks(min_size: int = 1, max_size: int = 3) -> st.SearchStrategy[list[Layer]]:
    return st.lists(layers(), min_size=min_size, max_size=max_size)


PATHS = ("a", "b", "c", "a/b", "a/c", "b/a", "c/c", "a/b/c")
CONTENTS = (b"", b"x", b"y", b"zz", b"leaf", b"new data")


@st.composite
def model_ops(draw: st.DrawFn) -> tuple[str, tuple[object, ...], dict[str, object]]:
    """One OverlayModel operation (name, args, kwargs) on the small path space."""
    path = st.sampled_from(PATHS)
    name = draw(
        st.sampled_from(
            [
                "create",
                "write",
                "append",
                "truncate",
                "unlink",
                "rmdir",
                "mkdir",
                "rename",
                "rename",
                "link",
                "symlink",
                "chmod",
                "chown",
                "utime",
                "setxattr",
                "removexattr",
            ]
        )
    )
    data = st.sampled_from(CONTENTS)
    if name == "create":
        return name, (draw(path), draw(data)), {"exclusive": draw(st.booleans())}
    if name == "write":
        return name, (draw(path), draw(data)), {"offset": draw(st.sampled_from([0, 1, 3]))}
    if name == "append":
        return name, (draw(path), draw(data)), {}
    if name == "truncate":
        return name, (draw(path), draw(st.sampled_from([0, 1, 5]))), {}
    if name in ("unlink", "rmdir"):
        return name, (draw(path),), {}
    if name == "mkdir":
        return name, (draw(path), draw(st.sampled_from([0o755, 0o700]))), {}
    if name == "rename":
        return name, (draw(path), draw(path), draw(st.sampled_from([0, 0, 1, 2]))), {}
    if name == "link":
        return name, (draw(path), draw(path)), {}
    if name == "symlink":
        return name, (draw(st.sampled_from(["a", "/b", "a/b", "nowhere"])), draw(path)), {}
    if name == "chmod":
        return name, (draw(path), draw(st.sampled_from([0o600, 0o755, 0o4755]))), {}
    if name == "chown":
        return (
            name,
            (draw(path), draw(st.sampled_from([-1, 0, 7])), draw(st.sampled_from([-1, 7]))),
            {},
        )
    if name == "utime":
        return name, (draw(path), draw(st.sampled_from([0, 5_000_000_000]))), {}
    if name == "setxattr":
        return name, (draw(path), "user.k", draw(st.sampled_from([b"1", b"2"]))), {}
    return name, (draw(path), "user.k"), {}


def contents_map() -> dict[str, bytes]:
    from overunder.semantics import content_id

    return {content_id(c): c for c in CONTENTS}
