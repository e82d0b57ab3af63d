"""Properties over random trees and stacks (hypothesis, bounded)."""

from __future__ import annotations

from hypothesis import given, settings
from semantics_strategies import layers, stacks, trees

from overunder.semantics import (
    Kind,
    Layer,
    changes_from_upper,
    diff_trees,
    flatten,
    layer_from_diff,
    lookup,
    readdir,
)

SETTINGS = settings(max_examples=200, deadline=None)


@SETTINGS
@given(trees(), trees())
def test_layer_from_diff_rebuilds_new(a: Layer, b: Layer) -> None:
    upper = layer_from_diff(a, b)
    assert flatten([upper, a]) == b


@SETTINGS
@given(trees(), trees())
def test_changes_from_upper_agrees_with_diff_trees_on_made_layers(a: Layer, b: Layer) -> None:
    assert changes_from_upper(layer_from_diff(a, b), [a]) == diff_trees(a, b)


@SETTINGS
@given(layers(), stacks())
def test_changes_from_upper_agrees_with_diff_trees_on_random_stacks(
    upper: Layer, lowers: list[Layer]
) -> None:
    expected = diff_trees(flatten(lowers), flatten([upper, *lowers]))
    assert changes_from_upper(upper, lowers) == expected


@SETTINGS
@given(trees())
def test_no_change_no_lines(a: Layer) -> None:
    assert diff_trees(a, a) == []
    assert changes_from_upper(layer_from_diff(a, a), [a]) == []


@SETTINGS
@given(stacks())
def test_lookup_and_readdir_agree_with_flatten(stack: list[Layer]) -> None:
    merged = flatten(stack)
    for path, entry in merged.items():
        hit = lookup(stack, path)
        assert hit is not None
        assert hit.entry.kind is entry.kind
        if entry.kind is Kind.DIR:
            assert readdir(stack, path) == list(merged.children(path))
        else:
            assert hit.entry == entry
    for layer in stack:
        for path in layer:
            if path not in merged:
                assert lookup(stack, path) is None
