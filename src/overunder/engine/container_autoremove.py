"""``python -m overunder.engine.container_autoremove ROOT RUN_ROOT ID``: what a ``--rm``
container's shim runs once the container has exited, so that the container (record,
snapshots, dirs) is gone at once, as with Docker's daemon, not at the next command.

A module of its own because the shim (``overunder.runtime``) may not import the engine; it
only runs the command the engine gave it (``ShimConfig.on_exit``). Whatever this cannot do
the next command's reconcile does (it removes exited ``--rm`` containers too).
"""

from __future__ import annotations

import sys

from overunder.engine.paths import EnginePaths
from overunder.errors import NotFound, OverunderError

__all__ = ["autoremove_argv", "main"]


def autoremove_argv(paths: EnginePaths, cid: str) -> list[str]:
    return [sys.executable, "-m", __name__, str(paths.root), str(paths.run_root), cid]


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write(f"usage: python -m {__name__} ROOT RUN_ROOT CONTAINER_ID\n")
        return 2
    from overunder.engine.containers import remove_container

    paths = EnginePaths.resolve(argv[0], argv[1])
    try:
        remove_container(paths, argv[2], force=True)
    except NotFound:
        return 0  # the CLI of a foreground run, or a reconcile, got there first
    except OverunderError as err:
        sys.stderr.write(f"auto-remove of {argv[2]} failed: {err}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
