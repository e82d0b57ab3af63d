"""The per-container supervisor (shim): a small process that outlives the CLI.

``spawn_shim`` starts ``python -m overunder.runtime.shim_main STATE_DIR FD``; that process forks
once more and the first child exits at once (so the shim is re-parented to init and never
becomes a zombie of the caller), calls ``setsid`` and makes itself a *child subreaper*
(``prctl(PR_SET_CHILD_SUBREAPER)``), so that the container's init, orphaned when ``runc create``
exits, becomes its child and can be reaped. Then it:

1. binds the published ports (a taken port fails the start, as in Docker);
2. runs ``runc create`` with pipes (or a console socket, for ``-t``) as the container's stdio,
   and ``runc start``; a failure is reported with runc's message and Docker's exit code
   (127 not found, 126 not executable, 125 other) and leaves no runtime state behind;
3. tells the caller ``{"ok": true, "pid": …}`` over the socketpair it was given (with the pty
   master attached as SCM_RIGHTS, when there is a terminal, so that the caller can resize it);
4. copies the container's output into the json-file log (and, when attached, to its own
   stdout/stderr, which are the caller's), and serves the port proxy;
5. reaps the container and writes ``exit.json`` atomically (exit code, 128+signal for a
   signal, finish time), runs ``runc delete`` and, when attached, sends ``{"exit": N}``;
6. runs the ``on_exit`` command, if any (the engine's removal of a ``--rm`` container).

With a restart policy (``restart_policy``), steps 2-5 repeat after an exit the policy covers,
after Docker's backoff, unless the engine dropped the stop marker (``stop-requested``) first;
``restart.json`` says how many restarts there were and whether one is pending. The published
ports stay bound; their relay moves into each new network namespace.

Files in the state dir (volatile, under the run root): ``shim.json`` (this config),
``shim.pid`` (pid and start time, so a recycled pid is not mistaken for the shim),
``init.pid``, ``exit.json``, ``restart.json``, ``stop-requested``, ``runc.log`` (runc's json
log), ``shim.log`` (our diagnostics), and, while a terminal is handed over, a console socket in
a temp dir.

The shim never mounts: the engine mounts the tree before the start. After the final exit the
shim detaches a kernel-overlay tree itself (``unmount_after_exit``); the engine unmounts the
rest (FUSE) when it reconciles or removes the container.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from overunder import atomic
from overunder.errors import FailedPrecondition, OverunderError
from overunder.runtime.console import ConsoleSocket, set_winsize
from overunder.runtime.logs import LogWriter, format_timestamp
from overunder.runtime.proxy import PortMapping, PortProxy
from overunder.runtime.runc import (
    RuntimeBinary,
    StartError,
    exit_code_for_start_error,
    read_runtime_error,
)

__all__ = [
    "STOP_MARKER",
    "ExitInfo",
    "RestartInfo",
    "ShimConfig",
    "ShimHandle",
    "process_start_time",
    "read_exit",
    "read_restart",
    "request_stop",
    "shim_alive",
    "spawn_shim",
    "write_json_atomic",
]

PR_SET_CHILD_SUBREAPER = 36
PR_SET_NAME = 15
MNT_DETACH = 2
SHIM_MODULE = "overunder.runtime.shim_main"
# The engine creates this file in the state dir before a stop, kill or rm: no restart after.
STOP_MARKER = "stop-requested"
# How long a foreground run --rm caller may take to remove its container before the shim
# falls back to its exit hook.
CALLER_REMOVE_TIMEOUT = 120.0
RESTART_DELAY_MIN = 0.1
RESTART_DELAY_MAX = 60.0
RESTART_RESET_AFTER = 10.0


@dataclass(slots=True)
class ShimConfig:
    container_id: str
    bundle: str
    state_dir: str
    log_path: str
    runtime_name: str
    runtime_path: str
    runtime_root: str
    ports: list[dict[str, object]] = field(default_factory=list)
    network_host: bool = False
    attach: bool = False  # tee output to the caller's stdout/stderr
    stdin: bool = False  # give the container the caller's stdin (-i)
    tty: bool = False
    # A kernel mount of the container's tree to take down after the exit (MergedDir goes away
    # with the container, as in Docker, even when no command comes by to notice the exit).
    unmount_after_exit: str = ""
    # rows, cols of the caller's terminal: set on the pty before the process starts, so that
    # the first thing it draws has the right size (later changes come from the caller).
    console_size: list[int] = field(default_factory=list)
    # A command run once the container has exited and exit.json is written: the engine's
    # removal of a --rm container, so that it goes at once, with no CLI around to do it.
    on_exit: list[str] = field(default_factory=list)
    # Docker's --restart: "no", "on-failure" (restart_max tries, 0 = no limit), "always",
    # "unless-stopped" (the same as always without a daemon that restarts).
    restart_policy: str = "no"
    restart_max: int = 0

    @property
    def runtime(self) -> RuntimeBinary:
        return RuntimeBinary(self.runtime_name, self.runtime_path, Path(self.runtime_root))


@dataclass(frozen=True, slots=True)
class ExitInfo:
    exit_code: int
    finished_at: str
    error: str = ""


def write_json_atomic(path: Path, value: Any, *, mode: int = 0o600) -> None:
    """temp in the same dir → fsync → rename (→ fsync of the dir)."""
    atomic.write_json(path, value, mode=mode)


def process_start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat`` (start time in clock ticks), None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = stat[stat.rfind(")") + 2 :].split()
    # rest[0] is field 3 (state); a zombie counts as gone.
    if rest[0] == "Z":
        return None
    return int(rest[19])


def shim_alive(state_dir: Path) -> bool:
    """Is the shim recorded in ``state_dir`` still running (same pid *and* start time)?"""
    try:
        data = json.loads((state_dir / "shim.pid").read_text())
    except (OSError, ValueError):
        return False
    pid = int(data.get("pid", 0))
    return pid > 0 and process_start_time(pid) == data.get("start_time")


def read_exit(state_dir: Path) -> ExitInfo | None:
    try:
        data = json.loads((state_dir / "exit.json").read_text())
    except (OSError, ValueError):
        return None
    return ExitInfo(
        exit_code=int(data["ExitCode"]),
        finished_at=str(data["FinishedAt"]),
        error=str(data.get("Error", "")),
    )


_IN_CLOEXEC = 0o2000000
_IN_NONBLOCK = 0o4000
_IN_CREATE = 0x100
_IN_MOVED_TO = 0x80


def _inotify_dir(path: Path) -> int | None:
    """An inotify fd that becomes readable when a name appears in ``path`` (exit.json is
    renamed into place); None when inotify is not available."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = int(libc.inotify_init1(_IN_CLOEXEC | _IN_NONBLOCK))
    if fd < 0:
        return None
    if libc.inotify_add_watch(fd, str(path).encode(), _IN_CREATE | _IN_MOVED_TO) < 0:
        os.close(fd)
        return None
    return fd


