from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from image_fixtures import (
    base_layer,
    data_layer,
    make_image,
    whiteout_layer,
    write_docker_archive,
)
from overunder.cli.main import run

OVERUNDER = [sys.executable, "-m", "overunder"]


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    a = make_image([base_layer(), data_layer(), whiteout_layer()], ["demo/fixture:1"])
    b = make_image([base_layer()], ["base:latest"], cmd=["ls"])
    tar = tmp_path / "images.tar"
    write_docker_archive(tar, [a, b])
    return tar


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = run(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_load_images_inspect_history(
    engine_root: Path, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, "load", "-i", str(archive))
    assert code == 0
    assert out == "Loaded image: demo/fixture:1\nLoaded image: base:latest\n"
    code, out, _ = _run(capsys, "images")
    lines = out.splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert "TAG       IMAGE ID       CREATED" in lines[0]
    assert {tuple(line.split()[:2]) for line in lines[1:]} == {
        ("demo/fixture", "1"),
        ("base", "latest"),
    }
    code, out, _ = _run(capsys, "images", "-q", "base")
    assert len(out.strip()) == 12
    code, out, _ = _run(capsys, "images", "--format", "json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert {r["Repository"] for r in rows} == {"demo/fixture", "base"}
    code, out, _ = _run(capsys, "inspect", "demo/fixture:1")
    (obj,) = json.loads(out)
    assert list(obj) == [
        "Id", "RepoTags", "RepoDigests", "Parent", "Comment", "Created", "Container",
        "ContainerConfig", "DockerVersion", "Author", "Config", "Architecture", "Os", "Size",
        "VirtualSize", "GraphDriver", "RootFS", "Metadata",
    ]  # fmt: skip
    data = obj["GraphDriver"]["Data"]
    assert list(data) == ["LowerDir", "MergedDir", "UpperDir", "WorkDir"]
    lowers = data["LowerDir"].split(":")
    assert len(lowers) == 2
    assert Path(data["UpperDir"], "data/opq/new.txt").read_bytes() == b"new\n"
    assert Path(lowers[-1], "bin/busybox").is_file()
    assert len(obj["RootFS"]["Layers"]) == 3
    code, out, _ = _run(capsys, "inspect", "-f", "{{.GraphDriver.Data.UpperDir}}", "demo/fixture:1")
    assert out.strip() == data["UpperDir"]
    code, out, _ = _run(capsys, "inspect", "-f", "{{json .Config.Cmd}}", "base")
    assert out == '["ls"]\n'
    code, out, _ = _run(capsys, "history", "demo/fixture:1")
    lines = out.splitlines()
    assert lines[0].startswith("IMAGE          CREATED")
    assert lines[1].startswith(obj["Id"][7:19])
    assert lines[2].startswith("<missing>")
    assert "ENV A=1" in lines[3]
    assert " 0B " in lines[3]
    code, out, _ = _run(capsys, "history", "--format", "json", "base")
    assert [json.loads(line)["CreatedBy"] for line in out.splitlines()] == ["ENV A=1", "layer 0"]


def test_inspect_missing(
    engine_root: Path, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _run(capsys, "load", "-i", str(archive))
    code, out, err = _run(capsys, "inspect", "nosuch")
    assert (code, out, err) == (1, "[]\n", "Error: No such object: nosuch\n")
    code, out, err = _run(capsys, "inspect", "base", "nosuch")
    assert code == 1
    assert len(json.loads(out)) == 1
    assert err == "Error: No such object: nosuch\n"


def test_tag_rmi_prune_df(
    engine_root: Path, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _run(capsys, "load", "-i", str(archive))
    assert _run(capsys, "tag", "base", "mine/base:2")[0] == 0
    code, out, _ = _run(capsys, "images", "mine/base")
    assert "mine/base" in out
    code, out, err = _run(capsys, "rmi", "nosuch/image:1")
    assert code == 1
    assert err.startswith("Error: No such image: nosuch/image:1\n")
    code, out, _ = _run(capsys, "rmi", "mine/base:2")
    assert out == "Untagged: mine/base:2\n"
    code, out, _ = _run(capsys, "rmi", "demo/fixture:1")
    lines = out.splitlines()
    assert lines[0] == "Untagged: demo/fixture:1"
    assert lines[1].startswith("Deleted: sha256:")
    assert len(lines) == 4  # the image and its two layers not shared with base
    code, out, _ = _run(capsys, "system", "df")
    assert out.splitlines()[0].split() == ["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"]
    assert out.splitlines()[1].split()[:3] == ["Images", "1", "0"]
    code, out, _ = _run(capsys, "image", "prune", "-f")
    assert out == "Total reclaimed space: 0B\n"
    code, out, _ = _run(capsys, "image", "prune", "-a", "-f")
    assert out.startswith("Deleted Images:\nuntagged: base:latest\ndeleted: sha256:")
    assert _run(capsys, "images", "-q")[1] == ""
    assert list((engine_root / "snapshots").glob("*/fs")) == []


def test_import_with_changes(
    engine_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rootfs = tmp_path / "rootfs.tar"
    rootfs.write_bytes(base_layer())
    code, out, _ = _run(
        capsys, "import", "-c", 'CMD ["sh"]', "-c", "ENV A=1 B=2", "-c", "WORKDIR /data",
        "-c", "EXPOSE 80", "-c", "USER nobody", "-c", "LABEL k=v", str(rootfs), "demo/imp:1",
    )  # fmt: skip
    assert code == 0
    image_id = out.strip()
    assert image_id.startswith("sha256:")
    code, out, _ = _run(capsys, "image", "inspect", "demo/imp:1")
    (obj,) = json.loads(out)
    cfg = obj["Config"]
    assert cfg["Cmd"] == ["sh"]
    assert cfg["Env"] == ["A=1", "B=2"]
    assert cfg["WorkingDir"] == "/data"
    assert cfg["ExposedPorts"] == {"80/tcp": {}}
    assert cfg["User"] == "nobody"
    assert cfg["Labels"] == {"k": "v"}
    assert obj["Comment"] == "Imported from -"
    import hashlib

    # Kept byte for byte: the rootfs tar's digest is the layer's diff ID.
    assert obj["RootFS"]["Layers"] == ["sha256:" + hashlib.sha256(rootfs.read_bytes()).hexdigest()]
    code, out, _ = _run(capsys, "history", "demo/imp:1")
    assert "Imported from -" in out.splitlines()[1]


def test_save_to_stdout_and_load_from_stdin(
    engine_root: Path, archive: Path, tmp_path: Path
) -> None:
    subprocess.run([*OVERUNDER, "load", "-i", str(archive)], check=True, capture_output=True)
    saved = tmp_path / "saved.tar"
    with open(saved, "wb") as f:
        subprocess.run([*OVERUNDER, "save", "base"], stdout=f, check=True)
    with tarfile.open(saved) as tf:
        assert "manifest.json" in tf.getnames()
    subprocess.run([*OVERUNDER, "rmi", "base"], check=True, capture_output=True)
    with open(saved, "rb") as f:
        p = subprocess.run(
            [*OVERUNDER, "load"], stdin=f, capture_output=True, text=True, check=True
        )
    assert p.stdout == "Loaded image: base:latest\n"
    out = tmp_path / "o.tar"
    subprocess.run(
        [*OVERUNDER, "image", "save", "-o", str(out), "base", "demo/fixture:1"], check=True
    )
    assert oct(out.stat().st_mode & 0o777) == "0o600"


def test_load_moves_a_tag(
    engine_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = tmp_path / "one.tar"
    two = tmp_path / "two.tar"
    first = make_image([base_layer()], ["demo/x:1"], cmd=["a"])
    write_docker_archive(one, [first])
    write_docker_archive(two, [make_image([base_layer()], ["demo/x:1"], cmd=["b"])])
    _run(capsys, "load", "-i", str(one))
    out = _run(capsys, "load", "-i", str(two))[1]
    assert out.splitlines() == [
        f"The image demo/x:1 already exists, renaming the old one with ID {first.id} "
        "to empty string",
        "Loaded image: demo/x:1",
    ]
    out = _run(capsys, "images")[1]
    assert "<none>" in out


def test_rmi_refuses_image_used_by_container(
    engine_root: Path, archive: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from conftest import require_binary, require_root

    require_root()
    require_binary("runc")
    _run(capsys, "load", "-i", str(archive))
    code, cid, err = _run(capsys, "create", "--name", "c1", "base", "sh")
    assert code == 0, err
    try:
        code, out, err = _run(capsys, "rmi", "base")
        assert code == 1
        assert err.startswith(
            'Error: conflict: unable to remove repository reference "base" (must force) - '
            f"container {cid.strip()[:12]} is using its referenced image"
        )
        assert _run(capsys, "images", "-q", "base")[1] != ""
        code, out, _ = _run(capsys, "system", "df")
        assert out.splitlines()[1].split()[:3] == ["Images", "2", "1"]
        code, out, _ = _run(capsys, "rmi", "-f", "base")
        assert code == 0
        assert out.startswith("Untagged: base:latest\n")
    finally:
        _run(capsys, "rm", "-f", "c1")


def test_import_rejects_junk_and_leaves_nothing(
    engine_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all" * 100)
    code, _, err = _run(capsys, "import", str(junk), "x:1")
    assert code == 1
    assert err.startswith("Error: ")
    assert list((engine_root / "content" / "blobs" / "sha256").glob("*")) == []
    code, _, err = _run(capsys, "import", "-c", "FROM x", str(junk))
    assert code == 1
    assert "FROM is not a valid change command" in err
