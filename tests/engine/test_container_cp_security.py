"""``cp`` paths resolve inside the container's root, and Docker's cp CVEs cannot happen:

* symlinks (absolute, relative, to ``/``, ``../../..``) in container paths land in the
  container, never on the host (docker-compat §4; autotest-docker ``cp_symlink``);
* CVE-2018-15664: a process swapping a dir and a symlink to a host dir in a loop while we copy
  in and out 100+ times never makes us write to, or read from, the host dir;
* CVE-2021-41089: parent dirs are never created outside the root;
* CVE-2019-14271: no process is started for a copy and nothing under the container's root is
  loaded into ours.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import h_layer_helpers as h

from overunder.engine.container_cp import copy_from_container, copy_to_container
from overunder.engine.container_mount import container_root
from overunder.engine.paths import EnginePaths
from overunder.errors import OverunderError


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnginePaths]:
    root = h.build_engine(tmp_path_factory.mktemp("h-engine"))
    yield h.paths_of(root)
    h.cleanup_engine(root)


@pytest.fixture
def container(engine: EnginePaths, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh fixture container, on the test's ``driver`` parameter if it has one."""
    driver = getattr(request, "param", None) or request.node.funcargs.get("driver", "overlay")
    h.require_driver(driver)
    name = re.sub(r"[^a-zA-Z0-9_.-]", "-", f"h-cp-{request.node.name}")
    h.create(engine, h.FIXTURE, name, driver=driver)
    yield name
    h.remove(engine, name)


def _tree_in(engine: EnginePaths, name: str) -> Path:
    """The container's live merged dir (it must be running) for checks."""
    from overunder.engine.container_record import run_dir
    from overunder.engine.container_rootfs import merged_dir
    from overunder.engine.containers import find_container

    return merged_dir(run_dir(engine, find_container(engine, name).id))


@pytest.mark.parametrize("driver", h.DRIVERS)
@pytest.mark.parametrize("state", ["stopped", "running"])
def test_copy_in_through_symlinks_stays_in_container(
    engine: EnginePaths, driver: str, container: str, tmp_path: Path, state: str
) -> None:
    probe = f"h-probe-{os.getpid()}-{state}.txt"
    src = tmp_path / probe
    src.write_text("probe\n")
    goodbye = tmp_path / "goodbye.txt"
    goodbye.write_text("I am getting ready to go\n")
    with h.mounted(engine, container) as m:
        os.symlink("/", m / "data/rootlink")
        os.symlink("../../../../../../../etc", m / "data/uplink")
    if state == "running":
        h.start(engine, container)
    for dest in ("/data/etclink", "/data/etclink/", "data/rootlink", "/data/uplink"):
        copy_to_container(engine, container, str(src), dest)
    copy_to_container(engine, container, str(src), f"/data/etclink/sub-{probe}")
    copy_to_container(engine, container, str(goodbye), "/data/pwlink")
    assert not Path("/etc", probe).exists()
    assert not Path("/", probe).exists()
    assert not Path("/etc", f"sub-{probe}").exists()
    assert "ready to go" not in Path("/etc/passwd").read_text()
    with container_root(engine, container) as (_rec, root):
        assert (root / "etc" / probe).read_text() == "probe\n"
        assert (root / "etc" / f"sub-{probe}").read_text() == "probe\n"
        assert (root / probe).read_text() == "probe\n"
        assert (root / "etc/passwd").read_text() == "I am getting ready to go\n"
        assert os.readlink(root / "data/pwlink") == "/etc/passwd"
    lines = h.lines(engine, container)
    assert "C /etc/passwd" in lines
    assert f"A /etc/{probe}" in lines
    assert f"A /{probe}" in lines
    assert not any(line.startswith("C /data/pwlink") for line in lines)


@pytest.mark.parametrize("driver", h.DRIVERS)
@pytest.mark.parametrize("state", ["stopped", "running"])
def test_copy_out_symlinks(
    engine: EnginePaths, driver: str, container: str, tmp_path: Path, state: str
) -> None:
    if state == "running":
        h.start(engine, container)
    copy_from_container(engine, container, "/data/etclink", str(tmp_path / "out-link"))
    assert os.readlink(tmp_path / "out-link") == "/etc"  # the link itself
    copy_from_container(engine, container, "/data/etclink", str(tmp_path / "out-L"), follow=True)
    assert (tmp_path / "out-L").is_dir()
    assert (tmp_path / "out-L/passwd").is_file()
    copy_from_container(engine, container, "/data/etclink/", str(tmp_path / "out-slash"))
    assert (tmp_path / "out-slash/localtime").read_bytes() == b"TZif2UTC0\n"
    copy_from_container(engine, container, "/data/etclink/passwd", str(tmp_path / "pw"))
    assert (tmp_path / "pw").read_text().startswith("root:x:0:0")
    # owned by the caller, modes kept
    st = os.lstat(tmp_path / "out-slash/passwd")
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


_SWAPPER = textwrap.dedent(
    """
    import os, random, signal, sys, time
    root, host_dir = sys.argv[1], sys.argv[2]
    d, link, tmp = root + "/swap", root + "/swap.l", root + "/swap.d"
    os.symlink(host_dir, link)
    n = 0
    def done(*_):  # report how many full swaps happened, so the test knows the race ran
        sys.stdout.write(f"{n}\\n"); sys.stdout.flush(); os._exit(0)
    signal.signal(signal.SIGTERM, done)
    sys.stdout.write("ready\\n"); sys.stdout.flush()
    while True:
        try:
            os.rename(d, tmp); os.rename(link, d)   # /swap -> host dir
            time.sleep(random.random() / 500)       # states of random length: copies
            os.rename(d, link); os.rename(tmp, d)   # /swap is a dir again
            time.sleep(random.random() / 500)       # straddle every kind of swap
            n += 1
        except OSError:
            pass
    """
)


