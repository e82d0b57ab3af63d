"""Terminals: the pty master runc hands over, raw mode, and window sizes.

With ``process.terminal: true`` runc allocates the pty inside the container and sends the
master end over the ``--console-socket`` (a unix socket we listen on) as SCM_RIGHTS. Whoever
holds the master relays bytes; resizing is ``TIOCSWINSZ`` on the master, which the kernel
turns into SIGWINCH for the container's foreground process group.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
import tempfile
import termios
import threading
import tty
from collections.abc import Iterator
from pathlib import Path

from overunder.errors import FailedPrecondition

__all__ = ["ConsoleSocket", "copy_winsize", "get_winsize", "raw_terminal", "set_winsize"]


class ConsoleSocket:
    """A listening unix socket that receives one pty master from the runtime.

    It lives in a fresh 0700 temp dir, not in the container's state dir: a unix socket path
    must fit 108 bytes, and state dirs carry a 64-hex id below an arbitrary root.
    """

    def __init__(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="overunder-console-"))
        self.path = self._dir / "console.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(self.path))
        self._sock.listen(1)
        self._fd: int | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            conn, _ = self._sock.accept()
            with conn:
                _msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 1)
            if fds:
                self._fd = fds[0]
                os.set_inheritable(self._fd, False)
        except OSError as err:
            self._error = err
        finally:
            self._done.set()

    def receive(self, timeout: float = 10.0) -> int:
        """The pty master fd (ours to close)."""
        if not self._done.wait(timeout) or self._fd is None:
            raise FailedPrecondition(
                f"the runtime sent no terminal over {self.path}"
                + (f": {self._error}" if self._error else ""),
                hint="run without -t to see whether the container starts at all",
            )
        return self._fd

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with contextlib.suppress(OSError):
            self._dir.rmdir()


def get_winsize(fd: int) -> tuple[int, int]:
    data = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    rows, cols, _x, _y = struct.unpack("HHHH", data)
    return rows, cols


def set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def copy_winsize(src_fd: int, dst_fd: int) -> None:
    """Give the pty ``dst_fd`` the size of terminal ``src_fd`` (no-op if src is no tty)."""
    with contextlib.suppress(OSError):
        rows, cols = get_winsize(src_fd)
        if rows and cols:
            set_winsize(dst_fd, rows, cols)


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Raw mode on ``fd`` while inside, restored after (nothing happens if it is no tty)."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
