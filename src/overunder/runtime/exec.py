"""``exec``: one more process in a running container, through ``runc exec --process``.

The caller's stdin/stdout are handed to the process as they are (runc's pass-through mode),
so pipes and files work without a relay. runc prints its own failure to the same stderr as
the process; we give stderr to a pipe and drop runc's log line there (the message comes from
runc's ``--log`` file instead), so the user sees Docker's text and nothing twice. With ``-t``
runc allocates the pty and relays it on our stdio itself (raw mode, and SIGWINCH →
``TIOCSWINSZ``); only ``-d -t`` needs a console socket. :func:`relay_terminal` is the same
relay for a pty master we hold.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from overunder.errors import OverunderError
from overunder.runtime.console import ConsoleSocket, copy_winsize, raw_terminal
from overunder.runtime.runc import RuntimeBinary, StartError, read_runtime_error
from overunder.runtime.shim import write_json_atomic

__all__ = ["exec_process", "relay_terminal"]

# runc's own complaint on stderr: a logrus line, or (with --log set) the bare error text.
_RUNC_LINE = re.compile(rb'^(time="[^"]*" level=(error|fatal|warning) msg=|(runc )?exec failed: )')


def _relay_stderr(src: int, dst: int) -> None:
    pending = b""
    while True:
        try:
            data = os.read(src, 65536)
        except OSError:
            break
        if not data:
            break
        pending += data
        lines = pending.split(b"\n")
        pending = lines.pop()
        out = b"".join(line + b"\n" for line in lines if not _RUNC_LINE.match(line))
        if out:
            with contextlib.suppress(OSError):
                os.write(dst, out)
    if pending and not _RUNC_LINE.match(pending):
        with contextlib.suppress(OSError):
            os.write(dst, pending)
    os.close(src)


def relay_terminal(master: int, *, stdin: bool, done: threading.Event | None = None) -> None:
    """Copy master → our stdout (and our stdin → master when ``stdin``) until the pty closes.

    Our terminal is raw meanwhile and its size is copied to the pty now and on SIGWINCH.
    """
    in_fd, out_fd = sys.stdin.fileno(), sys.stdout.fileno()
    size_from = in_fd if os.isatty(in_fd) else out_fd
    copy_winsize(size_from, master)
    previous: Any = None
    in_main = threading.current_thread() is threading.main_thread()

    def on_winch(_sig: int, _frame: FrameType | None) -> None:
        copy_winsize(size_from, master)

    if in_main:
        previous = signal.signal(signal.SIGWINCH, on_winch)

    def feed() -> None:
        try:
            while True:
                data = os.read(in_fd, 65536)
                if not data:
                    break
                os.write(master, data)
        except OSError:
            pass

    try:
        with raw_terminal(in_fd) if stdin else contextlib.nullcontext():
            if stdin:
                threading.Thread(target=feed, daemon=True).start()
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break  # EIO: the last slave fd closed
                if not data:
                    break
                try:
                    os.write(out_fd, data)
                except OSError:
                    break
    finally:
        if in_main and previous is not None:
            signal.signal(signal.SIGWINCH, previous)


def exec_process(
    runtime: RuntimeBinary,
    container_id: str,
    process: dict[str, Any],
    *,
    work_dir: Path,
    stdin: bool = False,
    detach: bool = False,
) -> int:
    """Run ``process`` (an OCI process object) in the container; returns its exit code
    (0 at once with ``detach``).

    Raises :class:`StartError` (exit code 126, as Docker's ``exec``) with Docker's
    ``OCI runtime exec failed: …`` text when runc cannot start it.
    """
    tag = secrets.token_hex(6)
    spec_path = work_dir / f"exec-{tag}.json"
    log_path = work_dir / f"exec-{tag}.log"
    pid_path = work_dir / f"exec-{tag}.pid"
    write_json_atomic(spec_path, process)
    tty = bool(process.get("terminal"))
    # runc relays a foreground terminal itself, but only on a terminal of ours (it opens
    # /dev/tty). Without one (scripts, tests) we run it detached, take the pty master from the
    # console socket, relay it here and reap the process as its subreaper.
    relay_here = tty and not detach and not os.isatty(sys.stdin.fileno())
    args = [*runtime.base(log=log_path), "exec", "--process", str(spec_path)]
    console: ConsoleSocket | None = None
    try:
        if detach or relay_here:
            args += ["--detach", "--pid-file", str(pid_path)]
        if tty and (detach or relay_here):
            console = ConsoleSocket()
            args += ["--console-socket", str(console.path)]
        args.append(container_id)
        if relay_here:
            _become_subreaper()
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            proc = subprocess.Popen(
                args,
                stdin=None if stdin and not detach and not relay_here else subprocess.DEVNULL,
                stdout=subprocess.DEVNULL if detach or relay_here else None,
                stderr=err_w,
                close_fds=True,
            )
        finally:
            os.close(err_w)
        relay = threading.Thread(
            target=_relay_stderr, args=(err_r, sys.stderr.fileno()), daemon=True
        )
        relay.start()
        master: int | None = None
        if console is not None:
            with contextlib.suppress(OverunderError):
                master = console.receive(timeout=30)
        rc = proc.wait()
        relay.join(timeout=5)
        message = read_runtime_error(log_path)
        if message and rc != 0:
            if master is not None:
                os.close(master)
            raise StartError(
                f"OCI runtime exec failed: {message}: unknown",
                code=126,
                hint="check the command's name and that it is executable in the container",
            )
        if relay_here and master is not None:
            pid = int(pid_path.read_text().strip())
            pump = threading.Thread(
                target=_copy_master, args=(master, sys.stdout.fileno(), stdin), daemon=True
            )
            pump.start()
            rc = _reap(pid)
            pump.join(timeout=5)
            os.close(master)
        elif master is not None:
            os.close(master)  # detached: nobody attaches later
        if rc < 0:
            return 128 - rc
        return rc
    finally:
        if console is not None:
            console.close()
        for p in (spec_path, log_path, pid_path):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def _become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _reap(pid: int) -> int:
    while True:
        try:
            got, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 137
        except InterruptedError:
            continue
        if got == pid:
            code = os.waitstatus_to_exitcode(status)
            return 128 - code if code < 0 else code


def _copy_master(master: int, out_fd: int, stdin: bool) -> None:
    if stdin:

        def feed() -> None:
            try:
                while True:
                    data = os.read(sys.stdin.fileno(), 65536)
                    if not data:
                        break
                    os.write(master, data)
            except OSError:
                pass

        threading.Thread(target=feed, daemon=True).start()
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            return  # EIO once the process (the last slave holder) is gone
        if not data:
            return
        with contextlib.suppress(OSError):
            os.write(out_fd, data)