def _shim_pidfd(state_dir: Path) -> int | None:
    """A pidfd of the recorded shim, opened only if that pid is still the same process (its
    start time checked after opening, so a reused pid is never waited on)."""
    try:
        data = json.loads((state_dir / "shim.pid").read_text())
        pid = int(data.get("pid", 0))
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        fd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None
    if process_start_time(pid) != data.get("start_time"):
        os.close(fd)
        return None
    return fd


def wait_shim_exit(state_dir: Path, timeout: float | None) -> bool:
    """Block until the shim in ``state_dir`` has written exit.json or is gone; False when
    ``timeout`` seconds passed first.

    Woken by events, not fixed sleeps: a pidfd of the shim (readable when it exits) and an
    inotify watch on the dir (exit.json renamed in). A slow poll stays as a safety net, for a
    kernel without pidfd/inotify and for the start-time re-check."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pidfd = _shim_pidfd(state_dir)
    ifd = _inotify_dir(state_dir) if pidfd is not None else None
    fds = [fd for fd in (pidfd, ifd) if fd is not None]
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    # Without a pidfd nothing wakes us: poll the files briefly, as before.
    step = 0.25 if pidfd is not None else 0.005
    try:
        while True:
            if read_exit(state_dir) is not None or not shim_alive(state_dir):
                return True
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            wait = step if left is None else min(step, left)
            events = poller.poll(int(wait * 1000) + 1) if fds else []
            if not fds:
                time.sleep(wait)
                step = min(step * 2, 0.05)
            for fd, _ev in events:
                if fd == pidfd:
                    return True
                if fd == ifd:
                    with contextlib.suppress(OSError):
                        os.read(fd, 65536)
    finally:
        for fd in fds:
            os.close(fd)


@dataclass(frozen=True, slots=True)
class RestartInfo:
    """What the shim reports of its restarts (``restart.json``): how many so far, and either
    the backoff it is in (``restarting``, with the last exit) or the new process."""

    count: int
    restarting: bool
    exit_code: int = 0
    finished_at: str = ""
    pid: int = 0
    started_at: str = ""


def read_restart(state_dir: Path) -> RestartInfo | None:
    try:
        data = json.loads((state_dir / "restart.json").read_text())
    except (OSError, ValueError):
        return None
    return RestartInfo(
        count=int(data.get("RestartCount", 0)),
        restarting=bool(data.get("Restarting")),
        exit_code=int(data.get("ExitCode", 0)),
        finished_at=str(data.get("FinishedAt", "")),
        pid=int(data.get("Pid", 0)),
        started_at=str(data.get("StartedAt", "")),
    )


def request_stop(state_dir: Path) -> None:
    """Tell the shim not to restart the container after this exit (stop, kill, rm)."""
    with contextlib.suppress(FileNotFoundError):
        (state_dir / STOP_MARKER).touch(mode=0o600)


class _Messages:
    """JSON lines from the shim, with any fds (SCM_RIGHTS) that came along. Keeps what was
    read past a newline: the start and exit messages of a short-lived container often arrive
    in one read."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = b""
        self.fds: list[int] = []

    def next(self) -> dict[str, Any] | None:
        while b"\n" not in self._buf:
            data, got_fds, _flags, _addr = socket.recv_fds(self.sock, 65536, 1)
            self.fds.extend(got_fds)
            if not data:
                return None
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        value: dict[str, Any] = json.loads(line)
        return value


