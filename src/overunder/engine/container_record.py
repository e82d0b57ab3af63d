"""Container records: what a container is (durable) and what it is doing (volatile).

Durable, under ``<root>/containers/<id>/`` (dir 0700): ``config.v2.json`` (the record:
config, state, names), ``hostconfig.json``, the files bound over ``/etc/hostname``,
``/etc/hosts`` and ``/etc/resolv.conf``, and the log ``<id>-json.log``. Every JSON file is
written temp → fsync → rename.

Volatile, under ``<run_root>/containers/<id>/``: the runc bundle, the shim's files (pid, exit
code, runc's log) and the ``merged`` mount point; it may vanish at reboot, and then every
running container reads as exited.

States and the transitions we allow (Docker's, without OOM handling)::

    created ──start──▶ running ──exit/stop/kill──▶ exited ──start──▶ running
       │               │ ▲  │ ▲                        │
       │          pause│ │  │ │restarted (the shim,    │
       │               ▼ │  │ │ --restart policy)      │
       │           paused │  ▼ │                        │
       │         unpause──┘ restarting ──stop/kill──▶ exited
       └───────────────rm──▶ removing ◀──rm───────────┘ (live: only rm -f, after a kill)
                              │
                       failure│ ──▶ dead (rm can be retried)

Locking: one flock per container (``<root>/containers/<id>/lock``) around every change of
its record; a store-wide flock (``<root>/containers/.lock``) around create and rm, so that
two commands never take the same name.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from overunder.engine.paths import EnginePaths
from overunder.errors import FailedPrecondition, NotFound
from overunder.runtime.shim import write_json_atomic

__all__ = [
    "ContainerRecord",
    "ContainerState",
    "State",
    "container_dir",
    "containers_lock",
    "list_records",
    "load_record",
    "new_container_id",
    "record_lock",
    "run_dir",
    "save_record",
]


class State(StrEnum):
    CREATED = "created"
    RUNNING = "running"
    RESTARTING = "restarting"  # between two runs under a restart policy (the shim's backoff)
    PAUSED = "paused"
    EXITED = "exited"
    REMOVING = "removing"
    DEAD = "dead"


ALLOWED: dict[State, frozenset[State]] = {
    State.CREATED: frozenset({State.RUNNING, State.REMOVING, State.CREATED, State.EXITED}),
    State.RUNNING: frozenset({State.EXITED, State.PAUSED, State.REMOVING, State.RESTARTING}),
    State.RESTARTING: frozenset({State.RUNNING, State.EXITED, State.REMOVING}),
    State.PAUSED: frozenset({State.RUNNING, State.EXITED, State.REMOVING}),
    State.EXITED: frozenset({State.RUNNING, State.REMOVING, State.EXITED}),
    State.REMOVING: frozenset({State.DEAD, State.REMOVING}),
    State.DEAD: frozenset({State.REMOVING}),
}

ZERO_TIME = "0001-01-01T00:00:00Z"


@dataclass(slots=True)
class ContainerState:
    status: State = State.CREATED
    pid: int = 0
    exit_code: int = 0
    error: str = ""
    started_at: str = ZERO_TIME
    finished_at: str = ZERO_TIME
    oom_killed: bool = False

    def to_docker(self) -> dict[str, Any]:
        return {
            "Status": str(self.status),
            "Running": self.status in (State.RUNNING, State.PAUSED, State.RESTARTING),
            "Paused": self.status == State.PAUSED,
            "Restarting": self.status == State.RESTARTING,
            "OOMKilled": self.oom_killed,
            "Dead": self.status == State.DEAD,
            "Pid": self.pid,
            "ExitCode": self.exit_code,
            "Error": self.error,
            "StartedAt": self.started_at,
            "FinishedAt": self.finished_at,
        }


@dataclass(slots=True)
class ContainerRecord:
    """One container. ``config`` and ``host_config`` are Docker's ``Config`` and
    ``HostConfig`` objects (key order kept); the rest is ours."""

    id: str
    name: str  # without the leading slash
    created: str
    image_id: str  # "sha256:<hex>"
    image_name: str  # as given to run/create
    path: str
    args: list[str]
    config: dict[str, Any]
    host_config: dict[str, Any]
    state: ContainerState = field(default_factory=ContainerState)
    driver: str = "overlay"  # snapshot driver: overlay | fuse.overunder
    snapshot_key: str = ""
    init_key: str = ""
    runtime: str = "runc"
    ports: list[dict[str, object]] = field(default_factory=list)  # bound, with real ports
    process_env: list[str] = field(default_factory=list)
    uid: int = 0
    gid: int = 0
    additional_gids: list[int] = field(default_factory=list)
    restart_count: int = 0
    created_ns: int = 0
    # Restarts the current shim has reported (restart_count already includes them).
    policy_restarts: int = 0

    @property
    def short_id(self) -> str:
        return self.id[:12]

    def set_state(self, new: State) -> None:
        """Move to ``new``; FailedPrecondition when the state machine forbids it."""
        if new not in ALLOWED[self.state.status]:
            raise FailedPrecondition(
                f"container {self.name} cannot go from {self.state.status} to {new}",
                hint="see its state with 'overunder ps -a'",
            )
        self.state.status = new

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"]["status"] = str(self.state.status)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ContainerRecord:
        st = dict(d.get("state") or {})
        st["status"] = State(st.get("status", "created"))
        d = dict(d)
        d["state"] = ContainerState(**st)
        return cls(**d)


def container_dir(paths: EnginePaths, cid: str) -> Path:
    return paths.root / "containers" / cid


def run_dir(paths: EnginePaths, cid: str) -> Path:
    return paths.run_root / "containers" / cid


def new_container_id(paths: EnginePaths) -> str:
    while True:
        cid = secrets.token_hex(32)
        # Docker avoids ids that read as numbers (they would look like a short id prefix).
        if cid[:12].isdigit() or container_dir(paths, cid).exists():
            continue
        return cid


def ensure_private(path: Path) -> Path:
    """mkdir -p with 0700 on the leaf: the store is no business of unprivileged users."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


