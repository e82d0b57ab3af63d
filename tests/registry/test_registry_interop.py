"""Interop with skopeo: what skopeo writes we pull, what we push skopeo reads."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from registry_helpers import RegistryProc, SampleImage, raw_push, require_binary

from overunder.engine.images import stores, tag
from overunder.engine.paths import EnginePaths
from overunder.engine.pull import pull
from overunder.engine.push import push

# The registries and images are session fixtures of this plugin module (one registry of
# each kind for the whole run; a conftest.py here would shadow tests/conftest.py).
pytest_plugins = ["registry_helpers"]
pytestmark = [pytest.mark.registry, pytest.mark.interop]


def skopeo(*args: str) -> str:
    return subprocess.run(
        ["skopeo", *args], check=True, capture_output=True, text=True, timeout=120
    ).stdout


def test_skopeo_oci_conversion_pulls_and_our_push_reads_back(
    plain_registry: RegistryProc, busybox_image: SampleImage, tmp_path: Path
) -> None:
    require_binary("skopeo")
    h = plain_registry.host
    raw_push(h, "t/interop-src", "1", busybox_image)
    # skopeo converts to an OCI manifest (same layer blobs, new config and manifest digests).
    skopeo(
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--format",
        "oci",
        f"docker://{h}/t/interop-src:1",
        f"docker://{h}/t/interop-oci:1",
    )
    raw = json.loads(
        skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{h}/t/interop-oci:1")
    )
    assert raw["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    paths = EnginePaths.resolve(tmp_path / "root")
    got = pull(paths, f"{h}/t/interop-oci:1")
    digest = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{h}/t/interop-oci:1"))[
        "Digest"
    ]
    assert got.digest == digest
    # Push it elsewhere; skopeo sees the same digest and can copy it into an OCI layout.
    tag(paths, f"{h}/t/interop-oci:1", f"{h}/t/interop-back:2")
    pushed = push(paths, f"{h}/t/interop-back:2")
    assert pushed.digest == digest
    info = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{h}/t/interop-back:2"))
    assert info["Digest"] == digest
    skopeo(
        "copy",
        "--src-tls-verify=false",
        f"docker://{h}/t/interop-back:2",
        f"oci:{tmp_path / 'oci'}:x",
    )
    assert (tmp_path / "oci" / "index.json").is_file()
    s = stores(paths)
    assert (
        s.images.resolve(f"{h}/t/interop-back:2").id == s.images.resolve(f"{h}/t/interop-oci:1").id
    )