class ShimHandle:
    """The caller's end: the start result, the pty master (``-t``) and, when attached, the
    container's exit code."""

    def __init__(
        self, messages: _Messages, pid: int, ports: list[PortMapping], master: int | None
    ) -> None:
        self._messages = messages
        self.pid = pid
        self.ports = ports
        self.master_fd = master

    def wait_exit(self) -> int:
        """Block until the shim reports the exit code (attached starts only)."""
        msg = self._messages.next()
        if msg is None or "exit" not in msg:
            raise FailedPrecondition(
                "the container's shim went away before reporting an exit code",
                hint="see shim.log in the container's run directory",
            )
        return int(msg["exit"])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._messages.sock.close()
        if self.master_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.master_fd)
            self.master_fd = None


def spawn_shim(
    cfg: ShimConfig,
    *,
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    timeout: float = 60.0,
    how: str = "auto",
) -> ShimHandle:
    """Start the shim and wait until the container runs (or failed to start).

    ``stdin``/``stdout``/``stderr`` are handed to the shim (attached runs); None gives it
    /dev/null, so that a detached shim holds none of the caller's pipes open.

    ``how``: ``"fork"`` forks this process (no new interpreter: ~0.1-0.3 s faster; every fd
    but the shim's own is closed in the child), ``"exec"`` starts
    ``python -m overunder.runtime.shim_main``; ``"auto"`` forks only when this process has a
    single thread (forking a threaded process can inherit locks held by other threads) and
    ``OVERUNDER_SHIM_EXEC`` is unset.

    Raises :class:`StartError` with Docker's exit code when the process cannot start.
    """
    state = Path(cfg.state_dir)
    write_json_atomic(state / "shim.json", asdict(cfg))
    if how == "auto":
        single = threading.active_count() == 1
        how = "fork" if single and not os.environ.get("OVERUNDER_SHIM_EXEC") else "exec"
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        stdio = (
            stdin if stdin is not None else devnull,
            stdout if stdout is not None else devnull,
            stderr if stderr is not None else devnull,
        )
        if how == "fork":
            first = _fork_shim(state, theirs.fileno(), stdio)
            os.waitpid(first, 0)  # it exits right after forking the real shim
        else:
            proc = subprocess.Popen(
                [sys.executable, "-m", SHIM_MODULE, str(state), str(theirs.fileno())],
                stdin=stdio[0],
                stdout=stdio[1],
                stderr=stdio[2],
                pass_fds=(theirs.fileno(),),
                close_fds=True,
                start_new_session=True,
                cwd="/",
            )
            proc.wait()  # the first child exits right after forking the real shim
    finally:
        os.close(devnull)
        theirs.close()
    ours.settimeout(timeout)
    messages = _Messages(ours)
    fds = messages.fds
    try:
        msg = messages.next()
    except (TimeoutError, OSError) as err:
        ours.close()
        raise FailedPrecondition(
            f"the shim for {cfg.container_id[:12]} did not report a start: {err}",
            hint=f"see {state / 'shim.log'}",
        ) from err
    ours.settimeout(None)
    if msg is None:
        ours.close()
        log = state / "shim.log"
        detail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
        raise FailedPrecondition(
            f"the shim for {cfg.container_id[:12]} exited before starting the container"
            + (f": {detail[0]}" if detail else ""),
            hint=f"see {log}",
        )
    if not msg.get("ok"):
        ours.close()
        for fd in fds:
            os.close(fd)
        code = int(msg.get("code", 125))
        if code == 125 and msg.get("kind") == "precondition":
            raise FailedPrecondition(str(msg["error"]), hint=msg.get("hint"))
        raise StartError(str(msg["error"]), code=code, hint=msg.get("hint"))
    ports = [PortMapping.from_dict(p) for p in msg.get("ports", [])]
    master = fds.pop(0) if fds else None
    return ShimHandle(messages, int(msg["pid"]), ports, master)


