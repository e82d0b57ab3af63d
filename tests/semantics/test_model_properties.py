"""The OverlayModel on random stacks and random operation sequences: against itself (pure, many
examples) and against the real kernel overlay (fewer examples: one mount each)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kernel_harness import run_and_compare
from semantics_strategies import contents_map, layers, model_ops

from conftest import require_overlay
from overunder.semantics import (
    Entry,
    Kind,
    Layer,
    OverlayModel,
    changes_from_upper,
    diff_trees,
    flatten,
)

Ops = list[tuple[str, tuple[Any, ...], dict[str, Any]]]


def _apply(model: OverlayModel, ops: Ops) -> None:
    for name, args, kw in ops:
        with contextlib.suppress(OSError):
            getattr(model, name)(*args, **kw)


@settings(max_examples=200, deadline=None)
@given(st.lists(layers(), min_size=1, max_size=3), st.lists(model_ops(), max_size=12))
def test_model_keeps_upper_and_merged_consistent(lowers: list[Layer], ops: Ops) -> None:
    model = OverlayModel(lowers, Layer(), contents=contents_map())
    _apply(model, ops)
    upper = model.upper
    assert upper is not None
    merged = model.merged()
    assert flatten([upper, *lowers]) == merged
    # what the upper dir says changed is what changed between the trees
    assert changes_from_upper(upper, lowers) == diff_trees(flatten(lowers), merged)


def _kernel_safe(layer: Layer, index: int) -> Layer:
    """A random layer without redirects (the kernel validates them) and with hard-link labels
    of its own (labels mean nothing across layers, but the comparison groups by label)."""

    def fix(e: Entry) -> Entry:
        if e.kind is Kind.DIR:
            return replace(e, redirect=None)
        if e.link_id is not None:
            return replace(e, link_id=f"{index}:{e.link_id}")
        return e

    return Layer((p, fix(e)) for p, e in layer.items())


@settings(
    max_examples=int(os.environ.get("OVU_KERNEL_EXAMPLES", "30")),  # soak: set it higher
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    st.lists(layers(), min_size=1, max_size=2),
    st.one_of(st.just(Layer()), layers()),
    st.lists(model_ops(), min_size=1, max_size=10),
    st.booleans(),
)
def test_model_matches_kernel_on_random_sequences(
    lowers: list[Layer], upper: Layer, ops: Ops, redirect_dir: bool
) -> None:
    require_overlay()
    lowers = [_kernel_safe(layer, i) for i, layer in enumerate(lowers)]
    upper = _kernel_safe(upper, 9)
    root = Path(tempfile.mkdtemp(prefix="ovu-model-"))
    try:
        run_and_compare(
            root, lowers, upper, ops, contents=contents_map(), redirect_dir=redirect_dir
        )
    finally:
        shutil.rmtree(root)
