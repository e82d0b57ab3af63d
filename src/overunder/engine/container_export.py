"""``export``: a container's merged tree (its image, init layer and changes, flattened) as a
plain tar, like ``docker export``.

The tree is the running container's live merged dir, or a private mount of a stopped one
(:func:`overunder.engine.container_mount.container_root`); it is written by
:func:`overunder.layerfs.tar_write.write_tree`, which walks with ``O_NOFOLLOW`` dir fds, so a
symlink swapped in by a running container is archived as a symlink, never followed. Entry
names have no ``./`` prefix and there is no entry for ``/`` itself.

Gap: the files a running container gets bind-mounted (``/etc/hostname``, ``/etc/hosts``,
``/etc/resolv.conf``) are exported as the init layer's empty files, as Docker does.
"""

from __future__ import annotations

from typing import BinaryIO

from overunder.engine.container_mount import container_root
from overunder.engine.paths import EnginePaths
from overunder.layerfs.tar_write import WriteResult, write_tree

__all__ = ["export_container"]


def export_container(paths: EnginePaths, name_or_id: str, out: BinaryIO) -> WriteResult:
    """Write the container's flattened tree to ``out``. NotFound ``No such container: X``."""
    with container_root(paths, name_or_id) as (_rec, root):
        return write_tree(root, out, name="")