# ---------------------------------------------------------------------------------------------
# The shim process itself.


class _Shim:
    def __init__(self, cfg: ShimConfig, sock: socket.socket) -> None:
        self.cfg = cfg
        self.sock = sock
        self.state = Path(cfg.state_dir)
        self.runtime = cfg.runtime
        self.runc_log = self.state / "runc.log"
        self.copiers: list[threading.Thread] = []
        self.proxy = PortProxy([PortMapping.from_dict(p) for p in cfg.ports])
        self.log: LogWriter | None = None
        self.attached = cfg.attach

    def send(self, msg: dict[str, Any], fds: list[int] | None = None) -> None:
        data = (json.dumps(msg) + "\n").encode()
        try:
            if fds:
                socket.send_fds(self.sock, [data], fds)
            else:
                self.sock.sendall(data)
        except OSError:
            self.attached = False  # the caller went away; the container carries on

    def fail(self, err: OverunderError, code: int = 125) -> None:
        kind = "precondition" if isinstance(err, FailedPrecondition) else "start"
        self.send({"ok": False, "error": err.message, "hint": err.hint, "code": code, "kind": kind})

    def _tee(self, fd: int, data: bytes) -> None:
        if not self.attached:
            return
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
        except OSError:
            pass

    def _copy(self, src: int, stream: str, tee_fd: int) -> None:
        assert self.log is not None
        try:
            while True:
                try:
                    data = os.read(src, 65536)
                except OSError:
                    break  # EIO on a pty master once the last slave fd closes
                if not data:
                    break
                self.log.write(stream, data)
                self._tee(tee_fd, data)
        finally:
            self.log.flush(stream)
            os.close(src)

    def _feed_stdin(self, master: int) -> None:
        try:
            while True:
                data = os.read(0, 65536)
                if not data:
                    break
                os.write(master, data)
        except OSError:
            pass

    def run(self) -> int:
        cfg = self.cfg
        try:
            self.proxy.bind()
        except OverunderError as err:
            self.fail(err)
            return 1
        self.log = LogWriter(Path(cfg.log_path))
        restarts = 0
        delay = RESTART_DELAY_MIN
        while True:
            began = time.monotonic()
            status = self.run_once(first=restarts == 0)
            if status is None:
                return 1  # the first start failed: reported to the caller, nothing left
            with contextlib.suppress(OverunderError, subprocess.SubprocessError):
                self.runtime.delete_stopped(cfg.container_id)
            if not self.should_restart(status, restarts):
                break
            # Docker's backoff: 100 ms doubling per restart, back to 100 ms after a run of
            # 10 s or more, at most a minute.
            if time.monotonic() - began >= RESTART_RESET_AFTER:
                delay = RESTART_DELAY_MIN
            restarts += 1
            write_json_atomic(
                self.state / "restart.json",
                {
                    "RestartCount": restarts,
                    "Restarting": True,
                    "ExitCode": status,
                    "FinishedAt": format_timestamp(),
                },
            )
            if not self.sleep_unless_stopped(delay):
                break
            delay = min(delay * 2, RESTART_DELAY_MAX)
        self.log.close()
        finished = format_timestamp()
        self.proxy.close()
        _release_caller_stdio()
        if cfg.unmount_after_exit:
            _unmount_quietly(cfg.unmount_after_exit)
        write_json_atomic(
            self.state / "exit.json",
            {"ExitCode": status, "FinishedAt": finished, "Error": ""},
        )
        self.send({"exit": status})
        if cfg.on_exit and not self.caller_removed_it():
            self.run_exit_hook(cfg.on_exit)
        return 0

    def caller_removed_it(self) -> bool:
        """An attached caller (``run --rm`` in the foreground) removes the container itself
        and then hangs up; only if it went away without doing so (killed, or it failed) is
        the exit hook needed. Saves starting a second interpreter that would compete with
        the caller for the CPU and the container's locks."""
        if not self.attached:
            return False
        self.sock.settimeout(CALLER_REMOVE_TIMEOUT)
        try:
            while self.sock.recv(4096):
                pass
        except OSError:
            return False
        # The removal takes the run dir (our state dir) with it.
        return not self.state.exists()

    def stop_requested(self) -> bool:
        return (self.state / STOP_MARKER).exists()

    def should_restart(self, status: int, restarts: int) -> bool:
        """Docker's restart policies; a stop, kill or rm by the engine (the stop marker)
        always wins."""
        policy = self.cfg.restart_policy
        if policy in ("", "no") or self.stop_requested():
            return False
        if policy == "on-failure":
            limit = self.cfg.restart_max
            return status != 0 and (limit <= 0 or restarts < limit)
        return policy in ("always", "unless-stopped")

    def sleep_unless_stopped(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.stop_requested():
                return False
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return not self.stop_requested()

    def run_once(self, *, first: bool) -> int | None:
        """Create and start the container once and reap it: its exit status. A failure to
        start: on the first run reported to the caller (None); on a restart, the exit code
        Docker gives that failure (127/126/125), logged."""
        cfg = self.cfg
        assert self.log is not None
        pid_file = self.state / "init.pid"
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.runc_log.unlink()
        create = [
            *self.runtime.base(log=self.runc_log),
            "create",
            "--bundle",
            cfg.bundle,
            "--pid-file",
            str(pid_file),
        ]
        console: ConsoleSocket | None = None
        out_r = err_r = -1
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        if cfg.tty:
            console = ConsoleSocket()
            create += ["--console-socket", str(console.path)]
            stdio = (devnull, devnull, devnull)
        else:
            out_r, out_w = os.pipe2(os.O_CLOEXEC)
            err_r, err_w = os.pipe2(os.O_CLOEXEC)
            stdio = (0 if cfg.stdin and first else devnull, out_w, err_w)
        create.append(cfg.container_id)
        rc = subprocess.run(
            create,
            stdin=stdio[0],
            stdout=stdio[1],
            stderr=stdio[2],
            close_fds=True,
            check=False,
        ).returncode
        if not cfg.tty:
            os.close(out_w)
            os.close(err_w)
        os.close(devnull)
        if rc != 0:
            message = read_runtime_error(self.runc_log) or f"{self.runtime.name} create failed"
            for fd in (out_r, err_r):
                if fd >= 0:
                    os.close(fd)
            if console is not None:
                console.close()
            return self.start_failed(message, first=first, pid=None)
        pid = int(pid_file.read_text().strip())
        master: int | None = None
        if console is not None:
            try:
                master = console.receive()
            except OverunderError as err:
                self.kill_and_cleanup(pid)
                if first:
                    self.fail(err)
                    self.proxy.close()
                    return None
                sys.stderr.write(f"restart failed: {err}\n")
                return 125
            finally:
                console.close()
            if len(cfg.console_size) == 2 and all(cfg.console_size):
                with contextlib.suppress(OSError):
                    set_winsize(master, cfg.console_size[0], cfg.console_size[1])
            self._start_copier(master, "stdout", 1)
            if cfg.stdin and first:
                threading.Thread(target=self._feed_stdin, args=(master,), daemon=True).start()
        else:
            self._start_copier(out_r, "stdout", 1)
            self._start_copier(err_r, "stderr", 2)
        try:
            self.runtime.start(cfg.container_id)
        except OverunderError as err:
            message = read_runtime_error(self.runc_log) or err.message
            return self.start_failed(message, first=first, pid=pid)
        started_at = format_timestamp()
        netns = None if cfg.network_host else f"/proc/{pid}/ns/net"
        try:
            if first:
                self.proxy.start(netns)
            else:
                self.proxy.retarget(netns)
        except OSError as err:
            self.kill_and_cleanup(pid)
            if first:
                self.fail(FailedPrecondition(f"cannot publish ports: {err}"))
                self.proxy.close()
                return None
            sys.stderr.write(f"cannot publish ports after a restart: {err}\n")
            return 125
        if first:
            ok = {
                "ok": True,
                "pid": pid,
                "started_at": started_at,
                "ports": [m.to_dict() for m in self.proxy.mappings],
            }
            self.send(ok, [master] if master is not None and cfg.attach else None)
        else:
            write_json_atomic(
                self.state / "restart.json",
                {
                    "RestartCount": json.loads((self.state / "restart.json").read_text())[
                        "RestartCount"
                    ],
                    "Restarting": False,
                    "Pid": pid,
                    "StartedAt": started_at,
                },
            )
        status = self.reap(pid)
        for t in self.copiers:
            t.join(timeout=5)
        self.copiers = []
        return status

    def start_failed(self, message: str, *, first: bool, pid: int | None) -> int | None:
        if pid is not None:
            self.kill_and_cleanup(pid)
        else:
            self.cleanup_runtime()
        if first:
            self.send_start_failure(message)
            self.proxy.close()
            return None
        sys.stderr.write(f"restart failed: {message}\n")
        return exit_code_for_start_error(message)

    def run_exit_hook(self, argv: list[str]) -> None:
        """Run ``argv`` (stdout and stderr into shim.log); its failure is only logged: the
        next engine command reconciles whatever it left."""
        try:
            r = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=sys.stderr,
                stderr=sys.stderr,
                close_fds=True,
                timeout=120,
                check=False,
                cwd="/",
            )
            if r.returncode != 0:
                sys.stderr.write(f"exit hook {argv!r} exited {r.returncode}\n")
        except (OSError, subprocess.SubprocessError) as err:
            sys.stderr.write(f"exit hook {argv!r} failed: {err}\n")

    def send_start_failure(self, message: str) -> None:
        code = exit_code_for_start_error(message)
        hint = {
            127: "check the command's name and the image's PATH",
            126: "the command must be an executable file in the image",
        }.get(code, f"see {self.runc_log}")
        self.fail(StartError(message, code=code, hint=hint), code)

    def _start_copier(self, fd: int, stream: str, tee_fd: int) -> None:
        t = threading.Thread(target=self._copy, args=(fd, stream, tee_fd), daemon=True)
        t.start()
        self.copiers.append(t)

    def reap(self, pid: int) -> int:
        """Wait for the container's init; reap every other orphan that comes our way."""
        while True:
            try:
                got, status = os.waitpid(-1, 0)
            except ChildProcessError:
                # Not our child (should not happen: we are its subreaper); poll instead.
                while process_start_time(pid) is not None:
                    time.sleep(0.05)
                return 137
            except InterruptedError:
                continue
            if got == pid:
                code = os.waitstatus_to_exitcode(status)
                return 128 - code if code < 0 else code

    def kill_and_cleanup(self, pid: int) -> None:
        with contextlib.suppress(OverunderError, subprocess.SubprocessError):
            self.runtime.kill(self.cfg.container_id, 9)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, 0)
        self.cleanup_runtime()

    def cleanup_runtime(self) -> None:
        with contextlib.suppress(OverunderError, subprocess.SubprocessError):
            self.runtime.delete(self.cfg.container_id, force=True)


