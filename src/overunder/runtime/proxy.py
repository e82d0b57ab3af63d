"""Published ports without iptables, bridges or veth pairs.

The shim listens on the host address (``127.0.0.1`` unless ``-p IP:HOST:CTR`` names one) and,
for each connection, opens a socket *inside the container's network namespace* and connects
it to ``127.0.0.1:<container port>`` there, then relays bytes both ways.

How a socket gets into another network namespace: a socket belongs to the namespace of the
thread that created it, and ``setns(2)`` moves only the calling thread. So one helper thread
enters the container's namespace once (through an fd of ``/proc/<pid>/ns/net``, kept open so
the namespace outlives the lookup) and does nothing but create sockets on request; connecting
and relaying happen on ordinary threads. The shim's other threads stay in the host namespace.

TCP only; UDP ports are refused when parsed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import socket
import threading
from dataclasses import dataclass

from overunder.errors import FailedPrecondition, InvalidArgument

__all__ = ["PortMapping", "PortProxy", "parse_publish"]

CLONE_NEWNET = 0x40000000
_BUF = 64 * 1024


@dataclass(frozen=True, slots=True)
class PortMapping:
    host_ip: str
    host_port: int
    container_port: int
    proto: str = "tcp"

    def to_dict(self) -> dict[str, object]:
        return {
            "HostIp": self.host_ip,
            "HostPort": self.host_port,
            "ContainerPort": self.container_port,
            "Proto": self.proto,
        }

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> PortMapping:
        return cls(
            host_ip=str(d["HostIp"]),
            host_port=int(str(d["HostPort"])),
            container_port=int(str(d["ContainerPort"])),
            proto=str(d.get("Proto", "tcp")),
        )


def _port(text: str, spec: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise InvalidArgument(
            f"invalid port '{text}' in -p {spec}",
            hint="use -p [IP:]HOSTPORT:CONTAINERPORT with ports 1-65535",
        )
    return int(text)


def parse_publish(spec: str) -> PortMapping:
    """``-p`` values: ``3001:3000``, ``127.0.0.1:3001:3000``, ``3000`` (host port picked by the
    kernel), with an optional ``/tcp``."""
    body, _, proto = spec.partition("/")
    proto = proto or "tcp"
    if proto != "tcp":
        raise InvalidArgument(
            f"-p {spec}: only tcp ports can be published", hint="drop the /udp suffix"
        )
    parts = body.rsplit(":", 2)
    host_ip = "127.0.0.1"
    if len(parts) == 3:
        host_ip = parts[0].strip("[]") or "127.0.0.1"
        host, ctr = parts[1], parts[2]
    elif len(parts) == 2:
        host, ctr = parts
    else:
        host, ctr = "0", parts[0]
    return PortMapping(
        host_ip=host_ip,
        host_port=_port(host or "0", spec),
        container_port=_port(ctr, spec),
        proto="tcp",
    )


class _NetnsSocketFactory:
    """A thread parked in the container's network namespace, making sockets on request."""

    def __init__(self, netns_path: str | None) -> None:
        self._requests: queue.Queue[queue.Queue[socket.socket | BaseException] | None] = (
            queue.Queue()
        )
        self._netns_fd: int | None = None
        if netns_path is not None:
            self._netns_fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        ready: queue.Queue[BaseException | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        err = ready.get()
        if err is not None:
            raise err

    def _run(self, ready: queue.Queue[BaseException | None]) -> None:
        if self._netns_fd is not None:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(self._netns_fd, CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                ready.put(OSError(e, f"setns into the container's network: {os.strerror(e)}"))
                return
        ready.put(None)
        while True:
            reply = self._requests.get()
            if reply is None:
                return
            try:
                reply.put(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            except OSError as err:
                reply.put(err)

    def make(self) -> socket.socket:
        reply: queue.Queue[socket.socket | BaseException] = queue.Queue()
        self._requests.put(reply)
        got = reply.get()
        if isinstance(got, BaseException):
            raise got
        return got

    def close(self) -> None:
        self._requests.put(None)
        if self._netns_fd is not None:
            os.close(self._netns_fd)
            self._netns_fd = None


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(_BUF)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


class PortProxy:
    """Listens on every mapping's host address; relays into the container.

    :meth:`bind` happens before the container starts, so that a taken port fails ``run``
    (Docker: "port is already allocated") instead of a running container without its port.
    """

    def __init__(self, mappings: list[PortMapping]) -> None:
        self.mappings = mappings
        self._listeners: list[tuple[socket.socket, PortMapping]] = []
        self._factory: _NetnsSocketFactory | None = None
        self._stopping = threading.Event()

    def bind(self) -> list[PortMapping]:
        """Open the listening sockets; returns the mappings with real host ports."""
        bound = []
        for m in self.mappings:
            family = socket.AF_INET6 if ":" in m.host_ip else socket.AF_INET
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((m.host_ip, m.host_port))
            except OSError as err:
                s.close()
                self.close()
                raise FailedPrecondition(
                    f"Bind for {m.host_ip}:{m.host_port} failed: port is already allocated"
                    if err.errno == 98
                    else f"Bind for {m.host_ip}:{m.host_port} failed: {err.strerror}",
                    hint="pick another host port with -p HOSTPORT:CONTAINERPORT",
                ) from err
            s.listen(128)
            real = PortMapping(m.host_ip, s.getsockname()[1], m.container_port, m.proto)
            self._listeners.append((s, real))
            bound.append(real)
        self.mappings = bound
        return bound

    def start(self, netns_path: str | None) -> None:
        """Begin accepting; ``netns_path`` is ``/proc/<pid>/ns/net`` (None: host network)."""
        if not self._listeners:
            return
        self._factory = _NetnsSocketFactory(netns_path)
        for s, m in self._listeners:
            threading.Thread(target=self._accept_loop, args=(s, m), daemon=True).start()

    def retarget(self, netns_path: str | None) -> None:
        """Relay new connections into another network namespace (a restarted container has
        a new one); the listening sockets stay, so the host ports never change."""
        if not self._listeners:
            return
        old = self._factory
        self._factory = _NetnsSocketFactory(netns_path)
        if old is not None:
            old.close()

    def _accept_loop(self, listener: socket.socket, m: PortMapping) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client, m), daemon=True).start()

    def _serve(self, client: socket.socket, m: PortMapping) -> None:
        assert self._factory is not None
        try:
            upstream = self._factory.make()
        except OSError:
            client.close()
            return
        try:
            upstream.connect(("127.0.0.1", m.container_port))
        except OSError:
            upstream.close()
            client.close()
            return
        back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        back.start()
        _pump(client, upstream)
        back.join()
        client.close()
        upstream.close()

    def close(self) -> None:
        self._stopping.set()
        for s, _ in self._listeners:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._listeners = []
        if self._factory is not None:
            self._factory.close()
            self._factory = None
