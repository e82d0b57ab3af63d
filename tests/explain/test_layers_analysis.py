"""``analyze_layers`` and ``explain_path`` on pure layers (no disk): every wasted byte counted
once, with the right cause, for every kind of hiding; and, for random stacks, the waste is
exactly what the merged view does not show."""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import assume, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "semantics"))
from semantics_strategies import stacks

from overunder.explain import LayerInfo, LayerStack, ScannedLayer, analyze_layers, explain_path
from overunder.explain.layers import visible_layers
from overunder.semantics import WHITEOUT, Entry, Kind, Layer, flatten


def _stack(*layers: Layer) -> tuple[LayerStack, list[ScannedLayer]]:
    """``layers`` top first; named layer N..1 like an image."""
    n = len(layers)
    infos = [LayerInfo(f"layer {n - i}", "image", n - i, Path(f"/l{n - i}")) for i in range(n)]
    return LayerStack("t", "image", "sha256:t", infos), [ScannedLayer(x) for x in layers]


def f(size: int, mode: int = 0o644, uid: int = 0, link: str | None = None) -> Entry:
    return Entry.file(size=size, mode=mode, uid=uid, link_id=link)


def test_three_copies_waste_two() -> None:
    stack, scanned = _stack(
        Layer.of({"x": f(100, 0o600)}), Layer.of({"x": f(100, 0o755)}), Layer.of({"x": f(100)})
    )
    report = analyze_layers(stack, scanned)
    assert report.total == 300
    assert report.wasted == 200  # N copies: N-1 wasted (dive#684)
    assert sorted((w.layer.name, w.cause.name, w.kind) for w in report.waste) == [
        ("layer 1", "layer 2", "chmod"),
        ("layer 2", "layer 3", "chmod"),
    ]


def test_kinds_of_hiding() -> None:
    base = Layer.of(
        {
            "owned": f(10),
            "grow": f(20),
            "gone/a": f(30),
            "tofile/b": f(40),
            "opq/c": f(50),
            "hl1": f(60, link="g"),
            "hl2": f(60, link="g"),
        }
    )
    top = Layer.of(
        {
            "owned": f(10, uid=1000),
            "grow": f(25),
            "gone": WHITEOUT,
            "tofile": f(1),
            "opq": Entry.dir(opaque=True),
            "hl1": WHITEOUT,
            "never": WHITEOUT,  # nothing below: deletes nothing
        }
    )
    stack, scanned = _stack(top, base)
    report = analyze_layers(stack, scanned)
    kinds = {w.path: w.kind for w in report.waste}
    assert kinds == {
        "/owned": "chown",
        "/grow": "replaced",
        "/gone/a": "deleted-parent",
        "/tofile/b": "parent-replaced",
        "/opq/c": "opaque",
    }  # the hard-link pair is still visible through hl2: its 60 bytes are not wasted
    base_row = report.rows[1]
    assert base_row.size == 10 + 20 + 30 + 40 + 50 + 60  # the link group once
    assert base_row.hidden == 10 + 20 + 30 + 40 + 50
    top_row = report.rows[0]
    assert top_row.deleted == 2 + 1  # gone, hl1; opq's child c
    assert top_row.changed == 3  # owned, grow, tofile (a dir replaced by a file)


def test_explain_roles() -> None:
    base = Layer.of({"d/x": f(5), "y": f(6)})
    mid = Layer.of({"d": Entry.dir(opaque=True), "d/x": f(7)})
    top = Layer.of({"y": WHITEOUT})
    stack, scanned = _stack(top, mid, base)
    rep = explain_path(stack, "/d/x", scanned)
    assert [(f.layer.name, f.role) for f in rep.findings] == [
        ("layer 2", "shown"),
        ("layer 1", "hidden"),
    ]
    assert "opaque" in rep.findings[1].why
    rep = explain_path(stack, "y", scanned)
    assert [(f.layer.name, f.role) for f in rep.findings] == [
        ("layer 3", "deletes"),
        ("layer 1", "hidden"),
    ]
    assert rep.shown is None


def _redirected(layers: list[Layer]) -> bool:
    """Redirected dirs (redirect_dir=on uppers) are a documented gap of the explorer; image
    layers cannot hold them."""
    return any(e.redirect is not None for layer in layers for e in layer.values())


@settings(max_examples=60, deadline=None)
@given(stacks(min_size=1, max_size=4))
def test_waste_is_what_the_merged_view_does_not_show(layers: list[Layer]) -> None:
    assume(not _redirected(layers))
    stack, scanned = _stack(*layers)
    report = analyze_layers(stack, scanned)
    visible = visible_layers(layers)
    assert set(visible) == set(flatten(layers))
    # bytes per layer counted once per hard-link group; the shown copies are never waste
    shown = 0
    for i, layer in enumerate(layers):
        groups: dict[str, list[tuple[str, Entry]]] = {}
        for p, e in layer.items():
            if p and e.kind in (Kind.FILE, Kind.SYMLINK):
                groups.setdefault(e.link_id or p, []).append((p, e))
        for members in groups.values():
            if any(visible.get(p) == i for p, _ in members):
                shown += members[0][1].size
    assert report.wasted == report.total - shown
    assert all(w.size > 0 for w in report.waste)


@settings(max_examples=80, deadline=None)
@given(stacks(min_size=1, max_size=4))
def test_explain_agrees_with_lookup(layers: list[Layer]) -> None:
    from overunder.semantics import lookup

    assume(not _redirected(layers))

    stack, scanned = _stack(*layers)
    paths = sorted({p for layer in layers for p in layer if p})
    for p in paths[:12]:
        rep = explain_path(stack, p, scanned)
        hit = lookup(layers, p)
        shown = [f for f in rep.findings if f.role == "shown"]
        if hit is None:
            assert shown == []
            assert rep.shown is None
            assert "does not exist" in rep.verdict
        else:
            assert [f.layer for f in shown] == [stack.layers[hit.layer]]
            merged = {stack.layers[i].name for i in hit.merged_from[1:]}
            assert {f.layer.name for f in rep.findings if f.role == "merged"} == merged
        # every layer holding a non-whiteout entry at p appears, in stack order
        holders = [stack.layers[i].name for i, x in enumerate(layers) if p in x]
        named = [f.layer.name for f in rep.findings]
        assert named == sorted(named, key=[i.name for i in stack.layers].index)
        for name in holders:
            i = [x.name for x in stack.layers].index(name)
            reachable = all(
                (e := layers[i].get("/".join(p.split("/")[:k]))) is not None
                and e.kind is Kind.DIR
                and not e.opaque
                for k in range(1, len(p.split("/")))
            )
            if reachable:
                assert name in named, (p, name, rep.findings)
