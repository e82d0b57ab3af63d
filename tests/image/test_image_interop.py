"""Round trips with the real tools: our save read by skopeo and umoci, their output loaded by
us (docker-compat.md §11, issue 4)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import require_binary, require_root
from image_fixtures import base_layer, data_layer, make_image, whiteout_layer, write_docker_archive

pytestmark = pytest.mark.interop
OVERUNDER = [sys.executable, "-m", "overunder"]


def _tree(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = p.read_bytes().hex()[:64] + f":{p.stat().st_size}"
    return out


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path]:
    require_binary("skopeo")
    require_binary("umoci")
    d = tmp_path_factory.mktemp("interop")
    img = make_image([base_layer(), data_layer(), whiteout_layer()], ["demo/fixture:1"])
    src = d / "src.tar"
    write_docker_archive(src, [img])
    env = dict(os.environ, OVERUNDER_ROOT=str(d / "root"))
    subprocess.run(
        [*OVERUNDER, "load", "-q", "-i", str(src)], env=env, check=True, capture_output=True
    )
    return env, d


def _run(*argv: str, env: dict[str, str] | None = None) -> str:
    p = subprocess.run(list(argv), env=env, capture_output=True, text=True, check=False)
    assert p.returncode == 0, f"{argv}: {p.stderr}"
    return p.stdout


def test_our_save_through_skopeo_and_umoci(loaded: tuple[dict[str, str], Path]) -> None:
    require_root()  # umoci unpack without --rootless keeps owners: needs root
    env, d = loaded
    saved = d / "saved.tar"
    _run(*OVERUNDER, "save", "-o", str(saved), "demo/fixture:1", env=env)
    _run("skopeo", "copy", f"docker-archive:{saved}", f"oci:{d / 'oci'}:t")
    _run("umoci", "unpack", "--image", f"{d / 'oci'}:t", str(d / "bundle"))
    tree = _tree(d / "bundle" / "rootfs")
    assert "data/gone.txt" not in tree  # the whiteout applied
    assert "data/opq/old.txt" not in tree  # the opaque dir applied
    assert tree["data/opq/new.txt"].endswith(":4")
    assert tree["bin/sh"] == "-> busybox"
    # Our OCI layout unpacks to the same files.
    oci_tar = d / "ours-oci.tar"
    _run(*OVERUNDER, "save", "--format", "oci", "-o", str(oci_tar), "demo/fixture:1", env=env)
    with tarfile.open(oci_tar) as tf:
        tf.extractall(d / "ours-oci", filter="data")
    _run("umoci", "unpack", "--image", f"{d / 'ours-oci'}:1", str(d / "bundle2"))
    assert _tree(d / "bundle2" / "rootfs") == tree


@pytest.mark.parametrize("transport", ["docker-archive", "oci-archive", "oci"])
def test_skopeo_output_loads(loaded: tuple[dict[str, str], Path], transport: str) -> None:
    env, d = loaded
    saved = d / "saved-for-skopeo.tar"
    if not saved.exists():
        _run(*OVERUNDER, "save", "-o", str(saved), "demo/fixture:1", env=env)
    out = d / f"skopeo-{transport}"
    dest = f"{transport}:{out}:" + ("demo/again:2" if transport == "docker-archive" else "again")
    _run("skopeo", "copy", f"docker-archive:{saved}", dest)
    env2 = dict(env, OVERUNDER_ROOT=str(d / f"root-{transport}"))
    text = _run(*OVERUNDER, "load", "-i", str(out), env=env2)
    name = "demo/again:2" if transport == "docker-archive" else "again:latest"
    assert text == f"Loaded image: {name}\n"
    want = _run(*OVERUNDER, "inspect", "-f", "{{json .RootFS.Layers}}", "demo/fixture:1", env=env)
    got = _run(*OVERUNDER, "inspect", "-f", "{{json .RootFS.Layers}}", name, env=env2)
    assert got == want


def test_shared_layer_symlink_read_by_skopeo(tmp_path: Path) -> None:
    """Two images sharing a layer: the second dir's layer.tar is a symlink (Docker's layout),
    and skopeo follows it."""
    require_binary("skopeo")
    require_binary("umoci")
    a = make_image([base_layer(), data_layer()], ["demo/a:1"])
    b = make_image([base_layer()], ["demo/b:1"], cmd=["ls"])
    src = tmp_path / "src.tar"
    write_docker_archive(src, [a, b])
    env = dict(os.environ, OVERUNDER_ROOT=str(tmp_path / "root"))
    _run(*OVERUNDER, "load", "-q", "-i", str(src), env=env)
    saved = tmp_path / "two.tar"
    _run(*OVERUNDER, "save", "-o", str(saved), "demo/a:1", "demo/b:1", env=env)
    with tarfile.open(saved) as tf:
        assert any(m.issym() and m.name.endswith("layer.tar") for m in tf.getmembers())
    for tag in ("demo/a:1", "demo/b:1"):
        name = tag.replace("/", "-").replace(":", "-")
        _run("skopeo", "copy", f"docker-archive:{saved}:{tag}", f"oci:{tmp_path / 'oci'}:{name}")
        _run("umoci", "raw", "unpack", "--image", f"{tmp_path / 'oci'}:{name}",
             str(tmp_path / name))  # fmt: skip
        assert (tmp_path / name / "bin/busybox").is_file()
