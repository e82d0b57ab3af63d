"""lookup / readdir / flatten / sources on hand-made stacks: each overlay rule once."""

from __future__ import annotations

import pytest

from overunder.errors import InvalidArgument, NotFound
from overunder.semantics import (
    Entry,
    Hidden,
    Kind,
    Layer,
    Meta,
    SourceKind,
    flatten,
    lookup,
    normalize_links,
    readdir,
    sources,
)

W = Entry.whiteout()


def test_layer_validation() -> None:
    with pytest.raises(InvalidArgument):
        Layer({"a/b": Entry.file(b"")})  # no parent
    with pytest.raises(InvalidArgument):
        Layer({"a": Entry.file(b""), "a/b": Entry.file(b"")})  # parent not a dir
    for bad in ("/a", "a/", "a//b", "./a", "a/..", ""):
        if bad:
            with pytest.raises(InvalidArgument):
                Layer({bad: Entry.file(b"")})
    with pytest.raises(InvalidArgument):
        Layer({"": Entry.file(b"")})
    with pytest.raises(InvalidArgument):
        Layer({"f": Entry(Kind.FILE, Meta(0o644), opaque=True)})
    with pytest.raises(InvalidArgument):
        Meta(0o100644)
    layer = Layer.of({"a/b/c": Entry.file(b"x")})
    assert list(layer) == ["", "a", "a/b", "a/b/c"]
    assert layer.children("a") == ("b",)


def test_iteration_puts_a_dir_before_its_subtree() -> None:
    layer = Layer.of({"a.txt": Entry.file(b""), "a/b": Entry.file(b""), "a-b": Entry.file(b"")})
    assert list(layer) == ["", "a", "a/b", "a-b", "a.txt"]


def test_topmost_wins_and_non_dirs_end_the_merge() -> None:
    top = Layer.of({"x": Entry.file(b"top"), "d/f": Entry.file(b"1"), "n": Entry.file(b"")})
    low = Layer.of({"x": Entry.file(b"low"), "d/g": Entry.file(b"2"), "n/under": Entry.file(b"")})
    stack = [top, low]
    assert lookup(stack, "x").entry == top["x"]  # type: ignore[union-attr]
    hit = lookup(stack, "d")
    assert hit is not None
    assert hit.merged_from == (0, 1)
    assert readdir(stack, "d") == ["f", "g"]
    assert lookup(stack, "n/under") is None  # a file over a dir hides the whole dir
    assert list(flatten(stack)) == ["", "d", "d/f", "d/g", "n", "x"]


def test_merged_dir_metadata_is_the_topmost() -> None:
    top = Layer({"d": Entry.dir(mode=0o700, uid=5)})
    low = Layer.of({"d/f": Entry.file(b"")})
    assert flatten([top, low])["d"].meta == Meta(0o700, 5)


def test_whiteouts_hide_below_only() -> None:
    top = Layer({"gone": W, "d": Entry.dir(), "d/gone2": W})
    mid = Layer.of({"gone": Entry.file(b"m"), "d/gone2": Entry.dir(), "d/gone2/x": Entry.file(b"")})
    low = Layer.of({"gone": Entry.file(b"l"), "d/keep": Entry.file(b"")})
    stack = [top, mid, low]
    assert lookup(stack, "gone") is None
    assert lookup(stack, "d/gone2/x") is None
    assert readdir(stack, "d") == ["keep"]
    # a whiteout never hides an entry of its own or a higher layer
    assert lookup([mid, top], "gone") is not None


def test_opaque_dir_hides_lower_children_and_keeps_its_own() -> None:
    top = Layer({"o": Entry.dir(opaque=True), "o/new": Entry.file(b"")})
    low = Layer.of({"o/old": Entry.file(b""), "o/sub/x": Entry.file(b"")})
    assert readdir([top, low], "o") == ["new"]
    assert not flatten([top, low])["o"].opaque
    # opaque in a middle layer cuts off only what is below it
    mid = Layer({"o": Entry.dir(opaque=True), "o/m": Entry.file(b"")})
    plain = Layer({"o": Entry.dir(), "o/t": Entry.file(b"")})
    assert readdir([plain, mid, low], "o") == ["m", "t"]


def test_redirects_are_followed() -> None:
    upper = Layer({"d": Entry.dir(), "d/moved": Entry(Kind.DIR, Meta(0o755), redirect="orig")})
    low = Layer.of({"d/orig/f": Entry.file(b"1"), "top/g": Entry.file(b"2")})
    assert readdir([upper, low], "d/moved") == ["f"]
    absolute = Layer({"x": Entry(Kind.DIR, Meta(0o755), redirect="/top")})
    assert readdir([absolute, low], "x") == ["g"]
    assert flatten([absolute, low])["x"].redirect is None


def test_readdir_errors() -> None:
    layer = Layer.of({"f": Entry.file(b"")})
    with pytest.raises(NotFound):
        readdir([layer], "nope")
    with pytest.raises(InvalidArgument):
        readdir([layer], "f")


def test_normalize_links() -> None:
    a = Layer({"x": Entry.file(b"1", link_id="q"), "y": Entry.file(b"1", link_id="q")})
    b = Layer({"x": Entry.file(b"1", link_id="7:9"), "y": Entry.file(b"1", link_id="7:9")})
    assert a != b
    assert normalize_links(a) == normalize_links(b)
    single = Layer({"x": Entry.file(b"1", link_id="z")})
    assert normalize_links(single)["x"].link_id is None


def test_sources_explain_every_layer() -> None:
    upper = Layer(
        {
            "": Entry.dir(),
            "etc": Entry.dir(),
            "etc/localtime": W,
            "etc/new": Entry.file(b"n"),
            "opq": Entry.dir(opaque=True),
            "opq/x": Entry.file(b"x"),
            "f": Entry.file(b"up"),
        }
    )
    low = Layer.of(
        {
            "etc/localtime": Entry.file(b"UTC"),
            "etc/passwd": Entry.file(b"r"),
            "opq/a": Entry.file(b"a"),
            "opq/sub/b": Entry.file(b"b"),
            "f": Entry.file(b"low"),
        }
    )
    got = [(s.kind, s.path, s.layer, s.merged_from, s.hides) for s in sources([upper, low])]
    assert got == [
        (SourceKind.ENTRY, "", 0, (0, 1), ()),
        (SourceKind.ENTRY, "etc", 0, (0, 1), ()),
        (SourceKind.WHITEOUT, "etc/localtime", 0, (), (Hidden("etc/localtime", 1),)),
        (SourceKind.ENTRY, "etc/new", 0, (0,), ()),
        (SourceKind.ENTRY, "etc/passwd", 1, (1,), ()),
        (SourceKind.ENTRY, "f", 0, (0,), (Hidden("f", 1),)),
        (SourceKind.ENTRY, "opq", 0, (0,), ()),
        (SourceKind.OPAQUE, "opq", 0, (0,), (Hidden("opq/a", 1), Hidden("opq/sub", 1))),
        (SourceKind.ENTRY, "opq/x", 0, (0,), ()),
    ]
    assert [s.path for s in sources([upper, low], "etc")] == [
        "etc",
        "etc/localtime",
        "etc/new",
        "etc/passwd",
    ]
    with pytest.raises(NotFound):
        sources([upper, low], "etc/localtime")
