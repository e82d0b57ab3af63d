"""The background process of a ``fuse.overunder`` mount.

Started by :func:`overunder.mount.fuse.mount_fuse` as ``python -m overunder.fuse.daemon CONFIG``
with a pipe: it mounts, then writes one JSON line to the pipe (``{"ok": true, "pid": N}`` or
``{"ok": false, "category": ..., "message": ..., "hint": ...}``), closes it and serves requests
until the filesystem is unmounted (or SIGTERM/SIGINT, which unmount it first). Unexpected errors
while serving become EIO for the caller and a line in the log, never the end of the process.

Two knobs for measuring, both off by default (bench/fuse_overlay_bench.py numbers in the
issue's report): ``OVERUNDER_FUSE_WRITEBACK=1`` turns on the kernel's writeback cache (fewer
WRITE requests for small writes, but a FLUSH on every close: slower file creation here), and
``OVERUNDER_FUSE_NICE=N`` sets the process's nice value (a negative one helps on a busy
machine, where every request waits for the single-threaded loop to be scheduled).
``OVERUNDER_FUSE_PROFILE=FILE`` runs the loop under cProfile and dumps the stats to FILE at
unmount (for finding the hot paths; each request's handler shows as ``_do_<opcode>``).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overunder.errors import OverunderError
from overunder.fuse.layers import Stack
from overunder.fuse.trace import Tracer, trace_path_for
from overunder.layerfs.whiteout import WhiteoutStyle, XattrNS, probe_capabilities

__all__ = ["DaemonConfig", "build_stack", "main", "run_file", "serve"]

log = logging.getLogger("overunder.fuse")


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    lowerdirs: list[str]
    upperdir: str | None
    workdir: str | None
    mountpoint: str
    trace: str | None = None
    debug: bool = False
    fsname: str = "overlay"
    userxattr: bool = False
    # Where mount_fuse put our log and wants our pid (its run dir, named after the mountpoint).
    # Given, not derived here: resolving the mountpoint once mounted would ask ourselves.
    pid_file: str | None = None
    log_file: str | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "lowerdirs": self.lowerdirs,
                "upperdir": self.upperdir,
                "workdir": self.workdir,
                "mountpoint": self.mountpoint,
                "trace": self.trace,
                "debug": self.debug,
                "fsname": self.fsname,
                "userxattr": self.userxattr,
                "pid_file": self.pid_file,
                "log_file": self.log_file,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> DaemonConfig:
        raw: dict[str, Any] = json.loads(text)
        return cls(
            lowerdirs=[str(p) for p in raw["lowerdirs"]],
            upperdir=raw.get("upperdir"),
            workdir=raw.get("workdir"),
            mountpoint=str(raw["mountpoint"]),
            trace=raw.get("trace"),
            debug=bool(raw.get("debug")),
            fsname=str(raw.get("fsname", "overlay")),
            userxattr=bool(raw.get("userxattr")),
            pid_file=raw.get("pid_file"),
            log_file=raw.get("log_file"),
        )


def _upper_has_wh_files(upper: str) -> bool:
    for _dirpath, dirnames, filenames in os.walk(upper):
        if any(n.startswith(".wh.") for n in filenames) or any(
            n.startswith(".wh.") for n in dirnames
        ):
            return True
    return False


def build_stack(cfg: DaemonConfig) -> Stack:
    """The layer stack, with what this process may create in the upper dir probed: a 0/0
    whiteout needs CAP_MKNOD (else ``.wh.<name>`` files), ``trusted.*`` needs CAP_SYS_ADMIN
    (else ``user.overlay.*``)."""
    style, ns = WhiteoutStyle.CHARDEV, XattrNS.TRUSTED
    if cfg.upperdir is not None and cfg.workdir is not None:
        style, ns = probe_capabilities(Path(cfg.workdir))
        if cfg.userxattr:
            ns = XattrNS.USER
    return Stack(
        cfg.lowerdirs,
        cfg.upperdir,
        cfg.workdir,
        whiteout_style=style,
        xattr_ns=ns,
        upper_has_wh_files=cfg.upperdir is not None and _upper_has_wh_files(cfg.upperdir),
    )


def _report(fd: int | None, payload: dict[str, Any]) -> None:
    if fd is None:
        return
    try:
        os.write(fd, (json.dumps(payload) + "\n").encode())
    finally:
        os.close(fd)


def run_file(mountpoint: Path, suffix: str) -> Path:
    """The mount's ``.pid``/``.log`` file in the run dir, named after the mountpoint (next
    to :func:`~overunder.fuse.trace.trace_path_for`'s default trace). It resolves the
    mountpoint: never call it while serving that mount from the serving thread."""
    return trace_path_for(mountpoint).with_suffix(suffix)


def _write_pid_file(pid_file: Path) -> None:
    """Record our pid for ``unmount_fuse``/``overlay watch`` before we report ready (written
    here, not by the mounter, so a mount unmounted at once never leaves a stale pid file)."""
    tmp = pid_file.with_name(f".{pid_file.name}.{os.getpid()}")
    try:
        pid_file.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, f"{os.getpid()}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, pid_file)
    except OSError as err:
        # The mount works without it; only unmount_fuse's wait for our end is lost.
        log.warning("cannot write pid file %s: %s", pid_file, err)


def _drop_pid_file(pid_file: Path) -> None:
    """Remove our pid file, if it is still ours (``umount MNT`` by mount(8) never tells the
    mount package)."""
    try:
        if int(pid_file.read_text().strip()) == os.getpid():
            pid_file.unlink()
    except (OSError, ValueError):
        pass


def _drop_empty_log(log_file: Path) -> None:
    """After a clean end, remove our log if nothing was written to it (one file per mount
    would pile up in the run dir otherwise); a log with warnings, errors or ``--debug`` output
    stays. Only the file our stderr goes to (a newer mount on the same target has its own)."""
    try:
        ours = os.fstat(2)
        st = os.stat(log_file)
        if (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino) and ours.st_size == 0:
            log_file.unlink()
    except OSError:
        pass


def serve(cfg: DaemonConfig, ready_fd: int | None) -> int:
    """Mount and serve until unmounted; returns the exit status."""
    from overunder.fuse.overlay import OverlayOperations, make_session

    os.umask(0)  # modes arrive already masked by the kernel; apply them exactly
    # Each request allocates a few short-lived objects and the node table grows to one object
    # per inode: the default thresholds make full collections scan that table over and over.
    gc.set_threshold(50_000, 20, 100)
    nice = os.environ.get("OVERUNDER_FUSE_NICE")
    if nice:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, int(nice))
        except (OSError, ValueError):
            log.warning("cannot set priority %s", nice)
    tracer = Tracer(Path(cfg.trace) if cfg.trace else None)
    try:
        stack = build_stack(cfg)
        ops = OverlayOperations(
            stack, tracer, writeback=os.environ.get("OVERUNDER_FUSE_WRITEBACK") == "1"
        )
        session = make_session(ops, Path(cfg.mountpoint), fsname=cfg.fsname, debug=cfg.debug)
        session.mount()
    except OverunderError as err:
        _report(ready_fd, {"ok": False, **err.to_dict()})
        return 1
    except OSError as err:
        _report(
            ready_fd,
            {"ok": False, "category": "error", "message": f"{cfg.mountpoint}: {err}", "hint": None},
        )
        return 1

    tracer.emit("mount", mountpoint=cfg.mountpoint, lowerdirs=cfg.lowerdirs, upperdir=cfg.upperdir)
    clean = False
    try:
        if cfg.pid_file is not None:
            _write_pid_file(Path(cfg.pid_file))
        # The session unmounts on SIGTERM/SIGINT itself; ready once FUSE_INIT is answered.
        ready = lambda: _report(ready_fd, {"ok": True, "pid": os.getpid()})  # noqa: E731
        profile = os.environ.get("OVERUNDER_FUSE_PROFILE")
        if profile:
            import cProfile

            prof = cProfile.Profile()
            try:
                prof.runcall(session.run, on_ready=ready)
            finally:
                prof.dump_stats(profile)
        else:
            session.run(on_ready=ready)
        clean = True
    finally:
        tracer.emit("unmount", mountpoint=cfg.mountpoint)
        tracer.close()
        # Unmounted by now: resolving the mountpoint no longer reaches us.
        mnt = Path(cfg.mountpoint)
        _drop_pid_file(Path(cfg.pid_file) if cfg.pid_file else run_file(mnt, ".pid"))
        if clean:
            logging.shutdown()
            _drop_empty_log(Path(cfg.log_file) if cfg.log_file else run_file(mnt, ".log"))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    cfg = DaemonConfig.from_json(args[0])
    ready_fd = int(args[1]) if len(args) > 1 and args[1] != "-" else None
    logging.basicConfig(
        level=logging.DEBUG if cfg.debug else logging.WARNING,
        format="%(asctime)s overunder-fuse[%(process)d] %(levelname)s %(message)s",
    )
    return serve(cfg, ready_fd)


if __name__ == "__main__":
    sys.exit(main())
