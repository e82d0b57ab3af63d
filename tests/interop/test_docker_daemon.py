"""Interop with a real Docker daemon: ``docker load`` of our ``save``, our ``load`` of
``docker save`` (whiteouts and an opaque dir made by ``docker commit``), and ``diff`` against
``docker diff`` on the tutorial's changes.

Docker is the oracle, so CI runs these (``scripts/install`` installs Debian's ``docker.io``):
without ``DOCKER_HOST`` the module starts a private ``containerd`` and ``dockerd`` whose
stores, exec roots and sockets all live in one ``/tmp/ovu-dkr-*`` dir, with no bridge, no
iptables and containers on ``--network none``, and tears them down completely (both stopped
by PID, the shims gone, the overlay2 mounts unmounted, the dir removed), also when a test
fails. The system daemon's store and default socket are never used. With ``DOCKER_HOST``
set, that daemon is used instead and only what the tests made there is removed.

What dockerd writes outside its dir regardless of flags (20.10): ``/etc/docker/key.json``
(its trust key, created once) and an empty ``/run/docker/plugins``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import require, require_binary, require_overlay, require_root

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

READY_TIMEOUT = 60.0  # a cold start takes ~1 s here; a loaded CI machine gets slack
STOP_TIMEOUT = 30.0  # after SIGTERM, before SIGKILL


class Docker:
    """A docker client bound to one daemon (its binary and environment)."""

    def __init__(self, binary: str, env: dict[str, str]) -> None:
        self.binary = binary
        self.env = env

    def run(
        self, *args: str, stdin: bytes | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [self.binary, *args],
            input=stdin,
            env=self.env,
            capture_output=True,
            timeout=timeout,
            check=False,
        )


# -- a private dockerd ------------------------------------------------------------------


def _client_for(dockerd: str) -> str:
    """The client shipped beside this dockerd (Debian: /usr/sbin/dockerd, /usr/bin/docker).

    PATH may hold a newer client first (here /usr/local/bin/docker 28.x); it negotiates down
    to 20.10's API 1.41 today, but newer clients drop old API versions, so the daemon's own
    client is the one sure to speak its API."""
    require_binary("docker")
    real = Path(dockerd).resolve()
    for candidate in (real.parent.parent / "bin" / "docker", real.parent / "docker"):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return require_binary("docker")


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _mounts_under(root: str) -> list[str]:
    """Mount points at or under ``root``, deepest first (a path mounted twice is listed twice)."""
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            target = _unescape(line.split(" ", 5)[4])
            if target == root or target.startswith(root + "/"):
                found.append(target)
    return sorted(found, key=lambda t: t.count("/"), reverse=True)


def _procs_under(root: str) -> list[int]:
    """Live processes whose command line names ``root`` (dockerd, its containerd, the shims):
    the dir is unique to this run, so they are ours."""
    needle = (root + "/").encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            if needle not in Path(f"/proc/{entry}/cmdline").read_bytes():
                continue
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            pids.append(int(entry))
    return pids


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:300]
    except OSError:
        return "(gone)"


def _log_tail(log: Path, lines: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def _wait_procs_gone(root: str, timeout: float) -> list[int]:
    """Poll until no process names ``root``; the ones still alive at the timeout."""
    deadline = time.monotonic() + timeout
    while (alive := _procs_under(root)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def _kill_container_processes(data: Path) -> None:
    """After a forced stop: containers' own processes name no path of ours, so find them by
    the PID dockerd recorded, checked against the container's cgroup (PIDs get reused)."""
    for config in data.glob("containers/*/config.v2.json"):
        cid = config.parent.name
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            pid = int(json.loads(config.read_text())["State"]["Pid"])
            if pid > 0 and cid in Path(f"/proc/{pid}/cgroup").read_text():
                os.kill(pid, signal.SIGKILL)


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            # its own session: a Ctrl-C reaches pytest, whose teardown stops it in order
            start_new_session=True,
        )


def _start_containerd(root: Path) -> subprocess.Popen[bytes]:
    """A containerd of our own. Left to itself, dockerd 20.10 attaches to a system
    containerd whenever /run/containerd/containerd.sock exists (a laptop with Docker), which
    would put our tasks' state in /var/lib/containerd and /run/containerd."""
    ctd = root / "ctd"
    ctd.mkdir()
    (ctd / "config.toml").write_text(
        "version = 2\n"
        f'root = "{ctd / "root"}"\n'
        f'state = "{ctd / "state"}"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{ctd / "containerd.sock"}"\n'
        f'[debug]\n  address = "{ctd / "debug.sock"}"\n'
    )
    proc = _spawn([require_binary("containerd"), "--config", str(ctd / "config.toml")], ctd / "log")
    deadline = time.monotonic() + READY_TIMEOUT
    while not (ctd / "containerd.sock").is_socket():
        if proc.poll() is not None or time.monotonic() > deadline:
            state = "exited" if proc.poll() is not None else "did not listen"
            pytest.fail(
                f"containerd {state} while starting; its log ends:\n{_log_tail(ctd / 'log')}",
                pytrace=False,
            )
        time.sleep(0.05)
    return proc


def _start_daemon(root: Path) -> subprocess.Popen[bytes]:
    (root / "daemon.json").write_text("{}\n")
    return _spawn(
        [
            require_binary("dockerd"),
            "--bridge=none",
            "--iptables=false",
            "--ip-forward=false",
            "--ip-masq=false",
            f"--data-root={root / 'data'}",
            f"--exec-root={root / 'exec'}",
            f"--pidfile={root / 'dockerd.pid'}",
            f"--host=unix://{root / 'docker.sock'}",
            "--storage-driver=overlay2",
            f"--containerd={root / 'ctd' / 'containerd.sock'}",
            # not /etc/docker/daemon.json: a host's settings (hosts, data-root) would
            # clash with ours or point the daemon at the system's store
            f"--config-file={root / 'daemon.json'}",
        ],
        root / "dockerd.log",
    )


