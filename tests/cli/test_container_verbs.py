"""Container verbs end to end through the CLI, on real runc and the real overlay (kernel and
FUSE). One busybox image per session; every container is removed in teardown."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import require, require_binary, require_fuse, require_overlay, require_root

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
import g_busybox

IMAGE = "busybox:test"
DRIVERS = ["overlay", "fuse"]


def _require_driver(driver: str) -> None:
    require_root()
    require_binary("runc")
    require_overlay()
    if driver == "fuse":
        require_fuse()
        try:
            import overunder.mount.fuse  # noqa: F401
        except ImportError:
            require(False, "the fuse.overunder driver (overunder.mount.fuse)")


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An engine root holding the busybox test image; everything removed at the end."""
    if os.geteuid() != 0:
        require_root()
    base = tmp_path_factory.mktemp("g-engine")
    root = base / "root"
    g_busybox.build_image(root, IMAGE, work=base)
    yield root
    env = {**os.environ, "OVERUNDER_ROOT": str(root)}
    ids = subprocess.run(
        [sys.executable, "-m", "overunder", "ps", "-aq", "--no-trunc"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    ).stdout.split()
    if ids:
        subprocess.run(
            [sys.executable, "-m", "overunder", "rm", "-f", *ids],
            capture_output=True,
            env=env,
            check=False,
        )
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split()[4]
        if target.startswith(str(root)):
            subprocess.run(["umount", "-l", target], check=False)


def ou(
    engine: Path, *args: str, timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OVERUNDER_ROOT": str(engine)}
    env.pop("OVERUNDER_RUN_ROOT", None)
    return subprocess.run(
        [sys.executable, "-m", "overunder", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
    )


def inspect(engine: Path, name: str) -> dict[str, object]:
    r = ou(engine, "inspect", name)
    assert r.returncode == 0, r.stderr
    data: list[dict[str, object]] = json.loads(r.stdout)
    return data[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def names(engine: Path) -> Iterator[list[str]]:
    """Container names a test creates; force-removed afterwards, pass or fail."""
    created: list[str] = []
    yield created
    if created:
        ou(engine, "rm", "-f", *created)


# -- the core suite, on both drivers -----------------------------------------------------------
@pytest.mark.parametrize("driver", DRIVERS)
def test_run_rm_exit_code_and_streams(engine: Path, driver: str) -> None:
    _require_driver(driver)
    r = ou(
        engine,
        "run",
        "--rm",
        "--network",
        "none",
        "--storage-driver",
        driver,
        IMAGE,
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    )
    assert r.returncode == 3, r.stderr
    assert r.stdout == "out\n"
    assert r.stderr == "err\n"
    assert ou(engine, "ps", "-aq").stdout == ""
    # detached --rm: the shim removes it when it exits, with no command coming by to notice
    cid = ou(engine, "run", "-d", "--rm", "--network", "none", "--storage-driver", driver,
             IMAGE, "sleep", "1.5").stdout.strip()  # fmt: skip
    gd = inspect(engine, cid)["GraphDriver"]
    assert isinstance(gd, dict)
    merged, upper = Path(gd["Data"]["MergedDir"]), Path(gd["Data"]["UpperDir"])
    assert upper.exists()
    leftovers = [engine / "containers" / cid, engine / "run" / "containers" / cid, upper, merged]
    deadline = time.monotonic() + 15
    while any(p.exists() for p in leftovers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p for p in leftovers if p.exists()] == []
    assert str(merged) not in Path("/proc/self/mountinfo").read_text()
    assert not list((engine / "run" / "runc").glob(cid + "*"))
    from overunder.engine.images import stores
    from overunder.engine.paths import EnginePaths

    snaps = stores(EnginePaths.resolve(engine)).snapshots.snapshots()
    assert [k for k in snaps if k.startswith(cid)] == []
    assert ou(engine, "ps", "-aq").stdout == ""


def test_detached_rm_with_stop_wait_kill_rm(engine: Path) -> None:
    """Verbs racing the shim's removal of a --rm container still answer as Docker does."""
    _require_driver("overlay")
    base = ["run", "-d", "--rm", "--network", "none"]
    ou(engine, *base, "--name", "rm-stop", IMAGE, "sleep", "100")
    r = ou(engine, "stop", "-t", "0", "rm-stop")
    assert (r.returncode, r.stdout) == (0, "rm-stop\n")
    ou(engine, *base, "--name", "rm-wait", IMAGE, "sh", "-c", "sleep 0.5; exit 7")
    r = ou(engine, "wait", "rm-wait")
    assert (r.returncode, r.stdout) == (0, "7\n")
    ou(engine, *base, "--name", "rm-kill", IMAGE, "sleep", "100")
    assert ou(engine, "kill", "rm-kill").stdout == "rm-kill\n"
    ou(engine, *base, "--name", "rm-f", IMAGE, "sleep", "100")
    r = ou(engine, "rm", "-f", "rm-f")
    assert (r.returncode, r.stdout) == (0, "rm-f\n")
    _wait = time.monotonic() + 10
    while ou(engine, "ps", "-aq").stdout and time.monotonic() < _wait:
        time.sleep(0.1)
    assert ou(engine, "ps", "-aq").stdout == ""
    assert [d.name for d in (engine / "containers").iterdir() if len(d.name) == 64] == []


@pytest.mark.parametrize("driver", DRIVERS)
def test_detached_exec_logs_stop(engine: Path, driver: str, names: list[str]) -> None:
    _require_driver(driver)
    name = f"core-{driver}"
    names.append(name)
    r = ou(
        engine,
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "none",
        "--storage-driver",
        driver,
        "-e",
        "GREETING=hi",
        IMAGE,
        "sh",
        "-c",
        "echo started; echo oops >&2; exec sleep 1000",
    )
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    assert len(cid) == 64
    # exec round trip: env, -e, -w, -u
    r = ou(
        engine,
        "exec",
        "-e",
        "FOO=bar",
        "-w",
        "/tmp",
        "-u",
        "1000",
        name,
        "sh",
        "-c",
        "echo $GREETING $FOO $HOSTNAME $(pwd) $(id -u); exit 5",
    )
    assert r.returncode == 5
    assert r.stdout == f"hi bar {cid[:12]} /tmp 1000\n"
    r = ou(engine, "exec", "-i", name, "cat", input="piped\n")
    assert r.stdout == "piped\n"
    r = ou(engine, "logs", name)
    assert (r.stdout, r.stderr) == ("started\n", "oops\n")
    ps = ou(engine, "ps")
    assert name in ps.stdout
    assert "Up " in ps.stdout
    data = inspect(engine, name)
    gd = data["GraphDriver"]
    assert isinstance(gd, dict)
    assert gd["Name"] == ("overlay" if driver == "overlay" else "fuse.overunder")
    merged = Path(gd["Data"]["MergedDir"])
    assert os.path.ismount(merged)
    # stop: sleep as PID 1 ignores SIGTERM, so -t 1 ends in SIGKILL after ~1 s
    t0 = time.monotonic()
    r = ou(engine, "stop", "-t", "1", cid[:12])
    took = time.monotonic() - t0
    assert r.returncode == 0
    assert r.stdout == cid[:12] + "\n"  # printed as given
    assert 0.9 < took < 5
    state = inspect(engine, name)["State"]
    assert isinstance(state, dict)
    assert state["Status"] == "exited"
    assert state["ExitCode"] == 137
    assert not merged.exists()
    assert "Exited (137)" in ou(engine, "ps", "-a").stdout
    assert ou(engine, "stop", name).returncode == 0  # stopping again is fine


@pytest.mark.parametrize("driver", DRIVERS)
def test_published_port_reaches_server(engine: Path, driver: str, names: list[str]) -> None:
    _require_driver(driver)
    name = f"web-{driver}"
    names.append(name)
    port = free_port()
    r = ou(
        engine,
        "run",
        "-d",
        "--name",
        name,
        "-p",
        f"{port}:3000",
        "--storage-driver",
        driver,
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "3000",
        "-h",
        "/var/www",
    )
    assert r.returncode == 0, r.stderr
    body = b""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read()
            break
        except OSError:
            time.sleep(0.05)
    assert body == b"hello from overunder\n"
    assert f"127.0.0.1:{port}->3000/tcp" in ou(engine, "ps").stdout
    ports = inspect(engine, name)["NetworkSettings"]
    assert isinstance(ports, dict)
    assert ports["Ports"] == {"3000/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}


@pytest.mark.parametrize("driver", DRIVERS)
def test_rm_removes_mounts_and_dirs(engine: Path, driver: str) -> None:
    _require_driver(driver)
    r = ou(
        engine, "run", "-d", "--network", "none", "--storage-driver", driver, IMAGE, "sleep", "1000"
    )
    cid = r.stdout.strip()
    data = inspect(engine, cid)
    gd = data["GraphDriver"]
    assert isinstance(gd, dict)
    dirs = [Path(gd["Data"][k]) for k in ("MergedDir", "UpperDir", "WorkDir")]
    init_dir = Path(str(gd["Data"]["LowerDir"]).split(":")[0])
    assert all(d.exists() for d in [*dirs, init_dir])
    r = ou(engine, "rm", cid)
    assert r.returncode == 1
    assert f"You cannot remove a running container {cid}" in r.stderr
    assert ou(engine, "rm", "-f", cid).stdout == cid + "\n"
    assert not any(d.exists() for d in [*dirs, init_dir])
    assert str(dirs[0]) not in Path("/proc/self/mountinfo").read_text()
    assert not (engine / "containers" / cid).exists()
    assert not (engine / "run" / "containers" / cid).exists()
    r = ou(engine, "inspect", cid)
    assert r.returncode == 1
    assert r.stdout.strip() == "[]"


# -- behaviour that does not depend on the driver ------------------------------------------------
def test_start_failures_exit_codes_and_created_state(engine: Path, names: list[str]) -> None:
    _require_driver("overlay")
    for cmd, code, text in [
        ("nosuchcmd", 127, 'exec: "nosuchcmd": executable file not found in $PATH'),
        ("/no/such/binary", 127, "no such file or directory"),
        ("/etc/passwd", 126, 'exec: "/etc/passwd": permission denied'),
    ]:
        name = f"fail{code}-{len(names)}"
        names.append(name)
        r = ou(engine, "run", "--name", name, "--network", "none", IMAGE, cmd)
        assert r.returncode == code, r.stderr
        assert text in r.stderr
        state = inspect(engine, name)["State"]
        assert isinstance(state, dict)
        assert state["Status"] == "created"
        assert state["ExitCode"] == code
        assert text in str(state["Error"])
        assert state["Pid"] == 0
        assert ou(engine, "logs", name).stdout == ""
    assert "Created" in ou(engine, "ps", "-a").stdout
    # exec into a container that is not running
    r = ou(engine, "exec", names[0], "true")
    assert r.returncode == 1
    assert "is not running" in r.stderr
    # exec of a missing command: Docker's text on stdout, 126
    names.append("execfail")
    ou(engine, "run", "-d", "--name", "execfail", "--network", "none", IMAGE, "sleep", "1000")
    r = ou(engine, "exec", "execfail", "nosuchcmd")
    assert r.returncode == 126
    assert r.stdout.startswith("OCI runtime exec failed: exec failed: unable to start container")
    assert r.stderr == ""


def test_engine_errors_are_125_and_unknown_containers(engine: Path, names: list[str]) -> None:
    _require_driver("overlay")
    r = ou(engine, "run", "--pull", "never", "nosuch/image:404", "true")
    assert r.returncode == 125
    assert "No such image: nosuch/image:404" in r.stderr
    names.append("dup")
    assert (
        ou(
            engine, "run", "-d", "--name", "dup", "--network", "none", IMAGE, "sleep", "100"
        ).returncode
        == 0
    )
    r = ou(engine, "run", "-d", "--name", "dup", "--network", "none", IMAGE, "sleep", "100")
    assert r.returncode == 125
    assert 'Conflict. The container name "/dup" is already in use by container' in r.stderr
    r = ou(engine, "run", "--runtime", "crun", "--network", "none", IMAGE, "true")
    assert r.returncode == 125
    assert "crun" in r.stderr
    r = ou(engine, "run", "-w", "/proc/self/fd/3", "--network", "none", IMAGE, "true")
    assert r.returncode == 125
    assert "/proc" in r.stderr
    for verb in (
        ["stop"],
        ["start"],
        ["kill"],
        ["wait"],
        ["rm"],
        ["logs"],
        ["restart"],
        ["exec", "nosuch", "true"],
    ):
        args = verb if verb[0] == "exec" else [*verb, "nosuch"]
        r = ou(engine, *args)
        assert r.returncode == 1, verb
        assert "No such container: nosuch" in r.stderr, verb
    assert ou(engine, "rm", "-f", "nosuch").returncode == 0


def test_isolation_defaults(engine: Path) -> None:
    _require_driver("overlay")
    script = (
        "grep CapBnd /proc/self/status; ls /proc/self/fd | tr '\\n' ' '; echo; "
        "cat /proc/kcore | wc -c; echo x > /proc/sys/kernel/hostname 2>&1 || echo ro-sys; "
        "ip -o link | cut -d: -f2; cat /proc/self/status | grep Seccomp:; "
        "touch /etc/newfile; ls -l /etc/mtab /.dockerenv | cut -c1"
    )
    r = ou(engine, "run", "--rm", IMAGE, "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split()[1] == "00000000a80425fb"  # Docker's 14 capabilities
    assert lines[1].split() == ["0", "1", "2", "3"]  # no leaked host fds (3 = ls's own dir)
    assert lines[2].strip() == "0"  # /proc/kcore masked
    assert "ro-sys" in r.stdout
    assert [x.strip() for x in lines[4:5]] == ["lo"]
    assert "Seccomp:\t2" in r.stdout
    r = ou(
        engine,
        "run",
        "--rm",
        "--read-only",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "touch /x 2>&1; echo rc=$?",
    )
    assert "Read-only file system" in r.stdout
    r = ou(engine, "run", "--rm", "--network", "none", IMAGE, "sh", "-c",
           "unshare -n true 2>&1; grep NoNewPrivs /proc/self/status")  # fmt: skip
    assert "Operation not permitted" in r.stdout  # seccomp refuses new namespaces
    assert "NoNewPrivs:\t0" in r.stdout
    r = ou(engine, "run", "--rm", "--network", "none", "--security-opt", "no-new-privileges",
           IMAGE, "grep", "NoNewPrivs", "/proc/self/status")  # fmt: skip
    assert r.stdout == "NoNewPrivs:\t1\n"


def test_init_layer_hidden_from_upper(engine: Path, names: list[str]) -> None:
    _require_driver("overlay")
    names.append("initl")
    ou(
        engine,
        "run",
        "-d",
        "--name",
        "initl",
        "--network",
        "none",
        "-h",
        "myhost",
        IMAGE,
        "sleep",
        "1000",
    )
    r = ou(
        engine,
        "exec",
        "initl",
        "sh",
        "-c",
        "echo 1.2.3.4 x >> /etc/hosts; echo n > /etc/hostname; cat /etc/hostname; "
        "echo $HOSTNAME; echo > /dev/shm/x; rm /etc/localtime",
    )
    assert r.stdout == "n\nmyhost\n"
    data = inspect(engine, "initl")
    gd = data["GraphDriver"]
    assert isinstance(gd, dict)
    upper = Path(gd["Data"]["UpperDir"])
    found = sorted(str(p.relative_to(upper)) for p in upper.rglob("*"))
    assert found == ["etc", "etc/localtime"]
    assert os.stat(upper / "etc/localtime").st_rdev == 0
    lowers = str(gd["Data"]["LowerDir"]).split(":")
    assert lowers[0].endswith("/fs")
    init = Path(lowers[0])
    assert (init / ".dockerenv").exists()
    assert os.readlink(init / "etc/mtab") == "/proc/mounts"
    assert (Path(lowers[1]) / "etc/localtime").read_bytes() == b"TZif2UTC0\n"
    assert Path(str(data["HostnamePath"])).read_text() == "n\n"
    mode = os.stat(engine / "containers").st_mode & 0o777
    assert mode == 0o700


def test_logs_follow_tail_timestamps(engine: Path, names: list[str]) -> None:
    _require_driver("overlay")
    names.append("logsf")
    ou(
        engine,
        "run",
        "-d",
        "--name",
        "logsf",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "echo one; sleep 0.5; echo two >&2; sleep 0.5; printf three",
    )
    r = ou(engine, "logs", "-f", "logsf", timeout=20)
    assert r.stdout == "one\nthree"
    assert r.stderr == "two\n"
    r = ou(engine, "logs", "--tail", "1", "logsf")
    assert r.stdout == "three"
    r = ou(engine, "logs", "-t", "logsf")
    first = r.stdout.split(" ", 1)
    assert first[0].endswith("Z")
    assert len(first[0]) == len("2026-11-27T02:16:10.211025170Z")
    assert first[1].startswith("one")
    assert ou(engine, "wait", "logsf").stdout == "0\n"


def test_shim_outlives_cli_and_killed_shim_is_noticed(engine: Path, names: list[str]) -> None:
    _require_driver("overlay")
    names.append("orphan")
    r = ou(engine, "run", "-d", "--name", "orphan", "--network", "none", IMAGE, "sleep", "1000")
    cid = r.stdout.strip()
    shim = json.loads((engine / "run" / "containers" / cid / "shim.pid").read_text())["pid"]
    # The CLI that started it has exited; the shim is not our child and keeps it running.
    assert Path(f"/proc/{shim}").exists()
    assert int(Path(f"/proc/{shim}/stat").read_text().split(")")[1].split()[1]) != os.getpid()
    state = inspect(engine, "orphan")["State"]
    assert isinstance(state, dict)
    assert state["Running"] is True
    pid = int(str(state["Pid"]))
    os.kill(shim, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{shim}").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    state = inspect(engine, "orphan")["State"]
    assert isinstance(state, dict)
    assert state["Status"] == "exited"
    assert "shim" in str(state["Error"])
    assert (
        not Path(f"/proc/{pid}/stat").exists()
        or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0]
    )
    assert "orphan" not in ou(engine, "ps").stdout


def _comm(d: Path) -> str:
    try:
        return (d / "comm").read_text().strip()
    except OSError:
        return ""


def test_no_zombies_and_no_shims_left(engine: Path) -> None:
    _require_driver("overlay")
    for _ in range(3):
        assert ou(engine, "run", "--rm", "--network", "none", IMAGE, "true").returncode == 0
    keep = ou(engine, "run", "-d", "--network", "none", IMAGE, "sleep", "100").stdout.strip()
    zombies = []
    shims = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z" and int(fields[1]) == os.getpid():
            zombies.append(d.name)
        if b"overunder.runtime.shim_main" in cmd or _comm(d) == "overunder-shim":
            try:
                targets = [os.readlink(f) for f in (d / "fd").iterdir()]
            except OSError:
                continue
            if any(t.startswith(str(engine)) for t in targets):
                shims.append(d.name)
    assert zombies == []
    live = ou(engine, "ps", "-q").stdout.split()
    assert keep[:12] in live
    assert len(shims) == len(live)  # one shim per running container, none left over
    ou(engine, "rm", "-f", keep)


def test_resources_land_in_cgroups(engine: Path, names: list[str]) -> None:
    _require_driver("overlay")
    names.append("limits")
    r = ou(
        engine,
        "run",
        "-d",
        "--name",
        "limits",
        "--network",
        "none",
        "--memory",
        "64m",
        "--pids-limit",
        "20",
        "--cpus",
        "0.5",
        IMAGE,
        "sleep",
        "1000",
    )
    cid = r.stdout.strip()
    cg = Path("/sys/fs/cgroup")
    if (cg / "memory").is_dir():
        base = cg / "memory" / "overunder" / cid
        assert (base / "memory.limit_in_bytes").read_text().strip() == str(64 * 1024 * 1024)
        assert (cg / "pids/overunder" / cid / "pids.max").read_text().strip() == "20"
        assert (cg / "cpu/overunder" / cid / "cpu.cfs_quota_us").read_text().strip() == "50000"
    hc = inspect(engine, "limits")["HostConfig"]
    assert isinstance(hc, dict)
    assert hc["Memory"] == 64 * 1024 * 1024
    assert hc["PidsLimit"] == 20


def test_tty_follows_resizes(engine: Path) -> None:
    _require_driver("overlay")
    import fcntl
    import pty
    import struct
    import termios

    env = {**os.environ, "OVERUNDER_ROOT": str(engine)}
    pid, fd = pty.fork()
    if pid == 0:
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        os.execve(
            sys.executable,
            [
                sys.executable,
                "-m",
                "overunder",
                "run",
                "--rm",
                "-it",
                "--network",
                "none",
                IMAGE,
                "sh",
            ],
            env,
        )
    out = b""

    def read_until(marker: bytes, timeout: float = 10) -> bytes:
        nonlocal out
        deadline = time.monotonic() + timeout
        while marker not in out and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            try:
                out += os.read(fd, 4096)
            except OSError:
                break
        return out

    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
        read_until(b"# ")
        os.write(fd, b"stty -a | head -n 1; echo MARK$((0+1))\r")
        assert b"rows 30; columns 100" in read_until(b"MARK1\r\n")
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        os.kill(pid, signal.SIGWINCH)
        # The new size reaches the container's pty when the CLI handles SIGWINCH; on a busy
        # machine that can take a moment, so ask again a few times.
        for attempt in range(2, 8):
            os.write(fd, b"stty -a | head -n 1; echo MARK$((0+%d))\r" % attempt)
            got = read_until(b"MARK%d\r\n" % attempt)
            if b"rows 40; columns 120" in got.split(b"MARK%d\r\n" % (attempt - 1))[-1]:
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"resize never arrived: {out!r}")
        os.write(fd, b"exit 7\r")
    finally:
        status = 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            got, status = os.waitpid(pid, os.WNOHANG)
            if got:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)  # the CLI we started; the container goes with --rm
            _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 7


def test_create_start_attach_restart_kill(engine: Path, names: list[str]) -> None:
    _require_driver("overlay")
    names.append("lifecycle")
    r = ou(
        engine,
        "create",
        "--name",
        "lifecycle",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "echo run; exit 4",
    )
    assert r.returncode == 0
    assert "Created" in ou(engine, "ps", "-a").stdout
    r = ou(engine, "start", "-a", "lifecycle")
    assert (r.returncode, r.stdout) == (4, "run\n")
    names.append("sleeper")
    ou(engine, "run", "-d", "--name", "sleeper", "--network", "none", IMAGE, "sleep", "1000")
    assert ou(engine, "restart", "-t", "0", "sleeper").stdout == "sleeper\n"
    data = inspect(engine, "sleeper")
    assert data["RestartCount"] == 1
    assert ou(engine, "kill", "-s", "TERM", "sleeper").returncode == 0  # ignored by PID 1
    assert ou(engine, "kill", "sleeper").stdout == "sleeper\n"
    assert ou(engine, "wait", "sleeper").stdout == "137\n"


def test_ps_format_and_info(engine: Path, names: list[str]) -> None:
    _require_driver("overlay")
    names.append("fmt")
    ou(
        engine,
        "run",
        "--name",
        "fmt",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "echo 1234567890123456789; exit 3",
    )
    r = ou(engine, "ps", "-a", "--format", "json")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    row = next(x for x in rows if x["Names"] == "fmt")
    assert row["Command"] == '"sh -c \'echo 1234567…"'
    assert row["State"] == "exited"
    assert row["Status"].startswith("Exited (3) ")
    table = ou(engine, "ps", "-a").stdout.splitlines()
    assert table[0].startswith("CONTAINER ID   IMAGE          COMMAND")
    r = ou(engine, "info", "--format", "json")
    info = json.loads(r.stdout)
    assert info["DockerRootDir"] == str(engine)
    assert info["Images"] >= 1
    assert info["Containers"] >= 1
    assert info["DefaultRuntime"] == "runc"
    assert "runc version" in info["RuntimeVersion"]
    assert "Backing Filesystem" in ou(engine, "info").stdout


def test_image_config_volumes_env_file_entrypoint(
    engine: Path, names: list[str], tmp_path: Path
) -> None:
    _require_driver("overlay")
    g_busybox.build_image(
        engine,
        "busybox:configured",
        work=tmp_path / "img",
        config={
            "User": "app",
            "WorkingDir": "/work/dir",
            "Env": ["PATH=/bin", "FROM_IMAGE=yes", "OVERRIDE=image"],
            "Entrypoint": ["sh", "-c"],
            "Cmd": ["echo default cmd"],
        },
    )
    r = ou(engine, "run", "--rm", "--network", "none", "busybox:configured")
    assert (r.returncode, r.stdout) == (0, "default cmd\n"), r.stderr
    host = tmp_path / "shared"
    host.mkdir()
    host.chmod(0o777)  # the image's user is uid 1000
    (host / "in.txt").write_text("from host\n")
    env_file = tmp_path / "env"
    env_file.write_text("# comment\nFROM_FILE=1\nOVERRIDE=file\n")
    r = ou(
        engine, "run", "--rm", "--network", "none", "-v", f"{host}:/data", "-v",
        f"{host}:/ro:ro", "--env-file", str(env_file), "-e", "OVERRIDE=flag",
        "busybox:configured",
        "id -u; pwd; echo $FROM_IMAGE $FROM_FILE $OVERRIDE $HOME; cat /data/in.txt; "
        "echo new > /data/out.txt; echo x > /ro/x 2>/dev/null || echo ro-refused",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "1000", "/work/dir", "yes 1 flag /home/app", "from host", "ro-refused",
    ]  # fmt: skip
    assert (host / "out.txt").read_text() == "new\n"
    r = ou(engine, "run", "--rm", "--network", "none", "--entrypoint", "id", "-u", "0:0",
           "busybox:configured", "-u")  # fmt: skip
    assert r.stdout == "0\n"
    # exec -d runs in the background and returns at once
    names.append("bg")
    ou(engine, "run", "-d", "--name", "bg", "--network", "none", IMAGE, "sleep", "1000")
    assert ou(engine, "exec", "-d", "bg", "sh", "-c", "echo done > /tmp/d").returncode == 0
    deadline = time.monotonic() + 5
    out = ""
    while time.monotonic() < deadline and out != "done\n":
        out = ou(engine, "exec", "bg", "cat", "/tmp/d").stdout
    assert out == "done\n"
    # exec -t without a terminal of ours: the pty is relayed here, the exit code kept
    r = ou(engine, "exec", "-t", "bg", "sh", "-c", "tty; exit 3")
    assert (r.returncode, r.stdout) == (3, "/dev/pts/0\n")  # text mode folds \r\n


# -- seccomp, --security-opt, --privileged ------------------------------------------------------
PROBE_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
/* "name errno" per call (0 = it succeeded). Each call is harmless when allowed. */
static void p(const char *n, long r) { printf("%s %d\n", n, r < 0 ? errno : 0); }
static long fork_with(unsigned long flags) {
  long r = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
  if (r == 0) _exit(0);
  if (r > 0) waitpid((pid_t)r, 0, 0);
  return r;
}
int main(void) {
  errno = 0; p("unshare", syscall(SYS_unshare, CLONE_NEWUTS));
  errno = 0; p("mount", syscall(SYS_mount, "t", "/nonexistent", "tmpfs", 0, 0));
  errno = 0; p("setns", syscall(SYS_setns, -1, 0));
  errno = 0; p("reboot", syscall(SYS_reboot, 0xfee1dead, 672274793, 0, 0)); /* CAD_OFF */
  errno = 0; p("swapon", syscall(SYS_swapon, "/nonexistent", 0));
  errno = 0; p("keyctl", syscall(SYS_keyctl, -1, 0, 0, 0, 0));
  errno = 0; p("clone3", syscall(SYS_clone3, 0, 0));
  errno = 0; p("unassigned", syscall(999));
  errno = 0; p("clone_newns", fork_with(CLONE_NEWNS));
  errno = 0; p("clone", fork_with(0));
  errno = 0; p("personality_query", syscall(SYS_personality, 0xffffffffUL));
  errno = 0; p("personality_norandom", syscall(SYS_personality, 0x0040000));
  errno = 0; { long r = socket(40, SOCK_STREAM, 0); p("socket_vsock", r); if (r >= 0) close(r); }
  errno = 0; { long r = socket(AF_UNIX, SOCK_STREAM, 0); p("socket_unix", r);
               if (r >= 0) close(r); }
  errno = 0; p("getpid", syscall(SYS_getpid));
  return 0;
}
"""
EPERM, ENOENT, EINVAL, ENOSYS, EBADF = 1, 2, 22, 38, 9


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A static binary that tries the calls the seccomp profile decides (in a dir to bind)."""
    gcc = require_binary("gcc")
    d = tmp_path_factory.mktemp("probe")
    (d / "probe.c").write_text(PROBE_C)
    r = subprocess.run(
        [gcc, "-static", "-O2", "-o", str(d / "probe"), str(d / "probe.c")],
        capture_output=True,
        text=True,
        check=False,
    )
    require(r.returncode == 0, f"a static C toolchain (gcc -static: {r.stderr.strip()[-200:]})")
    return d


def _probe(engine: Path, probe: Path, *flags: str) -> dict[str, int]:
    r = ou(engine, "run", "--rm", "--network", "none", "-v", f"{probe}:/probe:ro", *flags,
           IMAGE, "/probe/probe")  # fmt: skip
    assert r.returncode == 0, r.stderr
    return {name: int(code) for name, code in (line.split() for line in r.stdout.splitlines())}


def test_seccomp_default_profile_blocks(engine: Path, probe: Path) -> None:
    _require_driver("overlay")
    got = _probe(engine, probe)
    assert got == {
        "unshare": EPERM,
        "mount": EPERM,  # refused before the kernel looks at the path (ENOENT unconfined)
        "setns": EPERM,
        "reboot": EPERM,
        "swapon": EPERM,
        "keyctl": EPERM,
        "clone3": ENOSYS,  # so that libc falls back to clone, whose flags can be checked
        "unassigned": ENOSYS,  # newer than the profile: ENOSYS, not EPERM
        "clone_newns": EPERM,
        "clone": 0,
        "personality_query": 0,
        "personality_norandom": EPERM,
        "socket_vsock": EPERM,
        "socket_unix": 0,
        "getpid": 0,
    }
    # unconfined: the kernel's own answers (still no CAP_SYS_ADMIN, so unshare is EPERM)
    free = _probe(engine, probe, "--security-opt", "seccomp=unconfined")
    assert free["mount"] == ENOENT
    assert free["setns"] == EBADF
    assert free["keyctl"] != EPERM
    assert free["clone3"] == EINVAL
    assert free["personality_norandom"] == 0
    assert free["socket_vsock"] != EPERM
    assert free["unshare"] == EPERM
    # --privileged: every capability we hold, no seccomp
    priv = _probe(engine, probe, "--privileged")
    assert priv["unshare"] == 0
    assert priv["clone_newns"] == 0
    assert priv["reboot"] == EINVAL  # allowed; CAD_OFF is not a pid-namespace reboot command


def test_seccomp_profile_file_and_security_opts(
    engine: Path, probe: Path, tmp_path: Path, names: list[str]
) -> None:
    _require_driver("overlay")
    profile = tmp_path / "deny-getpid.json"
    profile.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
            }
        )
    )
    got = _probe(engine, probe, "--security-opt", f"seccomp={profile}")
    assert got["getpid"] == EPERM
    assert got["keyctl"] != EPERM
    r = ou(engine, "run", "--rm", "--security-opt", "seccomp=/no/such.json", IMAGE, "true")
    assert r.returncode == 125
    assert "opening seccomp profile (/no/such.json) failed" in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text('{"defaultAction": "SCMP_ACT_NOPE"}')
    r = ou(engine, "run", "--rm", "--security-opt", f"seccomp={bad}", IMAGE, "true")
    assert (r.returncode, "unknown action" in r.stderr) == (125, True)
    r = ou(engine, "run", "--rm", "--security-opt", "apparmor=x", IMAGE, "true")
    assert (r.returncode, "invalid --security-opt" in r.stderr) == (125, True)
    # recorded as Docker records it; exec gets the container's no-new-privileges
    names.append("secopts")
    r = ou(engine, "run", "-d", "--name", "secopts", "--network", "none",
           "--security-opt", "no-new-privileges", "--security-opt", "seccomp=unconfined",
           IMAGE, "sleep", "1000")  # fmt: skip
    assert r.returncode == 0, r.stderr
    hc = inspect(engine, "secopts")["HostConfig"]
    assert isinstance(hc, dict)
    assert hc["SecurityOpt"] == ["no-new-privileges", "seccomp=unconfined"]
    r = ou(engine, "exec", "secopts", "grep", "-E", "NoNewPrivs|Seccomp:", "/proc/self/status")
    assert r.stdout == "NoNewPrivs:\t1\nSeccomp:\t0\n"


def test_busybox_works_under_the_default_profile(engine: Path, names: list[str]) -> None:
    _require_driver("overlay")
    script = (
        "set -e; ls / >/dev/null; cat /etc/passwd >/dev/null; ps >/dev/null; date >/dev/null; "
        "mkdir /tmp/d; echo hi > /tmp/d/f; cp /tmp/d/f /tmp/g; mv /tmp/g /tmp/h; "
        "ln -s h /tmp/l; cat /tmp/l; sort /etc/group | head -1; "
        "httpd -p 127.0.0.1:8080 -h /var/www; wget -q -O - http://127.0.0.1:8080/; "
        "tar cf /tmp/t.tar /etc 2>/dev/null; gzip /tmp/t.tar; id -u; "
        "( sleep 0.1 & wait ); timeout 2 true; kill -0 $$; grep Seccomp: /proc/self/status"
    )
    r = ou(engine, "run", "--rm", "--network", "none", IMAGE, "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "hi",
        "app:x:1000:",
        "hello from overunder",
        "0",
        "Seccomp:\t2",
    ]


# -- pause / unpause -----------------------------------------------------------------------------
def test_pause_unpause(engine: Path, names: list[str]) -> None:
    _require_driver("overlay")
    names.append("paused")
    r = ou(engine, "run", "-d", "--name", "paused", "--network", "none", IMAGE, "sh", "-c",
           "trap 'exit 0' TERM; while true; do echo x; sleep 0.05; done")  # fmt: skip
    cid = r.stdout.strip()
    assert ou(engine, "pause", "paused").stdout == "paused\n"
    state = inspect(engine, "paused")["State"]
    assert isinstance(state, dict)
    assert (state["Status"], state["Paused"], state["Running"]) == ("paused", True, True)
    row = ou(engine, "ps").stdout.splitlines()[1]
    assert row.split("   ")[-1].strip() == "paused"
    assert "(Paused)" in row
    assert " Up " in row
    # frozen: no output while paused
    n = len(ou(engine, "logs", "paused").stdout.splitlines())
    time.sleep(0.4)
    assert len(ou(engine, "logs", "paused").stdout.splitlines()) == n
    r = ou(engine, "exec", "paused", "true")
    assert r.returncode == 1
    assert f"Container {cid} is paused, unpause the container before exec" in r.stderr
    r = ou(engine, "pause", "paused")
    assert (r.returncode, f"Container {cid} is already paused" in r.stderr) == (1, True)
    # commit (engineer H's) freezes only running containers and thaws only what it froze
    r = ou(engine, "commit", "paused", "k/paused:1")
    assert r.returncode == 0, r.stderr
    assert inspect(engine, "paused")["State"]["Status"] == "paused"  # type: ignore[index]
    ou(engine, "rmi", "k/paused:1")
    assert ou(engine, "unpause", cid[:12]).stdout == cid[:12] + "\n"
    r = ou(engine, "unpause", "paused")
    assert (r.returncode, f"Container {cid} is not paused" in r.stderr) == (1, True)
    deadline = time.monotonic() + 5
    while len(ou(engine, "logs", "paused").stdout.splitlines()) == n:
        assert time.monotonic() < deadline, "no output after unpause"
        time.sleep(0.05)
    assert ou(engine, "exec", "paused", "echo", "in").stdout == "in\n"
    # stop of a paused container: the TERM waits while frozen; SIGKILL and a thaw end it
    ou(engine, "pause", "paused")
    t0 = time.monotonic()
    assert ou(engine, "stop", "-t", "1", "paused").stdout == "paused\n"
    assert time.monotonic() - t0 < 8
    state = inspect(engine, "paused")["State"]
    assert isinstance(state, dict)
    assert (state["Status"], state["Paused"], state["Running"]) == ("exited", False, False)
    r = ou(engine, "pause", "paused")
    assert (r.returncode, f"Container {cid} is not running" in r.stderr) == (1, True)
    r = ou(engine, "pause", "nosuch")
    assert (r.returncode, "No such container: nosuch" in r.stderr) == (1, True)
    # rm -f and kill of a paused container thaw it
    names.append("paused2")
    ou(engine, "run", "-d", "--name", "paused2", "--network", "none", IMAGE, "sleep", "1000")
    ou(engine, "pause", "paused2")
    assert ou(engine, "kill", "paused2").stdout == "paused2\n"
    assert ou(engine, "wait", "paused2").stdout == "137\n"
    ou(engine, "start", "paused2")
    ou(engine, "pause", "paused2")
    t0 = time.monotonic()
    assert ou(engine, "rm", "-f", "paused2").stdout == "paused2\n"
    assert time.monotonic() - t0 < 8
    assert "paused2" not in ou(engine, "ps", "-a").stdout


# -- --restart -----------------------------------------------------------------------------------
def _wait_for(pred: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_restart_policies(engine: Path, names: list[str]) -> None:
    _require_driver("overlay")
    names += ["rs-fail", "rs-ok", "rs-always"]
    r = ou(engine, "run", "-d", "--name", "rs-fail", "--network", "none",
           "--restart", "on-failure:2", IMAGE, "sh", "-c", "echo run; exit 3")  # fmt: skip
    assert r.returncode == 0, r.stderr
    ou(engine, "run", "-d", "--name", "rs-ok", "--network", "none",
       "--restart", "on-failure", IMAGE, "true")  # fmt: skip

    def state(name: str) -> dict[str, object]:
        data = inspect(engine, name)
        st = data["State"]
        assert isinstance(st, dict)
        return {"status": st["Status"], "code": st["ExitCode"], "count": data["RestartCount"]}

    _wait_for(lambda: state("rs-fail")["status"] == "exited")
    assert state("rs-fail") == {"status": "exited", "code": 3, "count": 2}
    assert ou(engine, "logs", "rs-fail").stdout == "run\n" * 3  # the first run and 2 restarts
    hc = inspect(engine, "rs-fail")["HostConfig"]
    assert isinstance(hc, dict)
    assert hc["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
    _wait_for(lambda: state("rs-ok")["status"] == "exited")
    assert state("rs-ok") == {"status": "exited", "code": 0, "count": 0}  # success: no restart

    # always: restarted whatever the code; the published port follows the new process; a stop
    # ends it for good
    port = free_port()
    r = ou(engine, "run", "-d", "--name", "rs-always", "--network", "none", "--restart", "always",
           "-p", f"127.0.0.1:{port}:8080", IMAGE, "sh", "-c",
           "httpd -p 8080 -h /var/www; sleep 0.5; exit 0")  # fmt: skip
    assert r.returncode == 0, r.stderr
    first_pid = inspect(engine, "rs-always")["State"]["Pid"]  # type: ignore[index]

    def restarted_and_up() -> bool:
        st = state("rs-always")
        return st["status"] == "running" and st["count"] != 0

    _wait_for(restarted_and_up)
    assert inspect(engine, "rs-always")["State"]["Pid"] != first_pid  # type: ignore[index]

    def served() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                return bool(resp.read() == b"hello from overunder\n")
        except OSError:
            return False

    _wait_for(served)
    assert ou(engine, "stop", "-t", "1", "rs-always").stdout == "rs-always\n"
    count = inspect(engine, "rs-always")["RestartCount"]
    time.sleep(0.8)  # longer than the container's run: a restart would show by now
    assert state("rs-always")["status"] == "exited"
    assert inspect(engine, "rs-always")["RestartCount"] == count

    r = ou(engine, "run", "--rm", "--restart", "always", IMAGE, "true")
    assert (r.returncode, "Conflicting options: --restart and --rm" in r.stderr) == (125, True)
    r = ou(engine, "run", "--restart", "sometimes", IMAGE, "true")
    assert (r.returncode, "invalid restart policy 'sometimes'" in r.stderr) == (125, True)
