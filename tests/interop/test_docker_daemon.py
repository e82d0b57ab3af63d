"""Interop with a real Docker daemon: ``docker load`` of our ``save``, our ``load`` of
``docker save`` (whiteouts and an opaque dir made by ``docker commit``), and ``diff`` against
``docker diff`` on the tutorial's changes.

Runs only when ``DOCKER_HOST`` names a daemon that answers ``docker info``. That is a plain
skip, not a ``require``: CI has no Docker daemon by design (docker-compat.md was measured on
one by hand), so its absence hides no failure. The default socket is never used, so a test
run cannot touch a system daemon's store. Every container and image made here is removed.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import require_binary, require_overlay, require_root

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
import g_busybox

# The runtime's per-container files, present in both exports but not part of any image.
INIT_FILES = {
    ".dockerenv",
    "dev",
    "proc",
    "sys",
    "etc/hosts",
    "etc/hostname",
    "etc/resolv.conf",
    "etc/mtab",
}


class Env:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.tag = f"ou-test-{uuid.uuid4().hex[:8]}"
        self.ou_env = {**os.environ, "OVERUNDER_ROOT": str(work / "engine")}
        self.ou_env.pop("OVERUNDER_RUN_ROOT", None)
        self.containers: list[str] = []
        self.images: list[str] = []

    def ou(self, *args: str, stdin: bytes | None = None) -> bytes:
        r = subprocess.run(
            [sys.executable, "-m", "overunder", *args],
            input=stdin,
            env=self.ou_env,
            capture_output=True,
            check=False,
        )
        assert r.returncode == 0, f"overunder {' '.join(args)}: {r.stderr.decode()}"
        return r.stdout

    def docker(self, *args: str) -> bytes:
        r = subprocess.run(["docker", *args], capture_output=True, check=False)
        assert r.returncode == 0, f"docker {' '.join(args)}: {r.stderr.decode()}"
        return r.stdout

    def docker_image(self, name: str) -> str:
        ref = f"{self.tag}/{name}"
        self.images.append(ref)
        return ref

    def docker_run(self, image: str) -> str:
        cid = self.docker("run", "-d", "--network", "none", image, "sleep", "100000")
        self.containers.append(cid.decode().strip())
        return self.containers[-1]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    if not os.environ.get("DOCKER_HOST"):
        pytest.skip("DOCKER_HOST is not set: no Docker daemon to compare with (none in CI)")
    if shutil.which("docker") is None:
        pytest.skip("no docker client: no Docker daemon to compare with (none in CI)")
    info = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    if info.returncode != 0:
        pytest.skip(f"the daemon at DOCKER_HOST does not answer docker info: {info.stderr!r}")
    require_root()
    require_overlay()
    require_binary("runc")
    e = Env(tmp_path_factory.mktemp("docker-interop"))
    rootfs = g_busybox.make_rootfs(e.work / "rootfs")
    with tarfile.open(e.work / "rootfs.tar", "w") as tf:
        for p in sorted(rootfs.rglob("*")):
            tf.add(p, arcname=str(p.relative_to(rootfs)), recursive=False)
    try:
        e.ou("import", str(e.work / "rootfs.tar"), "ou/busybox:1")
        e.docker("import", str(e.work / "rootfs.tar"), e.docker_image("busybox:1"))
        yield e
    finally:
        for cid in e.containers:
            subprocess.run(["docker", "rm", "-f", cid], capture_output=True, check=False)
        for ref in reversed(e.images):
            subprocess.run(["docker", "rmi", "-f", ref], capture_output=True, check=False)
        ids = e.ou("ps", "-aq").split()
        if ids:
            e.ou("rm", "-f", *(i.decode() for i in ids))


def _names(tar_bytes: bytes) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tf:
        names = {m.name.removeprefix("./").rstrip("/") for m in tf.getmembers()}
    return {n for n in names if n and n.split("/")[0] not in INIT_FILES and n not in INIT_FILES}


def _docker_export(e: Env, image: str) -> set[str]:
    cid = e.docker("create", "--network", "none", image, "true").decode().strip()
    try:
        return _names(e.docker("export", cid))
    finally:
        e.docker("rm", cid)


def _our_export(e: Env, image: str) -> set[str]:
    name = f"exp-{uuid.uuid4().hex[:8]}"
    e.ou("create", "--network", "none", "--name", name, image, "true")
    try:
        return _names(e.ou("export", name))
    finally:
        e.ou("rm", name)


def test_docker_loads_our_save(env: Env) -> None:
    ref = env.docker_image("saved:1")
    env.ou("tag", "ou/busybox:1", ref)
    saved = env.ou("save", ref)
    r = subprocess.run(["docker", "load"], input=saved, capture_output=True, check=False)
    assert r.returncode == 0, r.stderr.decode()
    assert f"Loaded image: {ref}" in r.stdout.decode()
    ours = _our_export(env, ref)
    assert "bin/busybox" in ours
    assert _docker_export(env, ref) == ours


def test_we_load_docker_commit_with_whiteouts(env: Env) -> None:
    c1 = env.docker_run(env.images[0])
    env.docker(
        "exec", c1, "sh", "-c",
        "mkdir -p /data/opq && echo a > /data/opq/a.txt && echo k > /data/keep.txt",
    )  # fmt: skip
    base = env.docker_image("wh:1")
    env.docker("commit", c1, base)
    c2 = env.docker_run(base)
    env.docker(
        "exec", c2, "sh", "-c",
        "rm /etc/localtime /data/keep.txt && rm -rf /data/opq && mkdir /data/opq"
        " && echo new > /data/opq/new.txt",
    )  # fmt: skip
    top = env.docker_image("wh:2")
    env.docker("commit", c2, top)
    env.ou("load", stdin=env.docker("save", top))
    ours = _our_export(env, top)
    assert "etc/localtime" not in ours
    assert {n for n in ours if n.startswith("data")} == {"data", "data/opq", "data/opq/new.txt"}
    assert _docker_export(env, top) == ours


def test_diff_matches_docker_on_tutorial_steps(env: Env) -> None:
    hello = env.work / "hello.txt"
    hello.write_text("hi there\n")
    goodbye = env.work / "goodbye.txt"
    goodbye.write_text("I am getting ready to go\n")
    ours = f"pinger-{uuid.uuid4().hex[:8]}"
    env.ou("run", "-d", "--network", "none", "--name", ours, "ou/busybox:1", "sleep", "100000")
    theirs = env.docker_run(env.images[0])
    append = 'echo "Greetings really cool class" >> /hello.txt'
    steps: list[tuple[list[str], list[str]]] = [
        (["cp", str(hello), f"{ours}:/hello.txt"], ["cp", str(hello), f"{theirs}:/hello.txt"]),
        (["exec", ours, "sh", "-c", append], ["exec", theirs, "sh", "-c", append]),
        (
            ["cp", str(goodbye), f"{ours}:/etc/goodbye.txt"],
            ["cp", str(goodbye), f"{theirs}:/etc/goodbye.txt"],
        ),
        (
            ["exec", ours, "rm", "-rf", "/etc/localtime"],
            ["exec", theirs, "rm", "-rf", "/etc/localtime"],
        ),
    ]
    for ou_args, docker_args in steps:
        env.ou(*ou_args)
        env.docker(*docker_args)
        assert sorted(env.ou("diff", ours).decode().splitlines()) == sorted(
            env.docker("diff", theirs).decode().splitlines()
        ), ou_args
    assert "D /etc/localtime" in env.ou("diff", ours).decode().splitlines()
