"""``overunder tour --part docker``: the tutorial's Docker-level half replayed for real (root,
kernel overlay, runc; docker-registry when installed), its key outputs checked, and its
cleanup checked after a normal end and after SIGTERM in the middle."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import require_binary, require_overlay
from overunder.mount.mountinfo import read_mountinfo


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("OVERUNDER_ROOT", None)  # the tour uses a private store under its dir
    env.pop("OVERUNDER_RUN_ROOT", None)
    return env


def _httpd_pids() -> list[int]:
    """Processes running the pinger's command line (httpd -f -v -p 3000 -h /www)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if cmd.startswith(b"httpd\0-f\0-v\0-p\0003000\0-h\0/www"):
            found.append(int(d.name))
    return found


def _output_of(out: str, command: str, nth: int = 0) -> str:
    """The output printed after the nth ``$ command`` line, up to the next line or notice."""
    parts = out.split(f"$ {command}\n")
    assert len(parts) > nth + 1, f"{command!r} not shown {nth + 1} times"
    rest = parts[nth + 1]
    if rest.startswith(("$ ", "  >> ")):
        return ""  # the command printed nothing
    return re.split(r"\n(?=\$ |  >> )", rest, maxsplit=1)[0]


@pytest.fixture(scope="module")
def tour_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    require_overlay()
    require_binary("runc")
    base = tmp_path_factory.mktemp("tour") / "t"
    before = set(_httpd_pids())
    proc = subprocess.run(
        [sys.executable, "-m", "overunder", "tour", "--part", "docker", "--dir", str(base)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=180,
        check=False,
        env=_env(),
    )
    assert set(_httpd_pids()) <= before, "the pinger container is still running"
    return proc, base


def test_docker_tour_runs_and_cleans_up(
    tour_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    proc, base = tour_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert proc.stdout.startswith("=== At the Docker Level ===\n")
    assert proc.stdout.rstrip().endswith(f"{base} has been removed.")
    assert not base.exists()
    assert not [e for e in read_mountinfo() if e.target.startswith(str(base))]
    pid = re.search(r"^registry pid (\d+)$", proc.stdout, re.M)
    if pid is not None:  # docker-registry installed: started, then killed by its pid
        assert (
            not Path(f"/proc/{pid.group(1)}/cmdline").exists()
            or b"docker-registry" not in Path(f"/proc/{pid.group(1)}/cmdline").read_bytes()
        )


def test_docker_tour_diffs_at_each_step(
    tour_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    out = tour_run[0].stdout
    diffs = [_output_of(out, "overunder diff pinger", i) for i in range(5)]
    assert diffs[0] == ""  # step 5: nothing changed yet
    assert diffs[1] == "A /hello.txt"  # step 8
    assert diffs[2].splitlines() == ["A /hello.txt", "C /root", "A /root/.ash_history"]  # 12
    assert diffs[3].splitlines() == [  # step 15
        "C /etc",
        "A /etc/goodbye.txt",
        "A /hello.txt",
        "C /root",
        "A /root/.ash_history",
    ]
    assert diffs[4].splitlines() == [  # step 17
        "C /etc",
        "A /etc/goodbye.txt",
        "D /etc/localtime",
        "A /hello.txt",
        "C /root",
        "A /root/.ash_history",
    ]
    assert _output_of(out, "overunder exec pinger cat /hello.txt") == (
        "hi there\nGreetings really cool class"
    )
    assert "cat /hello.txt" in _output_of(out, "overunder exec pinger cat /root/.ash_history")


def test_docker_tour_shows_the_layers_on_the_host(
    tour_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    out = tour_run[0].stdout
    fetched = re.search(
        r"^\$ python3 -m overunder.tour.pinger fetch http://localhost:\d+/\n(.*?)\n  >> ",
        out,
        re.M | re.S,
    )
    assert fetched is not None
    page = json.loads(fetched.group(1))
    for key in (
        "hostname",
        "processId",
        "startTime",
        "memoryUsage",
        "networkInfo",
        "requestHeaders",
        "requestUrl",
        "remoteAddress",
        "currentTime",
    ):
        assert key in page
    assert page["requestUrl"] == "/"
    graph = json.loads(
        _output_of(
            out, "overunder inspect -f '{{json .GraphDriver}}' pinger | python3 -m json.tool"
        )
    )
    assert graph["Name"] == "overlay"
    assert len(graph["Data"]["LowerDir"].split(":")) == 2  # init layer + the image's layer
    upper_etc = out.split("/etc\ntotal", 1)[1].split("\n  >> ", 1)[0]
    assert re.search(r"^0 c--------- +\d+ root +root +0, +0 .* localtime$", upper_etc, re.M)
    assert re.search(r"^4 -rw-r--r-- .* goodbye.txt$", upper_etc, re.M)
    lower_cat = out.split('| tail -n 1)"/etc/localtime\n', 1)[1].split("\n  >> ", 1)[0]
    assert lower_cat.startswith("TZif")
    assert lower_cat.rstrip().endswith("UTC0")  # the deleted file, still in the lower dir
    assert "deletes /etc/localtime from the layers below" in out  # overunder explain


def test_docker_tour_cleans_up_when_interrupted(tmp_path: Path) -> None:
    require_overlay()
    require_binary("runc")
    base = tmp_path / "t"
    before = set(_httpd_pids())
    proc = subprocess.Popen(
        [sys.executable, "-m", "overunder", "tour", "--part", "docker", "--dir", str(base)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env=_env(),
    )
    assert proc.stdout is not None
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            if line.startswith("Step 5:") or time.monotonic() > deadline:
                break  # the container is running now
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not base.exists()
    assert not [e for e in read_mountinfo() if e.target.startswith(str(base))]
    assert set(_httpd_pids()) <= before


def test_docker_steps_without_registry_or_runtime(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Built offline (no run): no docker-registry -> save + load; no runc -> one skip step."""
    import shutil

    from overunder.tour import docker
    from overunder.tour.framework import TourEnv

    env = TourEnv(tmp_path, tmp_path / "over-under")
    real = shutil.which
    monkeypatch.setattr(
        docker.shutil, "which", lambda n: None if n == "docker-registry" else real(n)
    )
    commands = [c for s in docker.docker_steps(env) for c in s.commands]
    assert "overunder save -o pinger-image.tar reselbob/pinger" in commands
    assert "overunder load -i pinger-image.tar" in commands
    assert not any("docker-registry" in c for c in commands)
    monkeypatch.setattr(docker.shutil, "which", lambda n: None)
    steps = docker.docker_steps(env)
    assert steps[-1].number == "2-21"
    assert "runc is not installed" in steps[-1].notice
    assert not any("run -d" in c for s in steps for c in s.commands)


def test_docker_tour_load_path_for_real(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The no-registry path run for real: the image is saved, loaded back and run."""
    require_overlay()
    require_binary("runc")
    import shutil

    from overunder.tour import Tour, docker

    real = shutil.which
    monkeypatch.setattr(
        docker.shutil, "which", lambda n: None if n == "docker-registry" else real(n)
    )
    monkeypatch.delenv("OVERUNDER_ROOT", raising=False)
    monkeypatch.delenv("OVERUNDER_RUN_ROOT", raising=False)
    env = Tour.make_env(tmp_path / "t")
    steps = [s for s in docker.docker_steps(env) if s.number in ("0", "1", "2", "3", "5", "+")]
    before = set(_httpd_pids())
    results = Tour(env).run(steps)
    out = {r.command: r.output for res in results for r in res.results}
    assert "Loaded image: reselbob/pinger:latest" in out["overunder load -i pinger-image.tar"]
    assert out["overunder diff pinger"] == ""
    assert not (tmp_path / "t").exists()
    assert set(_httpd_pids()) <= before
