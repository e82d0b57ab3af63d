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
_RUNC_LINE = re.compile(
    rb'^(time="[^"]*" level=(error|fatal|warning) msg=|(runc )?exec failed: unable to start )'
)


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
    write_json_atomic(spec_path, process)
    tty = bool(process.get("terminal"))
    args = [*runtime.base(log=log_path), "exec", "--process", str(spec_path)]
    console: ConsoleSocket | None = None
    try:
        if detach:
            args += ["--detach", "--pid-file", str(work_dir / f"exec-{tag}.pid")]
        if tty and detach:
            # runc hands a detached process's pty out over a console socket only; a
            # foreground one it relays itself (raw mode, SIGWINCH → resize) on our stdio.
            console = ConsoleSocket()
            args += ["--console-socket", str(console.path)]
        args.append(container_id)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            proc = subprocess.Popen(
                args,
                stdin=None if stdin and not detach else subprocess.DEVNULL,
                stdout=subprocess.DEVNULL if detach else None,
                stderr=err_w,
                close_fds=True,
            )
        finally:
            os.close(err_w)
        relay = threading.Thread(
            target=_relay_stderr, args=(err_r, sys.stderr.fileno()), daemon=True
        )
        relay.start()
        if console is not None:
            with contextlib.suppress(OverunderError):
                os.close(console.receive(timeout=30))  # detached: nobody attaches later
        rc = proc.wait()
        relay.join(timeout=5)
        message = read_runtime_error(log_path)
        if message and rc != 0:
            raise StartError(
                f"OCI runtime exec failed: {message}: unknown",
                code=126,
                hint="check the command's name and that it is executable in the container",
            )
        if rc < 0:
            return 128 - rc
        return rc
    finally:
        if console is not None:
            console.close()
        for p in (spec_path, log_path, work_dir / f"exec-{tag}.pid"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