def _release_caller_stdio() -> None:
    """Point fds 0-2 at /dev/null once the container is done: an attached caller's pipes
    (``out=$(overunder run --rm ...)``) must reach EOF when the caller exits, not when the
    shim does, after its exit hook."""
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            if null != target:
                os.dup2(null, target)
        if null > 2:
            os.close(null)


def _unmount_quietly(target: str) -> None:
    """umount2(MNT_DETACH) and rmdir; the engine retries whatever this leaves."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(target.encode(), MNT_DETACH) == 0:
        with contextlib.suppress(OSError):
            os.rmdir(target)


def _fork_shim(state: Path, sock_fd: int, stdio: tuple[int, int, int]) -> int:
    """Fork; the child becomes the shim's first process (see :func:`_daemonize_and_run`).
    Returns the child's pid to the caller; the child never returns."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid != 0:
        return pid
    code = 1
    try:
        os.setsid()
        for target, fd in enumerate(stdio):
            if fd != target:
                os.dup2(fd, target)
        # Nothing of the caller's may stay open here: a held flock (the container's record
        # lock) or a pipe would live as long as the container.
        os.closerange(3, sock_fd)
        os.closerange(sock_fd + 1, os.sysconf("SC_OPEN_MAX"))
        os.chdir("/")
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGWINCH):
            signal.signal(sig, signal.SIG_DFL)
        code = _daemonize_and_run(state, sock_fd)
    except BaseException:  # a forked child must never return into the caller's code
        with contextlib.suppress(BaseException):
            traceback.print_exc()
    finally:
        os._exit(code)


