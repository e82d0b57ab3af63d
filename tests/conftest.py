"""Shared test plumbing.

Tests that need real parts (root, the kernel overlay, /dev/fuse, runc, a registry, skopeo)
call :func:`require`. On a developer's laptop a missing part skips the test; under CI=true
it fails it, because CI installs everything and a skip there would hide a failure.
"""

from __future__ import annotations

import os
import shutil
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
