"""The OCI runtime binary (runc; crun on request) and what its errors mean.

Every call passes ``--root`` (the runtime's own state dir under our run root, so that we never
see or touch containers of another engine) and, for calls that start processes, ``--log FILE
--log-format json``: runc writes its failure there as ``{"level":"error","msg":...}``, which is
how we tell runc's own failure from the container's output (both go to the same stderr in
runc's pass-through mode).

Exit codes Docker derives from runc's message (docker-compat.md §5): ``executable file not
found`` and ``no such file or directory`` → 127, ``permission denied`` → 126, anything else →
125 for ``run`` (126 for ``exec``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overunder.errors import FailedPrecondition, NotFound, OverunderError, Unsupported

__all__ = [
    "KNOWN_RUNTIMES",
    "RuntimeBinary",
    "StartError",
    "cgroup_mode",
    "exit_code_for_start_error",
    "read_runtime_error",
    "signal_number",
]

KNOWN_RUNTIMES = ("runc", "crun")
_TIMEOUT = 30.0


class StartError(OverunderError):
    """The runtime could not start the container's (or exec's) process.

    ``exit_code`` follows Docker: 127 not found, 126 not executable, 125 otherwise.
    """

    category = "start-failed"
    exit_code = 125

    def __init__(self, message: str, *, code: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = code


def exit_code_for_start_error(text: str, *, default: int = 125) -> int:
    """Docker's rule: 127 for a command that is missing, 126 for one that cannot run."""
    low = text.lower()
    if "executable file not found" in low or "no such file or directory" in low:
        return 127
    if "permission denied" in low or "exec format error" in low or "is a directory" in low:
        return 126
    return default


def read_runtime_error(log_path: Path) -> str | None:
    """The last error-level message runc wrote to its ``--log`` file, or None."""
    try:
        text = log_path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    found: str | None = None
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            found = str(entry.get("msg", ""))
    return found


def cgroup_mode() -> str:
    """``"v2"``, ``"hybrid"`` or ``"v1"`` (the same rule as ``engine.doctor.cgroup_version``,
    repeated here because the runtime package may not import the engine)."""
    fs = Path("/sys/fs/cgroup")
    if (fs / "cgroup.controllers").exists():
        return "v2"
    try:
        mounts = Path("/proc/mounts").read_text()
    except OSError:
        mounts = ""
    if " /sys/fs/cgroup/unified " in mounts:
        return "hybrid"
    return "v1"


def signal_number(name: str | int) -> int:
    """``KILL``, ``SIGKILL``, ``9`` → 9; InvalidArgument-like FailedPrecondition otherwise."""
    if isinstance(name, int):
        return name
    text = name.strip().upper()
    if text.isdigit():
        return int(text)
    if not text.startswith("SIG"):
        text = "SIG" + text
    try:
        return int(signal.Signals[text])
    except KeyError:
        from overunder.errors import InvalidArgument

        raise InvalidArgument(
            f"invalid signal: {name}", hint="use a name such as TERM, KILL, HUP or a number"
        ) from None


