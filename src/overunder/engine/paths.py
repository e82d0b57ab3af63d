"""Where the engine keeps its state.

Durable state (blobs, layers, images, container records) lives under ``root``; volatile
state (pids, exit codes, sockets, mount points of running containers) under ``run_root``,
which may vanish at reboot.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def default_root() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/overunder")
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "overunder"


def default_run_root() -> Path:
    if os.geteuid() == 0:
        return Path("/run/overunder")
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/overunder-run-{os.geteuid()}"
    return Path(runtime) / "overunder"


@dataclass(frozen=True, slots=True)
class EnginePaths:
    root: Path
    run_root: Path

    @classmethod
    def resolve(
        cls,
        root: str | os.PathLike[str] | None = None,
        run_root: str | os.PathLike[str] | None = None,
    ) -> EnginePaths:
        """Explicit arguments win, then OVERUNDER_ROOT / OVERUNDER_RUN_ROOT, then defaults.

        With only ``root`` given, the run root goes below it (``<root>/run``) so that two
        engines with different roots never share volatile state.
        """
        root = root or os.environ.get("OVERUNDER_ROOT")
        run_root = run_root or os.environ.get("OVERUNDER_RUN_ROOT")
        root_path = Path(root).absolute() if root else default_root()
        if run_root:
            run_path = Path(run_root).absolute()
        elif root:
            run_path = root_path / "run"
        else:
            run_path = default_run_root()
        return cls(root=root_path, run_root=run_path)
