"""On-disk layers in ``semantics`` terms.

Modules: ``whiteout`` (the on-disk whiteout and opaque formats), ``reader`` (a layer or upper
dir read into a :class:`overunder.semantics.Layer`), and the layer-tar modules (apply, write,
compression, safe path resolution). This package neither mounts anything nor knows images.
Import the module you need; nothing is re-exported here.
"""
