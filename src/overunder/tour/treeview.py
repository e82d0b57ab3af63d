"""A tree(1)-style drawing of a directory, for hosts without tree(1).

``python3 -m overunder.tour.treeview DIR`` prints what ``tree DIR`` prints (names sorted,
hidden names skipped, symlinks as ``name -> target``, the ``N directories, M files`` line).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["draw_tree"]


def draw_tree(root: Path) -> str:
    lines = [str(root)]
    counts = [1, 0]  # tree(1) counts the root dir too

    def walk(d: Path, prefix: str) -> None:
        try:
            names = sorted(n for n in os.listdir(d) if not n.startswith("."))
        except OSError:
            return
        for i, name in enumerate(names):
            last = i == len(names) - 1
            p = d / name
            label = name
            if p.is_symlink():
                label = f"{name} -> {os.readlink(p)}"
            lines.append(prefix + ("└── " if last else "├── ") + label)
            if p.is_dir() and not p.is_symlink():
                counts[0] += 1
                walk(p, prefix + ("    " if last else "│   "))
            else:
                counts[1] += 1

    walk(root, "")
    dirs, files = counts
    lines.append("")
    lines.append(
        f"{dirs} director{'y' if dirs == 1 else 'ies'}, {files} file{'' if files == 1 else 's'}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(draw_tree(Path(sys.argv[1])) + "\n")