def _daemonize_and_run(state_dir: Path, sock_fd: int) -> int:
    if os.fork() != 0:
        os._exit(0)
    with contextlib.suppress(OSError):
        os.setsid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    # A forked shim still shows the CLI's command line; its name at least says what it is.
    libc.prctl(PR_SET_NAME, b"overunder-shim", 0, 0, 0)
    log_fd = os.open(
        state_dir / "shim.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
    )
    sys.stderr = open(log_fd, "w", buffering=1, closefd=True)  # noqa: SIM115
    start = process_start_time(os.getpid())
    write_json_atomic(state_dir / "shim.pid", {"pid": os.getpid(), "start_time": start})
    sock = socket.socket(fileno=sock_fd)
    try:
        cfg = ShimConfig(**json.loads((state_dir / "shim.json").read_text()))
        return _Shim(cfg, sock).run()
    except Exception as err:
        traceback.print_exc(file=sys.stderr)
        with contextlib.suppress(OSError):
            msg = {
                "ok": False,
                "error": f"the shim failed: {type(err).__name__}: {err}",
                "hint": f"see {state_dir / 'shim.log'}",
                "code": 125,
            }
            sock.sendall((json.dumps(msg) + "\n").encode())
        return 1


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: python -m overunder.runtime.shim STATE_DIR FD\n")
        return 2
    return _daemonize_and_run(Path(argv[0]), int(argv[1]))