@dataclass(frozen=True, slots=True)
class RuntimeBinary:
    """One OCI runtime: its name, binary and state root."""

    name: str
    path: str
    state_root: Path

    @classmethod
    def find(cls, name: str, state_root: Path) -> RuntimeBinary:
        """Locate ``name`` and check that it can work on this host.

        crun 1.8 refuses hybrid cgroups ("cgroups in hybrid mode not supported, drop all
        controllers from cgroupv2"), whatever its cgroup manager; we say so up front instead of
        leaving a half-created container behind.
        """
        if name not in KNOWN_RUNTIMES:
            raise Unsupported(
                f"unknown runtime '{name}'",
                hint="use --runtime runc (or crun on a host with cgroup v1 or v2 only)",
            )
        path = shutil.which(name)
        if path is None:
            raise Unsupported(
                f"runtime '{name}' not found in PATH",
                hint=f"apt-get install {name}",
            )
        if name == "crun" and cgroup_mode() == "hybrid":
            raise Unsupported(
                "crun cannot run containers on this host: cgroups are hybrid (v1 controllers "
                "plus a v2 tree) and crun refuses hybrid mode",
                hint="use --runtime runc (the default), which supports cgroup v1",
            )
        return cls(name=name, path=path, state_root=state_root)

    def base(self, *, log: Path | None = None) -> list[str]:
        args = [self.path, "--root", str(self.state_root)]
        if log is not None:
            args += ["--log", str(log), "--log-format", "json"]
        return args

    def version(self) -> str:
        """First line of ``--version`` (``runc version 1.1.5+ds1``)."""
        out = subprocess.run(
            [self.path, "--version"], capture_output=True, text=True, timeout=_TIMEOUT, check=False
        ).stdout
        return out.splitlines()[0] if out else "unknown"

    def _call(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.base(), *args],
            capture_output=True,
            text=True,
            timeout=_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def state(self, container_id: str) -> dict[str, Any] | None:
        """``runc state``: status, pid...; None when the runtime does not know the id."""
        r = self._call("state", container_id)
        if r.returncode != 0:
            return None
        data: dict[str, Any] = json.loads(r.stdout)
        return data

    def start(self, container_id: str) -> None:
        r = self._call("start", container_id)
        if r.returncode != 0:
            raise FailedPrecondition(
                f"{self.name} start {container_id} failed: {_last_line(r.stderr)}",
                hint="see the container's state with 'overunder inspect'",
            )

    def kill(self, container_id: str, sig: int, *, all_processes: bool = False) -> None:
        args = ["kill"]
        if all_processes:
            args.append("--all")
        r = self._call(*args, container_id, str(sig))
        if r.returncode != 0:
            text = _last_line(r.stderr)
            if "not exist" in text or "not running" in text or "stopped" in text:
                raise NotFound(f"{self.name} kill {container_id}: {text}")
            raise FailedPrecondition(f"{self.name} kill {container_id} failed: {text}")

    def signal_init(self, container_id: str, sig: int) -> None:
        """Send ``sig`` to the container's init, as ``runc kill`` does, without the round trip
        (~20 ms) when runc's state names a live init: a pidfd opened on it and its start time
        checked, so that a reused pid is never signalled. Our containers always have a PID
        namespace of their own, so SIGKILL to its init takes every process of the container
        with it (what ``kill --all`` is for). Anything unusual goes to ``runc kill``."""
        if self.name == "runc" and self._signal_init_directly(container_id, sig):
            return
        self.kill(container_id, sig, all_processes=sig == signal.SIGKILL)

    def _signal_init_directly(self, container_id: str, sig: int) -> bool:
        try:
            state = json.loads((self.state_root / container_id / "state.json").read_text())
            pid = int(state["init_process_pid"])
            start = int(state["init_process_start"])
            namespaces = state["config"]["namespaces"]
            own_pidns = any(n.get("type") == "NEWPID" and not n.get("path") for n in namespaces)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False
        if not own_pidns or pid <= 0:
            return False
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return False
        try:
            if _start_time(pid) != start:
                return False
            signal.pidfd_send_signal(fd, sig)
        except OSError:
            return False
        finally:
            os.close(fd)
        return True

    def delete(self, container_id: str, *, force: bool = False) -> None:
        """Forget the container in the runtime (its cgroup and state); missing is fine."""
        args = ["delete"]
        if force:
            args.append("--force")
        r = self._call(*args, container_id)
        if r.returncode != 0 and "does not exist" not in r.stderr:
            raise FailedPrecondition(
                f"{self.name} delete {container_id} failed: {_last_line(r.stderr)}"
            )

    def delete_stopped(self, container_id: str) -> None:
        """``delete --force`` of a container whose init has exited, done in-process when
        that is all runc would do: the state says runc, no hooks, the init is gone, and each
        cgroup dir is empty, so removing the cgroup dirs and the state dir is the whole job
        (~1 ms instead of a ~30 ms runc round trip on the exit path of every container).
        Anything else (other processes left in the cgroup, hooks, an unknown state layout,
        crun) goes to the runtime itself."""
        if self.name != "runc" or not self._delete_without_runtime(container_id):
            self.delete(container_id, force=True)

    def _delete_without_runtime(self, container_id: str) -> bool:
        state_dir = self.state_root / container_id
        try:
            state = json.loads((state_dir / "state.json").read_text())
            if set(os.listdir(state_dir)) != {"state.json"}:
                return False
            pid = int(state["init_process_pid"])
            start = int(state["init_process_start"])
            cgroups = state["cgroup_paths"]
            hooks = (state.get("config") or {}).get("hooks") or {}
        except FileNotFoundError:
            return True  # already deleted
        except (OSError, ValueError, KeyError, TypeError):
            return False
        if any(hooks.values()) or state.get("intel_rdt_path") or not isinstance(cgroups, dict):
            return False
        if _start_time(pid) == start:
            return False  # the init still runs: runc kills it
        for path in cgroups.values():
            if not isinstance(path, str) or not path.startswith("/sys/fs/cgroup/"):
                return False
            try:
                os.rmdir(path)
            except FileNotFoundError:
                continue
            except OSError:
                return False  # busy (processes left) or a sub-cgroup: runc's job
        try:
            os.unlink(state_dir / "state.json")
            os.rmdir(state_dir)
        except FileNotFoundError:
            pass
        except OSError:
            return False
        return True

    def pause(self, container_id: str) -> None:
        r = self._call("pause", container_id)
        if r.returncode != 0:
            raise FailedPrecondition(f"{self.name} pause failed: {_last_line(r.stderr)}")

    def resume(self, container_id: str) -> None:
        r = self._call("resume", container_id)
        if r.returncode != 0:
            raise FailedPrecondition(f"{self.name} resume failed: {_last_line(r.stderr)}")


def _start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat``; None when the process is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = stat[stat.rfind(")") + 2 :].split()
    return None if rest[0] == "Z" else int(rest[19])


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return "(no message)"
    line = lines[-1]
    m = re.search(r'msg="((?:[^"\\]|\\.)*)"', line)
    return m.group(1).replace('\\"', '"') if m else line


def ensure_dir(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    os.chmod(path, mode)
    return path
