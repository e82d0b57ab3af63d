"""Which processes keep a mount busy: what fuser(1) -m and lsof show, read from /proc.

Only looks; never signals anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from overunder.mount.types import Holder

__all__ = ["find_holders"]

_DELETED = " (deleted)"


def _under(path: str, root: str) -> bool:
    path = path.removesuffix(_DELETED)
    return path == root or path.startswith(root.rstrip("/") + "/")


def _command(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def find_holders(target: Path) -> list[Holder]:
    """Processes whose cwd, root, executable, open files or mapped files lie on or under
    ``target``, one :class:`Holder` per (pid, how), sorted by pid. Processes we may not
    inspect (another user's, as non-root) are skipped."""
    root = os.path.realpath(target)
    found: list[Holder] = []
    try:
        pids = sorted((p for p in os.listdir("/proc") if p.isdigit()), key=int)
    except OSError:
        return []
    for pid in pids:
        hows: list[str] = []
        for link in ("cwd", "root", "exe"):
            try:
                if _under(os.readlink(f"/proc/{pid}/{link}"), root):
                    hows.append(link)
            except OSError:
                continue
        if "root" in hows and root == "/":
            hows.remove("root")
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            fds = []
        for fd in sorted(fds, key=lambda s: int(s) if s.isdigit() else -1):
            try:
                if _under(os.readlink(f"/proc/{pid}/fd/{fd}"), root):
                    hows.append(f"fd {fd}")
            except OSError:
                continue
        try:
            with open(f"/proc/{pid}/maps", errors="surrogateescape") as maps:
                for line in maps:
                    parts = line.split(None, 5)
                    if len(parts) == 6 and _under(parts[5].rstrip("\n"), root):
                        hows.append("maps")
                        break
        except OSError:
            pass
        if hows:
            command = _command(pid)
            found.extend(Holder(int(pid), command, how) for how in hows)
    return found
