"""The overlay rules as pure data: no files, no ``os``, no clock.

* :mod:`.types` - :class:`Layer`, :class:`Entry`, :class:`Meta`, :class:`Kind`;
* :mod:`.merge` - :func:`lookup`, :func:`readdir`, :func:`flatten`, :func:`sources`;
* :mod:`.changes` - Docker's A/C/D: :func:`changes_from_upper`, :func:`diff_trees`,
  :func:`layer_from_diff`;
* :mod:`.model` - :class:`OverlayModel`, a mounted overlay as a test oracle.

Stacks are top first (index 0 is the upper or the topmost lower), as in ``lowerdir=``.
"""

from __future__ import annotations

from overunder.semantics.changes import (
    CAPABILITY_XATTR,
    Change,
    ChangeKind,
    changes_from_upper,
    diff_trees,
    layer_from_diff,
    same_metadata,
)
from overunder.semantics.merge import (
    Chain,
    Hidden,
    Hit,
    Source,
    SourceKind,
    flatten,
    lookup,
    merged_children,
    readdir,
    sources,
)
from overunder.semantics.model import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    RENAME_WHITEOUT,
    OverlayModel,
)
from overunder.semantics.types import (
    DEFAULT_DIR_META,
    WHITEOUT,
    Entry,
    Kind,
    Layer,
    LayerView,
    Meta,
    Stack,
    content_id,
    join,
    normalize_links,
    parent_of,
    split,
)

__all__ = [
    "CAPABILITY_XATTR",
    "DEFAULT_DIR_META",
    "RENAME_EXCHANGE",
    "RENAME_NOREPLACE",
    "RENAME_WHITEOUT",
    "WHITEOUT",
    "Chain",
    "Change",
    "ChangeKind",
    "Entry",
    "Hidden",
    "Hit",
    "Kind",
    "Layer",
    "LayerView",
    "Meta",
    "OverlayModel",
    "Source",
    "SourceKind",
    "Stack",
    "changes_from_upper",
    "content_id",
    "diff_trees",
    "flatten",
    "join",
    "layer_from_diff",
    "lookup",
    "merged_children",
    "normalize_links",
    "parent_of",
    "readdir",
    "same_metadata",
    "sources",
    "split",
]
