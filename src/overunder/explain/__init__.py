"""The layer explorer: what each layer of an image or container holds, why a path looks the
way it does, and its files read straight from the layer dirs (no container, no mount).

* :mod:`.scan` - layer dirs read fast (:func:`scan_layer`) or along one path (:func:`probe`);
* :mod:`.stack` - :class:`LayerStack`: the layers top first, named, with their build steps;
* :mod:`.layers` - ``overunder layers``: per-layer counts and the wasted space, counted once;
* :mod:`.path` - ``overunder explain``: one path through every layer;
* :mod:`.files` - ``overunder cat``/``cp IMAGE:PATH``: symlinks resolved inside the image.

Resolving a name to a stack (container or image) is the engine's job
(:mod:`overunder.engine.explore`); this package only reads the dirs it is given.
"""

from __future__ import annotations

from overunder.explain.files import Resolved, TreeItem, iter_tree, open_file, resolve
from overunder.explain.layers import LayerRow, LayersReport, Waste, analyze_layers
from overunder.explain.path import LayerFinding, PathReport, clean_path, explain_path
from overunder.explain.scan import ScannedLayer, probe, scan_layer
from overunder.explain.stack import (
    LayerInfo,
    LayerStack,
    container_layer_infos,
    image_layer_infos,
    match_history,
)

__all__ = [
    "LayerFinding",
    "LayerInfo",
    "LayerRow",
    "LayerStack",
    "LayersReport",
    "PathReport",
    "Resolved",
    "ScannedLayer",
    "TreeItem",
    "Waste",
    "analyze_layers",
    "clean_path",
    "container_layer_infos",
    "explain_path",
    "image_layer_infos",
    "iter_tree",
    "match_history",
    "open_file",
    "probe",
    "resolve",
    "scan_layer",
]