def test_symlink_swap_race_cve_2018_15664(
    engine: EnginePaths, container: str, tmp_path: Path
) -> None:
    """Copies race a process exchanging /swap between a dir and a symlink to a host dir."""
    outside = tmp_path / "host-dir"
    outside.mkdir()
    (outside / "secret.txt").write_text("HOST SECRET\n")
    src = tmp_path / "payload.txt"
    src.write_text("payload\n")
    srcdir = tmp_path / "payload-dir"
    (srcdir / "sub").mkdir(parents=True)
    (srcdir / "sub/p.txt").write_text("p\n")
    h.start(engine, container)
    root = _tree_in(engine, container)
    (root / "swap").mkdir()
    (root / "swap/secret.txt").write_text("container\n")
    swapper = subprocess.Popen(
        [sys.executable, "-c", _SWAPPER, str(root), str(outside)],
        stdout=subprocess.PIPE,
        text=True,
    )
    ok_in = ok_out = failed = 0
    swaps = 0
    try:
        assert swapper.stdout is not None
        assert swapper.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 60
        for i in range(120):
            if time.monotonic() > deadline:
                break
            # Each copy either lands inside the container or fails cleanly (the dir it was
            # going into was swapped away); what it must never do is touch the host.
            for source, dest_in in ((src, f"/swap/f{i}.txt"), (srcdir, f"/swap/d{i}")):
                try:
                    copy_to_container(engine, container, str(source), dest_in)
                    ok_in += 1
                except OverunderError:
                    failed += 1
            dest = tmp_path / f"out{i}"
            try:
                copy_from_container(engine, container, "/swap/secret.txt", str(dest))
                ok_out += 1
                assert dest.read_text() == "container\n"
            except OverunderError:
                failed += 1
    finally:
        swapper.terminate()
        out, _ = swapper.communicate(timeout=10)
        swaps = int(out.strip() or 0)
    assert sorted(os.listdir(outside)) == ["secret.txt"]  # nothing ever landed on the host
    # The race really ran: the swapper kept swapping, and copies both landed and failed.
    assert swaps >= 10, (swaps, ok_in, ok_out, failed)
    assert ok_in >= 5, (swaps, ok_in, ok_out, failed)
    assert ok_out >= 5, (swaps, ok_in, ok_out, failed)


def test_parents_never_created_outside_root_cve_2021_41089(
    engine: EnginePaths, container: str, tmp_path: Path
) -> None:
    target = tmp_path / "host-target"  # does not exist on the host
    src = tmp_path / "srcdir"
    (src / "x").mkdir(parents=True)
    (src / "x/y.txt").write_text("y\n")
    with h.mounted(engine, container) as m:
        os.symlink(str(target), m / "data/esc")
        os.symlink(str(target / "hop"), m / "data/keep/hop")
    with pytest.raises(OverunderError, match="Could not find the file"):
        copy_to_container(engine, container, str(src), "/data/esc/sub/deeper")
    with pytest.raises(OverunderError, match="Could not find the file"):
        copy_to_container(engine, container, str(src), "/data/esc")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name in ("hop/x/", "hop/x/y.txt"):
            info = tarfile.TarInfo(name.rstrip("/"))
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
            else:
                info.size = 2
            tf.addfile(info, io.BytesIO(b"y\n") if info.isreg() else None)
    buf.seek(0)
    copy_to_container(engine, container, "-", "/data/keep", stdin=buf)
    assert not target.exists()  # nothing on the host
    with container_root(engine, container) as (_rec, root):
        # the parents were made inside the root, where the link resolves there
        assert (root / str(target).lstrip("/") / "hop/x/y.txt").read_text() == "y\n"


def test_no_process_and_no_container_code_cve_2019_14271(
    engine: EnginePaths, container: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy starts no process (nothing can run in or from the container's root) and maps
    no file of the container's tree (a planted libnss is never loaded)."""
    h.start(engine, container)
    root = _tree_in(engine, container)
    (root / "lib").mkdir(exist_ok=True)
    (root / "lib/libnss_files.so.2").write_bytes(b"\x7fELF not really")
    src = tmp_path / "f.txt"
    src.write_text("f\n")
    calls: list[str] = []

    def refuse(what: str) -> object:
        def _refused(*args: object, **kwargs: object) -> None:
            calls.append(what)
            raise AssertionError(f"cp started a process ({what})")

        return _refused

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("Popen"))
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "execv", "execve", "system"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, refuse(name))
    copy_to_container(engine, container, str(src), "/etc/f.txt")
    copy_from_container(engine, container, "/etc", str(tmp_path / "etc-out"))
    out = io.BytesIO()
    copy_from_container(engine, container, "/lib", "-", stdout=out)
    monkeypatch.undo()
    assert calls == []
    maps = Path("/proc/self/maps").read_text()
    assert str(root) not in maps
    assert not [m for m in sys.modules.values() if str(root) in str(getattr(m, "__file__", ""))]


@pytest.mark.parametrize("bad", ["../../../../../../tmp/h-escape.txt", "/tmp/h-escape-abs.txt"])
def test_hostile_stream_names_are_refused(
    engine: EnginePaths, container: str, tmp_path: Path, bad: str
) -> None:
    """A tar stream copied in cannot name a path outside the destination dir."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo(bad)
        info.size = 4
        tf.addfile(info, io.BytesIO(b"evil"))
    buf.seek(0)
    with pytest.raises(OverunderError, match="points outside the destination"):
        copy_to_container(engine, container, "-", "/data/keep", stdin=buf)
    assert not Path("/tmp", Path(bad).name).exists()
    assert h.lines(engine, container) == []
