"""``docs/examples/sandbox.py`` run for real (root + runc), and the Engine facade around it:
a busybox image imported through the API, a throwaway container, its typed diff, commit."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import overunder
from conftest import require_binary, require_overlay
from overunder import Engine

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "sandbox.py"
APPLETS = ("sh", "echo", "rm", "cat", "ls", "mkdir", "sleep")


def _rootfs_tar() -> bytes:
    busybox = shutil.which("busybox") or "/bin/busybox"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:

        def add(name: str, *, data: bytes | None = None, mode: int = 0o644, link: str = "") -> None:
            ti = tarfile.TarInfo(name)
            ti.mode = mode
            if link:
                ti.type, ti.linkname = tarfile.SYMTYPE, link
            elif data is None:
                ti.type = tarfile.DIRTYPE
            else:
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)

        for d in ("bin", "etc", "root", "tmp"):
            add(d, mode=0o755)
        add("bin/busybox", data=Path(busybox).read_bytes(), mode=0o755)
        for a in APPLETS:
            add(f"bin/{a}", link="busybox", mode=0o777)
        add("etc/motd", data=b"Welcome\n")
        add("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n")
    return buf.getvalue()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    require_overlay()
    require_binary("runc")
    root = tmp_path_factory.mktemp("api")
    eng = Engine(root=root / "store")
    image = eng.import_(io.BytesIO(_rootfs_tar()), "busybox:latest")
    assert image.tags == ("busybox:latest",)
    yield eng
    for box in eng.containers():
        box.remove(force=True)


def _example(eng: Engine, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLE), "--root", str(eng.paths.root), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "OVERUNDER_RUN_ROOT": str(eng.paths.run_root)},
    )


CMD = ("sh", "-c", "echo hi > /greeting; rm /etc/motd; echo done")


def test_example_keeps_the_changes_as_an_image(engine: Engine) -> None:
    before = {i.id for i in engine.images()}
    proc = _example(engine, "busybox", "--keep", "busybox:greeted", "--", *CMD)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "done" in lines
    after = lines[lines.index("done") + 1 :]
    assert after[0].startswith("--- 3 change(s) in ")
    assert after[1:4] == [
        "C /etc",
        "D /etc/motd",
        "A /greeting",
    ]
    assert lines[-1].startswith("kept as busybox:greeted")
    kept = engine.image("busybox:greeted")
    assert kept.id not in before
    assert engine.cat("busybox:greeted", "/greeting") == b"hi\n"
    assert engine.containers() == []  # the throwaway container is gone


def test_example_discards_by_default(engine: Engine) -> None:
    before = {i.id for i in engine.images()}
    proc = _example(engine, "busybox", "--", *CMD)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "discarded"
    assert {i.id for i in engine.images()} == before
    assert engine.containers() == []


def test_example_reports_errors_like_the_cli(engine: Engine) -> None:
    proc = _example(engine, "nosuchimage", "--", "true")
    assert proc.returncode == 1
    assert proc.stderr.startswith("Error: No such image: nosuchimage")


def test_engine_exec_diff_and_cleanup_on_error(engine: Engine) -> None:
    name = ""

    def scripted() -> None:
        nonlocal name
        with engine.run("busybox", ["sleep", "60"]) as box:
            name = box.name
            _use(box)
            raise RuntimeError("the block failed")

    with pytest.raises(RuntimeError):
        scripted()
    with pytest.raises(overunder.NotFound, match=f"No such container: {name}"):
        engine.container(name)


def _use(box: overunder.Container) -> None:
    res = box.exec(["sh", "-c", "cat /etc/motd; echo oops >&2; exit 3"])
    assert (res.exit_code, res.stdout, res.stderr) == (3, b"Welcome\n", b"oops\n")
    box.exec(["mkdir", "/made"])
    assert [str(c) for c in box.diff()] == ["A /made"]
    assert all(isinstance(c, overunder.Change) for c in box.diff())
    with pytest.raises(overunder.FailedPrecondition, match="executable file not found"):
        box.exec(["nosuchcmd"])
