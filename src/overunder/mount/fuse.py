"""Starting and ending ``fuse.overunder`` mounts: the overlay filesystem process in the
background, errors reported back before :func:`mount_fuse` returns.

The process is ``python -m overunder.fuse.daemon`` in its own session; it tells us over a pipe
whether the mount is live. Its log and pid file live in the run dir
(``/run/overunder/fuse/`` as root, ``$XDG_RUNTIME_DIR/overunder-fuse/`` otherwise), named after
the mountpoint, so :func:`unmount_fuse` can find the process and tell what happened to it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from overunder.errors import (
    AlreadyExists,
    FailedPrecondition,
    IntegrityError,
    InvalidArgument,
    NotFound,
    OverunderError,
    Unsupported,
)
from overunder.fuse import mounting
from overunder.fuse.daemon import DaemonConfig
from overunder.fuse.trace import trace_path_for
from overunder.mount.options import OverlayOptions, validate_overlay

__all__ = ["mount_fuse", "pid_file_for", "trace_file_of", "unmount_fuse"]

_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
_CATEGORIES: dict[str, type[OverunderError]] = {
    cls.category: cls
    for cls in (
        NotFound,
        AlreadyExists,
        InvalidArgument,
        FailedPrecondition,
        Unsupported,
        IntegrityError,
    )
}


def _run_file(target: Path, suffix: str) -> Path:
    return trace_path_for(target).with_suffix(suffix)


def pid_file_for(target: Path) -> Path:
    """Where the filesystem process of the mount on ``target`` records its pid."""
    return _run_file(target, ".pid")


def _check_fuse_device() -> None:
    if not os.path.exists("/dev/fuse"):
        raise Unsupported(
            "/dev/fuse does not exist: this kernel or container has no FUSE",
            hint="load the fuse module (modprobe fuse) or pass /dev/fuse into the container",
        )
    if os.geteuid() != 0 and not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise Unsupported(
            "this user cannot open /dev/fuse (it is not read-writable by others)",
            hint="as root: chmod 0666 /dev/fuse (Debian's usual default), or mount as root",
        )


def mount_fuse(
    opts: OverlayOptions, target: Path, *, trace: Path | None = None, debug: bool = False
) -> int:
    """Mount the FUSE overlay on ``target``; returns the filesystem process's pid once the mount
    is live. Options are checked with the kernel's rules first (:func:`validate_overlay`),
    so what the kernel refuses (a workdir inside the upper, or on another filesystem) is refused
    here too, with the reason. ``trace`` receives JSON lines for every copy-up and whiteout."""
    target = Path(os.path.abspath(target))
    opts = opts.resolved()
    validate_overlay(opts, target)
    _check_fuse_device()
    cfg = DaemonConfig(
        lowerdirs=[str(p) for p in opts.lowerdirs],
        upperdir=str(opts.upperdir) if opts.upperdir is not None else None,
        workdir=str(opts.workdir) if opts.workdir is not None else None,
        mountpoint=str(target),
        trace=str(Path(os.path.abspath(trace))) if trace is not None else None,
        debug=debug,
        userxattr="userxattr" in opts.extra,
        pid_file=str(pid_file_for(target)),
        log_file=str(_run_file(target, ".log")),
    )
    log_path = _run_file(target, ".log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    read_fd, write_fd = os.pipe()
    try:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "overunder.fuse.daemon", cfg.to_json(), str(write_fd)],
                pass_fds=(write_fd,),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                cwd="/",
            )
        os.close(write_fd)
        write_fd = -1
        answer = _read_answer(read_fd, proc, log_path)
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
    if answer is None:
        proc.wait(timeout=5)
        tail = _tail(log_path)
        kept = _keep_log_if_written(log_path)
        raise FailedPrecondition(
            f"the fuse.overunder process for {target} exited with status {proc.returncode} "
            "before the mount was live" + (f": {tail}" if tail else ""),
            hint="run with --debug" + (f", or read its log {kept}" if kept else ""),
        )
    if not answer.get("ok"):
        proc.wait(timeout=5)
        cls = _CATEGORIES.get(str(answer.get("category")), FailedPrecondition)
        hint = str(answer.get("hint") or "")
        kept = _keep_log_if_written(log_path)
        if kept:
            hint = (hint + "; " if hint else "") + f"the process's log: {kept}"
        raise cls(str(answer.get("message")), hint=hint or None)
    # The pid file is the process's own (written before it reported ready, removed at its end).
    # The child is ours only until it is live: never reap it from here again.
    proc.returncode = 0
    return proc.pid


def _read_answer(
    fd: int, proc: subprocess.Popen[bytes], log_path: Path
) -> dict[str, object] | None:
    deadline = time.monotonic() + _START_TIMEOUT
    data = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            if proc.poll() is not None:
                return None
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
        if data.endswith(b"\n"):
            break
    else:
        os.kill(proc.pid, signal.SIGKILL)
        raise FailedPrecondition(
            f"the fuse.overunder process did not report within {_START_TIMEOUT:.0f} s",
            hint=f"run with --debug to see where it hangs; its log: {log_path}",
        )
    if not data.strip():
        return None
    parsed = json.loads(data)
    return parsed if isinstance(parsed, dict) else None


def _keep_log_if_written(path: Path) -> Path | None:
    """A failed process's log: kept (and returned, for the error) when it says something,
    else removed, so the run dir does not collect one empty file per attempt."""
    try:
        if path.stat().st_size > 0:
            return path
        path.unlink()
    except OSError:
        pass
    return None


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(text.strip().splitlines()[-lines:])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _is_dead_mount(target: Path) -> bool:
    try:
        # statfs always reaches the filesystem process; stat may be answered from the cache.
        os.statvfs(target)
    except OSError as err:
        return err.errno == errno.ENOTCONN
    return False


def unmount_fuse(target: Path) -> str:
    """Unmount a ``fuse.overunder`` mount and wait for its process to end.

    A mount whose process died (killed, crashed) answers every access with "transport
    endpoint is not connected"; it is cleared the same way. Returns one sentence saying what
    happened (the CLI may show it). A busy mount raises FailedPrecondition.
    """
    target = Path(os.path.abspath(target))
    pid_file = pid_file_for(target)
    pid: int | None = None
    with contextlib.suppress(OSError, ValueError):
        pid = int(pid_file.read_text().strip())
    dead = _is_dead_mount(target)
    try:
        mounting.unmount(target, lazy=False)
    except FailedPrecondition as err:
        if not dead:
            if "busy" in err.message:
                from overunder.mount import _busy  # names the holders, as for the kernel

                raise _busy(target) from err
            raise
        mounting.unmount(target, lazy=True)
    if pid is not None:
        deadline = time.monotonic() + _STOP_TIMEOUT
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
    with contextlib.suppress(OSError):
        pid_file.unlink()
    # The process removes an empty log itself at a clean end; one killed could not.
    kept = (
        None if pid is not None and _alive(pid) else _keep_log_if_written(_run_file(target, ".log"))
    )
    if dead:
        who = f" (process {pid} had died)" if pid is not None else ""
        return (
            f"{target} was a dead fuse.overunder mount{who}: transport endpoint is not "
            "connected; cleared it" + (f" (its log: {kept})" if kept else "")
        )
    return f"unmounted {target}" + (f"; filesystem process {pid} ended" if pid else "")


def trace_file_of(target: Path) -> Path:
    """The trace file of the ``fuse.overunder`` mount on ``target`` (from its process's
    configuration). NotFound when nothing of ours is mounted there, FailedPrecondition when
    it was mounted without ``--trace``."""
    target = Path(os.path.abspath(target))
    try:
        pid = int(pid_file_for(target).read_text().strip())
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        cfg = DaemonConfig.from_json(argv[argv.index(b"overunder.fuse.daemon") + 1].decode())
    except (OSError, ValueError, KeyError, IndexError) as err:
        raise NotFound(
            f"no running fuse.overunder mount on {target}",
            hint="mount it with: overunder mount -t fuse.overunder --trace FILE ...",
        ) from err
    if cfg.trace is None:
        raise FailedPrecondition(
            f"the fuse.overunder mount on {target} was mounted without --trace",
            hint="remount with --trace FILE, then watch it (or: overlay watch --trace-file FILE)",
        )
    return Path(cfg.trace)
