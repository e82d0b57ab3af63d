"""Shared test plumbing.

Tests that need real parts (root, the kernel overlay, /dev/fuse, runc, a registry, skopeo)
call :func:`require`. On a developer's laptop a missing part skips the test; under CI=true
it fails it, because CI installs everything and a skip there would hide a failure.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(ok: bool, what: str) -> None:
    """Skip (laptop) or fail (CI) the calling test unless ``ok``."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"prerequisite missing in CI: {what}", pytrace=False)
    pytest.skip(f"needs {what}")


def require_root() -> None:
    require(os.geteuid() == 0, "root")


def require_binary(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"the {name} binary")
    assert path is not None
    return path


def _has_kernel_overlay() -> bool:
    try:
        return "\toverlay\n" in Path("/proc/filesystems").read_text()
    except OSError:
        return False


def require_overlay() -> None:
    require_root()
    require(_has_kernel_overlay(), "the kernel overlay filesystem")


def require_fuse() -> None:
    require(os.access("/dev/fuse", os.R_OK | os.W_OK), "read-write access to /dev/fuse")


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    """A temp dir that other users can traverse (mktemp gives 0700, which hides it from the
    unprivileged-user tests)."""
    tmp_path.chmod(0o755)
    return tmp_path


@pytest.fixture
def engine_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private engine root for one test, so no test touches /var/lib/overunder."""
    root = tmp_path / "engine"
    root.mkdir()
    monkeypatch.setenv("OVERUNDER_ROOT", str(root))
    monkeypatch.delenv("OVERUNDER_RUN_ROOT", raising=False)
    return root


# -- /dev/fuse opened to everyone, shared ------------------------------------------------

_DEV_FUSE_STATE = Path(tempfile.gettempdir()) / "overunder-dev-fuse-0666.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def dev_fuse_mode_0666() -> Iterator[None]:
    """Debian's default mode for /dev/fuse (these machines have 0600), for the duration.

    Several test processes may want this at once (the whole suite beside a developer's run):
    the first one in records the mode, the last one out restores it. Holders are pids in a
    state file under an flock; dead ones are pruned, so a killed run cannot pin 0666. Use
    this (or the ``dev_fuse_0666`` fixture) rather than a bare chmod: a bare save/restore in
    one process puts 0600 back under another process's feet."""

    def update(enter: bool) -> None:
        lock_fd = os.open(f"{_DEV_FUSE_STATE}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            try:
                state = json.loads(_DEV_FUSE_STATE.read_text())
            except (OSError, ValueError):
                state = {"mode": None, "holders": []}
            holders = [pid for pid in state["holders"] if _alive(pid) and pid != os.getpid()]
            if enter:
                if not holders:
                    state["mode"] = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
                holders.append(os.getpid())
                os.chmod("/dev/fuse", 0o666)
            elif not holders and state["mode"] is not None:
                os.chmod("/dev/fuse", state["mode"])
            if holders:
                state["holders"] = holders
                _DEV_FUSE_STATE.write_text(json.dumps(state))
            else:
                _DEV_FUSE_STATE.unlink(missing_ok=True)
        finally:
            os.close(lock_fd)

    update(enter=True)
    try:
        yield
    finally:
        update(enter=False)


@pytest.fixture
def dev_fuse_0666() -> Iterator[None]:
    """/dev/fuse mode 0666 for one test (root only: it chmods the device)."""
    require_root()
    with dev_fuse_mode_0666():
        yield


# -- nothing left mounted or running after the run ---------------------------------------


def _mount_targets() -> set[str]:
    """Mount points in this mount namespace (octal escapes of mountinfo decoded)."""
    targets = set()
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            raw = line.split(" ", 5)[4]
            targets.add(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), raw))
    return targets


def _under(path: str, roots: list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _own_root(session: pytest.Session) -> str | None:
    """pytest's base temp dir of this run: unique to it, so whatever is mounted or running
    there is this run's (other dirs under /tmp may be a colleague's on a shared machine)."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return None
    try:
        return str(os.path.realpath(factory.getbasetemp()))
    except Exception:
        return None


def _mentions(pid: str, root: str) -> bool:
    try:
        # with the slash: pytest-3 must not match pytest-34's processes
        return (root.rstrip("/") + "/").encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


_MOUNTS_AT_START = pytest.StashKey[set[str]]()


def pytest_configure(config: pytest.Config) -> None:
    """Test dirs have no ``__init__.py`` (rootdir-based module names), so a second
    ``conftest.py`` would be imported as the module ``conftest`` too and shadow this one for
    ``from conftest import require_…``. Helpers go in uniquely named modules instead."""
    here = Path(__file__).resolve()
    others = sorted(str(p) for p in here.parent.rglob("conftest.py") if p.resolve() != here)
    if others:
        raise pytest.UsageError(
            f"only tests/conftest.py may exist (found {', '.join(others)}); "
            "put shared helpers in a uniquely named module such as tests/<pkg>/<pkg>_helpers.py"
        )


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_MOUNTS_AT_START] = _mount_targets()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a test left a mount or a process behind under this run's temp dir (each
    test must clean up, even on failure), then clean those up so one leak does not break the
    next run. New mounts elsewhere under the temp dir are only reported: on a shared machine
    they may be someone else's, and are never touched."""
    own = _own_root(session)
    if own is None:
        return
    tmp = os.path.realpath(tempfile.gettempdir())
    before: set[str] = session.config.stash.get(_MOUNTS_AT_START, set())
    new = _mount_targets() - before
    leaked = sorted((t for t in new if _under(t, [own])), key=len, reverse=True)
    elsewhere = sorted(t for t in new if _under(t, [tmp]) and not _under(t, [own]))
    me = str(os.getpid())
    procs = [p for p in os.listdir("/proc") if p.isdigit() and p != me and _mentions(p, own)]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if elsewhere and IN_CI and reporter is not None:
        reporter.write_line(
            "\n".join(
                ["", "== new mounts under the temp dir since the run started (a test's, or"]
                + ["   another user's on a shared machine; left alone):"]
                + [f"   mounted: {t}" for t in elsewhere]
            ),
            yellow=True,
        )
    if not leaked and not procs:
        return
    lines = ["", "== left behind by the tests (a test did not clean up):"]
    lines += [f"   mounted: {t}" for t in leaked]
    for pid in procs:
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            lines.append(f"   process {pid}: {cmd.decode(errors='replace')[:200]}")
    if reporter is not None:
        reporter.write_line("\n".join(lines), red=True)
    for pid in procs:  # this run's own: their command lines name its temp dir
        with contextlib.suppress(OSError):
            os.kill(int(pid), signal.SIGKILL)
    for t in leaked:
        subprocess.run(["umount", "-l", t], capture_output=True, check=False)
    if session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
