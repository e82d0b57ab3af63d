from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from overunder.errors import InvalidArgument, NotFound, Unsupported
from overunder.image import mediatypes as mt
from overunder.image.config import (
    ImageConfig,
    build_config,
    new_container_config,
    parse_time,
    rfc3339nano,
)
from overunder.image.ids import chain_ids, short_id
from overunder.image.manifest import detect_media_type, parse_index, parse_manifest
from overunder.image.store import ImageStore, familiar

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
C = "sha256:" + "c" * 64


def test_chain_ids() -> None:
    assert chain_ids([]) == []
    assert chain_ids([A]) == [A]
    second = "sha256:" + hashlib.sha256(f"{A} {B}".encode()).hexdigest()
    third = "sha256:" + hashlib.sha256(f"{second} {C}".encode()).hexdigest()
    assert chain_ids([A, B, C]) == [A, second, third]
    assert short_id(A) == "a" * 12


def _manifest(media_type: str | None = mt.DOCKER_MANIFEST) -> bytes:
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "config": {"mediaType": mt.DOCKER_CONFIG, "digest": A, "size": 10},
        "layers": [{"mediaType": mt.DOCKER_LAYER_GZIP, "digest": B, "size": 5}],
    }
    if media_type:
        doc["mediaType"] = media_type
    return json.dumps(doc).encode()


def test_parse_manifest_docker_and_oci() -> None:
    m = parse_manifest(_manifest())
    assert m.media_type == mt.DOCKER_MANIFEST
    assert m.config.digest == A
    assert [layer.digest for layer in m.layers] == [B]
    # OCI without mediaType in the body: shape decides.
    assert detect_media_type(_manifest(None)) == mt.OCI_MANIFEST
    assert parse_manifest(_manifest(None), mt.OCI_MANIFEST).media_type == mt.OCI_MANIFEST
    with pytest.raises(InvalidArgument, match="body says"):
        parse_manifest(_manifest(), mt.OCI_MANIFEST)
    # Round trip of a manifest we build.
    again = parse_manifest(m.to_bytes())
    assert again.config == m.config
    assert again.layers == m.layers


def test_parse_manifest_refuses_bad_digest_and_schema1() -> None:
    bad = json.loads(_manifest())
    bad["layers"][0]["digest"] = "sha256:../../etc/passwd"
    with pytest.raises(InvalidArgument, match="invalid digest"):
        parse_manifest(json.dumps(bad).encode())
    with pytest.raises(Unsupported, match="schema 1"):
        parse_manifest(b'{"schemaVersion":1,"name":"x"}')


def test_parse_index_and_select_platform() -> None:
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_INDEX,
        "manifests": [
            {
                "mediaType": mt.OCI_MANIFEST,
                "digest": A,
                "size": 1,
                "platform": {"os": "linux", "architecture": "amd64"},
            },
            {
                "mediaType": mt.OCI_MANIFEST,
                "digest": B,
                "size": 1,
                "platform": {"os": "linux", "architecture": "arm", "variant": "v7"},
            },
        ],
    }
    idx = parse_index(json.dumps(doc).encode())
    assert idx.select(architecture="amd64").digest == A
    assert idx.select(architecture="arm", variant="v7").digest == B
    with pytest.raises(Unsupported, match="linux/amd64, linux/arm/v7"):
        idx.select(architecture="s390x")


def test_config_keeps_unknown_fields_and_docker_order() -> None:
    data = build_config(
        diff_ids=[A],
        history=[{"created": "2020-01-01T00:00:00Z", "comment": "Imported from -"}],
        config={"Cmd": ["sh"], "Env": ["A=1"]},
        created="2020-01-01T00:00:00Z",
        extra={"comment": "Imported from -"},
    )
    doc = json.loads(data)
    assert list(doc) == [
        "architecture",
        "comment",
        "config",
        "container_config",
        "created",
        "docker_version",
        "history",
        "os",
        "rootfs",
    ]
    assert list(doc["config"])[:3] == ["Hostname", "Domainname", "User"]
    assert doc["config"]["Env"] == ["A=1"]
    assert "ExposedPorts" not in doc["config"]
    cfg = ImageConfig.parse(data)
    assert cfg.diff_ids == [A]
    assert cfg.id == "sha256:" + hashlib.sha256(data).hexdigest()
    odd = json.loads(data)
    odd["x-unknown"] = {"kept": True}
    assert ImageConfig.parse(json.dumps(odd).encode()).raw["x-unknown"] == {"kept": True}
    assert list(new_container_config({"Labels": {"a": "b"}, "Zzz": 1}))[-1] == "Zzz"


def test_time_helpers() -> None:
    assert rfc3339nano(ns=1_700_000_000_123_000_000) == "2023-11-14T22:13:20.123Z"
    assert rfc3339nano(ns=1_700_000_000_000_000_000) == "2023-11-14T22:13:20Z"
    assert parse_time("2023-11-14T22:13:20.123456789Z") == pytest.approx(1700000000.123456)
    assert parse_time("") == 0.0


def test_image_store_names(tmp_path: Path) -> None:
    s = ImageStore(tmp_path)
    s.add(A, None, names=["busybox"])
    s.add(B, None, names=["demo/x:1"], repo_digests=[f"demo/x@{C}"])
    assert s.resolve("busybox").id == A
    assert s.resolve("busybox:latest").id == A
    assert s.resolve("docker.io/library/busybox").id == A
    assert s.resolve("aaaa").id == A
    assert s.resolve("sha256:bbb").id == B
    assert s.resolve(f"demo/x@{C}").id == B
    assert s.get(A).familiar_tags == ["busybox:latest"]
    assert familiar("docker.io/demo/x@" + C) == "demo/x@" + C
    with pytest.raises(NotFound, match="No such image: nosuch"):
        s.resolve("nosuch")
    # A tag moves.
    _, moved = s.add(B, None, names=["busybox:latest"])
    assert moved == ["docker.io/library/busybox:latest"]
    assert s.get(A).repo_tags == []
    assert s.untag("docker.io/library/busybox:latest").id == B
    s.remove(A)
    assert [r.id for r in s.list()] == [B]
