"""diff, cp, commit, export, mount/umount CONTAINER through the CLI: the tutorial's Docker
half replayed (docker-compat.md §1), output formats, Docker's cp errors and exit codes."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
import h_layer_helpers as h


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = h.build_engine(tmp_path_factory.mktemp("h-engine"))
    yield root
    h.cleanup_engine(root)


def ou(
    engine: Path, *args: str, input: bytes | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "OVERUNDER_ROOT": str(engine)}
    env.pop("OVERUNDER_RUN_ROOT", None)
    return subprocess.run(
        [sys.executable, "-m", "overunder", *args],
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
        input=input,
        cwd=cwd,
    )


def out(r: subprocess.CompletedProcess[bytes]) -> str:
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout.decode()


@pytest.fixture
def names(engine: Path) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    if made:
        ou(engine, "rm", "-f", *made)


@pytest.mark.parametrize("driver", h.DRIVERS)
def test_tutorial_walkthrough(engine: Path, names: list[str], tmp_path: Path, driver: str) -> None:
    h.require_driver(driver)
    name = f"pinger-{driver}"
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
        h.BASE,
        "sleep",
        "100000",
    )
    assert len(out(r).strip()) == 64
    assert out(ou(engine, "diff", name)) == ""
    (tmp_path / "hello.txt").write_text("hi there\n")
    (tmp_path / "goodbye.txt").write_text("I am getting ready to go\n")
    assert out(ou(engine, "cp", "hello.txt", f"{name}:/hello.txt", cwd=tmp_path)) == ""
    assert out(ou(engine, "diff", name)) == "A /hello.txt\n"
    script = 'echo "hello again" >> /hello.txt && echo "cat /hello.txt" >> /root/.ash_history'
    out(ou(engine, "exec", name, "sh", "-c", script))
    assert out(ou(engine, "diff", name)).splitlines() == [
        "A /hello.txt",
        "C /root",
        "A /root/.ash_history",
    ]
    out(ou(engine, "cp", "goodbye.txt", f"{name}:/etc/goodbye.txt", cwd=tmp_path))
    out(ou(engine, "exec", name, "rm", "-rf", "/etc/localtime"))
    assert out(ou(engine, "diff", name)).splitlines() == [
        "C /etc",
        "A /etc/goodbye.txt",
        "D /etc/localtime",
        "A /hello.txt",
        "C /root",
        "A /root/.ash_history",
    ]
    upper = Path(out(ou(engine, "inspect", "-f", "{{.GraphDriver.Data.UpperDir}}", name)).strip())
    st = os.lstat(upper / "etc/localtime")
    assert stat.S_ISCHR(st.st_mode)
    assert st.st_rdev == 0
    assert (upper / "hello.txt").read_text() == "hi there\nhello again\n"


def test_diff_formats_and_errors(engine: Path, names: list[str]) -> None:
    name = "h-formats"
    names.append(name)
    out(ou(engine, "create", "--name", name, "--network", "none", h.FIXTURE, "sleep", "1"))
    with h.mounted(h.paths_of(engine), name) as m:
        (m / "data/chmod.txt").write_text("changed text\n")
        (m / "data/rdir/x.txt").unlink()
        (m / "new.bin").write_bytes(b"\0\1\2")
    doc = json.loads(out(ou(engine, "diff", "--format", "json", name)))
    assert doc == [
        {"Kind": "C", "Path": "/data"},
        {"Kind": "C", "Path": "/data/chmod.txt"},
        {"Kind": "C", "Path": "/data/rdir"},
        {"Kind": "D", "Path": "/data/rdir/x.txt"},
        {"Kind": "A", "Path": "/new.bin"},
    ]
    text = out(ou(engine, "diff", "--stat", name))
    rows = [" ".join(line.split()) for line in text.splitlines()]
    assert rows == [
        "C /data",
        "C /data/chmod.txt 13B (was 9B)",
        "C /data/rdir",
        "D /data/rdir/x.txt -2B",
        "A /new.bin +3B",
        "1 added (3B), 3 changed (13B), 1 deleted (2B)",
    ]
    st = json.loads(out(ou(engine, "diff", "--stat", "--format", "json", name)))
    assert st["Totals"]["AddedBytes"] == 3
    patch = out(ou(engine, "diff", "--patch", name))
    assert "--- a/data/chmod.txt\n+++ b/data/chmod.txt\n" in patch
    assert "-chmod me\n+changed text\n" in patch
    assert "Binary files /dev/null and b/new.bin differ" in patch
    assert "-x\n" in patch
    r = ou(engine, "diff", "nosuch")
    assert r.returncode == 1
    assert r.stderr.decode().splitlines()[0] == "Error: No such container: nosuch"


def test_diff_two_images_names_the_layers(engine: Path) -> None:
    text = out(ou(engine, "diff", h.BASE, h.FIXTURE))
    rows = {line.split()[1]: line for line in text.splitlines()[1:]}
    assert "/data/gone.txt" not in rows  # added by one fixture layer, deleted by the next
    assert rows["/data/opqimg"].startswith("A /data/opqimg")
    assert "layer 2" in rows["/data/opqimg/new.txt"]  # the top layer made it
    assert "layer 1" in rows["/data/chmod.txt"]
    doc = json.loads(out(ou(engine, "diff", "--format", "json", h.FIXTURE, h.BASE)))
    gone = {c["Path"]: c for c in doc["Changes"]}
    assert gone["/data"]["Kind"] == "D"
    assert doc["From"]["Type"] == "image"
    r = ou(engine, "diff", h.BASE, "nosuch")
    assert r.returncode == 1
    assert "No such container or image: nosuch" in r.stderr.decode()


def test_cp_errors_as_docker(engine: Path, names: list[str], tmp_path: Path) -> None:
    name = "h-cperr"
    names.append(name)
    out(ou(engine, "create", "--name", name, "--network", "none", h.FIXTURE, "sleep", "1"))
    (tmp_path / "f.txt").write_text("f\n")
    (tmp_path / "d").mkdir()
    c = name
    nf = "Could not find the file"
    busy = "Error processing tar file(exit status 1): unlinkat /etc/hostname"
    no_parent = f'invalid output path: directory "{tmp_path}/no/such/parent" does not exist'
    cases = [
        (["f.txt", f"{c}:/no/such/dir/file.txt"], f"{nf} /no/such/dir in container {c}"),
        (["d", f"{c}:/no/such/dir"], f"{nf} /no/such in container {c}"),
        (["f.txt", f"{c}:/nodir/"], "no such directory"),
        (["f.txt", f"{c}:/data/chmod.txt/"], "no such directory"),
        (["d", f"{c}:/data/chmod.txt"], "cannot copy directory"),
        ([f"{c}:/data/nonexistent", "x"], f"{nf} /data/nonexistent in container {c}"),
        ([f"{c}:/data", str(tmp_path / "no/such/parent/x")], no_parent),
        ([f"{c}:/data", "f.txt/"], "no such directory"),
        ([f"{c}:/data", "f.txt"], "cannot copy directory"),
        (["-", f"{c}:/stream-new"], f'destination "{c}:/stream-new" must be a directory'),
        (["-", f"{c}:/data/chmod.txt"], f'destination "{c}:/data/chmod.txt" must be a directory'),
        (["f.txt", "nosuch:/x"], "No such container: nosuch"),
        (["f.txt", "g.txt"], "must specify at least one container source"),
        ([f"{c}:/a", f"{c}:/b"], "copying between containers is not supported"),
        (["nope.txt", f"{c}:/"], f"lstat {tmp_path}/nope.txt: no such file or directory"),
        (["f.txt", f"{c}:/etc/hostname"], f"{busy}: device or resource busy"),
    ]
    for argv, message in cases:
        r = ou(engine, "cp", *argv, cwd=tmp_path, input=b"")
        assert r.returncode == 1, argv
        assert r.stderr.decode().splitlines()[0] == f"Error: {message}", argv
    r = ou(engine, "cp", "-", f"{name}:/data/keep", input=b"not a tar at all" * 40)
    assert r.returncode == 1
    assert r.stderr.decode().splitlines()[0] == (
        "Error: Error processing tar file(exit status 1): unexpected EOF"
    )
    assert out(ou(engine, "diff", name)) == ""  # nothing was written by any of them


def test_cp_streams_and_relative_paths(engine: Path, names: list[str], tmp_path: Path) -> None:
    name = "h-cpstream"
    names.append(name)
    out(ou(engine, "create", "--name", name, "--network", "none", h.FIXTURE, "sleep", "1"))
    raw = ou(engine, "cp", f"{name}:/data/keep", "-").stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        assert tf.getnames() == ["keep", "keep/keep.txt"]
    raw = ou(engine, "cp", f"{name}:/data/keep/.", "-").stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        assert tf.getnames() == [".", "./keep.txt"]
    raw = ou(engine, "cp", f"{name}:data/etclink", "-").stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        (m,) = tf.getmembers()
        assert m.issym()
        assert m.linkname == "/etc"
    # relative paths are relative to / (not WORKDIR=/data)
    r = ou(engine, "cp", f"{name}:chmod.txt", str(tmp_path / "x"))
    assert r.returncode == 1
    assert "Could not find the file /chmod.txt" in r.stderr.decode()
    out(ou(engine, "cp", f"{name}:data/chmod.txt", str(tmp_path / "x")))
    assert (tmp_path / "x").read_text() == "chmod me\n"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        info = tarfile.TarInfo("streamed/a.txt")
        info.size = 2
        info.uid, info.gid = 1234, 2345
        tf.addfile(info, io.BytesIO(b"a\n"))
    out(ou(engine, "cp", "-", f"{name}:/data/keep", input=buf.getvalue()))
    (tmp_path / "rel.txt").write_text("r\n")
    out(ou(engine, "cp", "rel.txt", f"{name}:rel.txt", cwd=tmp_path))
    assert out(ou(engine, "diff", name)).splitlines() == [
        "C /data",
        "C /data/keep",
        "A /data/keep/streamed",
        "A /data/keep/streamed/a.txt",
        "A /rel.txt",
    ]
    raw = ou(engine, "cp", f"{name}:/data/keep/streamed/a.txt", "-").stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        (m,) = tf.getmembers()
        assert (m.name, m.uid, m.gid) == ("a.txt", 1234, 2345)
    out(ou(engine, "cp", f"{name}:/etc/hostname", str(tmp_path / "hn")))
    short = out(ou(engine, "inspect", "-f", "{{.Id}}", name)).strip()[:12]
    assert (tmp_path / "hn").read_text() == short + "\n"


def test_commit_export_mount_cli(engine: Path, names: list[str], tmp_path: Path) -> None:
    name = "h-cli-commit"
    names.append(name)
    out(ou(engine, "create", "--name", name, "--network", "none", h.FIXTURE, "sleep", "1"))
    merged = out(ou(engine, "mount", name)).strip()
    assert Path(merged, "data/chmod.txt").read_text() == "chmod me\n"
    Path(merged, "data/chmod.txt").unlink()
    Path(merged, "made-in-mount.txt").write_text("m\n")
    assert out(ou(engine, "mount", name)).strip() == merged  # a second use
    out(ou(engine, "umount", name))
    assert os.path.ismount(merged)
    out(ou(engine, "umount", name))
    assert not os.path.ismount(merged)
    cmd = 'CMD ["cat", "/made-in-mount.txt"]'
    image_id = out(ou(engine, "commit", "-m", "msg", "-c", cmd, name, "h/cli:1")).strip()
    assert image_id.startswith("sha256:")
    assert len(image_id) == 71
    hist = out(ou(engine, "history", "--no-trunc", "h/cli:1")).splitlines()
    assert image_id in hist[1]
    assert "sleep 1" in hist[1]
    assert "msg" in hist[1]
    r = ou(engine, "run", "--rm", "--network", "none", "h/cli:1")
    assert out(r) == "m\n"
    out(ou(engine, "export", "-o", str(tmp_path / "exp.tar"), name))
    with tarfile.open(tmp_path / "exp.tar") as tf:
        members = set(tf.getnames())
    assert "made-in-mount.txt" in members
    assert "data/same.txt" in members
    assert "data/chmod.txt" not in members
    assert "data/gone.txt" not in members
    assert not any(n.startswith("./") for n in members)
    r = ou(engine, "commit", "nosuch")
    assert r.returncode == 1
    assert "No such container: nosuch" in r.stderr.decode()
    r = ou(engine, "mount", "nosuch")
    assert r.returncode == 1
    assert "No such container: nosuch" in r.stderr.decode()
    ou(engine, "rmi", "h/cli:1")


def test_cp_ownership_and_modes(engine: Path, names: list[str], tmp_path: Path) -> None:
    """In: the host file's owner and mode, with or without -a. Out: the caller's, modes kept."""
    name = "h-cpown"
    names.append(name)
    out(ou(engine, "create", "--name", name, "--network", "none", h.FIXTURE, "sleep", "1"))
    f = tmp_path / "owned.txt"
    f.write_text("o\n")
    os.chown(f, 1234, 2345)
    os.chmod(f, 0o751)
    d = tmp_path / "owned-dir"
    d.mkdir()
    os.chmod(d, 0o750)
    out(ou(engine, "cp", str(f), f"{name}:/data/"))
    out(ou(engine, "cp", "-a", str(d), f"{name}:/data/"))
    raw = ou(engine, "cp", f"{name}:/data/owned.txt", "-").stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        (m,) = tf.getmembers()
    assert (m.mode & 0o7777, m.uid, m.gid) == (0o751, 1234, 2345)
    raw = ou(engine, "cp", f"{name}:/data/owned-dir", "-").stdout
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        assert tf.getmembers()[0].mode & 0o7777 == 0o750
    out(ou(engine, "cp", f"{name}:/data/owned.txt", str(tmp_path / "back.txt")))
    st = os.stat(tmp_path / "back.txt")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o751, 0, 0)