def _wait_ready(proc: subprocess.Popen[bytes], client: Docker, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    last = b""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"dockerd exited with status {proc.returncode} while starting; "
                f"its log ends:\n{_log_tail(log)}",
                pytrace=False,
            )
        r = client.run("info", "--format", "{{.ServerVersion}}", timeout=30)
        if r.returncode == 0:
            return
        last = r.stderr
        time.sleep(0.2)
    pytest.fail(
        f"dockerd did not answer `docker info` within {READY_TIMEOUT:.0f} s "
        f"(last error: {last.decode(errors='replace').strip()}); "
        f"its log ends:\n{_log_tail(log)}",
        pytrace=False,
    )


def _terminate(proc: subprocess.Popen[bytes] | None, name: str, problems: list[str]) -> bool:
    """SIGTERM, wait, SIGKILL after STOP_TIMEOUT. True if it had to be killed."""
    if proc is None or proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT)
        return False
    except subprocess.TimeoutExpired:
        problems.append(f"{name} (pid {proc.pid}) ignored SIGTERM for {STOP_TIMEOUT:.0f} s")
        proc.kill()
        proc.wait()
        return True


def _stop_daemon(
    root: Path,
    containerd: subprocess.Popen[bytes] | None,
    dockerd: subprocess.Popen[bytes] | None,
    client: Docker,
) -> None:
    """Stop dockerd, then containerd and its shims, unmount what they mounted, remove
    ``root``. Raises (failing the module's teardown) if anything could not be cleaned."""
    problems: list[str] = []
    if dockerd is not None and dockerd.poll() is None:
        # everything on this daemon is ours; removed first so shutdown has nothing to stop
        with contextlib.suppress(subprocess.TimeoutExpired):
            ids = client.run("ps", "-aq", timeout=30).stdout.split()
            if ids:
                client.run("rm", "-f", *(i.decode() for i in ids), timeout=60)
    forced = _terminate(dockerd, "dockerd", problems)
    forced = _terminate(containerd, "containerd", problems) or forced
    if forced:
        _kill_container_processes(root / "data")
    # the shims exit once their containers are gone; after a forced stop they wait for
    # containers that were killed under them: no point waiting long
    left = _wait_procs_gone(str(root), 2.0 if forced else 10.0)
    if left:
        problems.append(
            "still running after dockerd and containerd stopped: "
            + "; ".join(f"{p}: {_cmdline(p)}" for p in left)
        )
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            left = _wait_procs_gone(str(root), 5.0)
            if not left:
                break
        if left:
            problems.append(f"could not kill: {left}")
    for _ in range(3):  # stacked mounts show up once per layer
        mounts = _mounts_under(str(root))
        if not mounts:
            break
        for target in mounts:
            r = subprocess.run(["umount", target], capture_output=True, check=False)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", target], capture_output=True, check=False)
    log_tail = _log_tail(root / "dockerd.log")  # before the dir goes
    if mounts := _mounts_under(str(root)):
        problems.append(f"still mounted: {mounts}")
    else:
        shutil.rmtree(root, ignore_errors=True)
        if root.exists():
            problems.append(f"could not remove {root}")
    if problems:
        raise AssertionError(
            f"private dockerd teardown ({root}): "
            + " | ".join(problems)
            + f"\nits log ends:\n{log_tail}"
        )


@pytest.fixture(scope="module")
def docker() -> Iterator[Docker]:
    """A docker client for the daemon at ``DOCKER_HOST``, or else for a private daemon."""
    if os.environ.get("DOCKER_HOST"):
        client = Docker(require_binary("docker"), dict(os.environ))
        info = client.run("info", timeout=30)
        require(
            info.returncode == 0,
            f"the daemon at DOCKER_HOST={os.environ['DOCKER_HOST']} to answer docker info "
            f"({info.stderr.decode(errors='replace').strip()})",
        )
        yield client
        return
    require_root()
    require_overlay()
    require_binary("containerd")
    require_binary("runc")
    dockerd = require_binary("dockerd")
    # short: the socket path must fit sun_path (108 bytes); pytest's tmp dirs are long
    root = Path(tempfile.mkdtemp(prefix="ovu-dkr-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env["DOCKER_HOST"] = f"unix://{root / 'docker.sock'}"
    env["DOCKER_CONFIG"] = str(root / "client")  # not ~/.docker: no contexts, no credentials
    client = Docker(_client_for(dockerd), env)
    containerd = daemon = None
    try:
        containerd = _start_containerd(root)
        daemon = _start_daemon(root)
        _wait_ready(daemon, client, root / "dockerd.log")
        yield client
    finally:
        _stop_daemon(root, containerd, daemon, client)


# -- the tests ---------------------------------------------------------------------------


class Env:
    def __init__(self, work: Path, client: Docker) -> None:
        self.work = work
        self.client = client
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

    def docker(self, *args: str, stdin: bytes | None = None) -> bytes:
        r = self.client.run(*args, stdin=stdin)
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
def env(docker: Docker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    require_root()
    require_overlay()
    require_binary("runc")
    e = Env(tmp_path_factory.mktemp("docker-interop"), docker)
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
            docker.run("rm", "-f", cid)
        for ref in reversed(e.images):
            docker.run("rmi", "-f", ref)
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
    assert f"Loaded image: {ref}" in env.docker("load", stdin=saved).decode()
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