@contextlib.contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def containers_lock(paths: EnginePaths) -> contextlib.AbstractContextManager[None]:
    base = ensure_private(paths.root / "containers")
    return _flock(base / ".lock")


@contextlib.contextmanager
def record_lock(paths: EnginePaths, cid: str) -> Iterator[None]:
    """The container's own lock. NotFound when the container is gone (a ``--rm`` shim may
    remove it at any time): the dir is never re-created here, so nothing is left behind."""
    try:
        fd = os.open(
            container_dir(paths, cid) / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
    except FileNotFoundError:
        raise NotFound(f"No such container: {cid}", hint="see 'overunder ps -a'") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def save_record(paths: EnginePaths, rec: ContainerRecord) -> None:
    ensure_private(paths.root / "containers")
    d = ensure_private(container_dir(paths, rec.id))
    data = rec.to_dict()
    write_json_atomic(d / "hostconfig.json", data["host_config"])
    write_json_atomic(d / "config.v2.json", data)


def load_record(paths: EnginePaths, cid: str) -> ContainerRecord:
    try:
        data = json.loads((container_dir(paths, cid) / "config.v2.json").read_text())
    except FileNotFoundError:
        raise NotFound(f"No such container: {cid}") from None
    return ContainerRecord.from_dict(data)


def list_records(paths: EnginePaths) -> list[ContainerRecord]:
    base = paths.root / "containers"
    if not base.is_dir():
        return []
    out = []
    for entry in base.iterdir():
        if len(entry.name) == 64 and (entry / "config.v2.json").exists():
            with contextlib.suppress(NotFound, ValueError, TypeError, KeyError):
                out.append(load_record(paths, entry.name))
    return out
