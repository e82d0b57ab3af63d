"""Docker's reference grammar and normalisation, as a table of what Docker does."""

from __future__ import annotations

import pytest

from overunder.errors import InvalidArgument
from overunder.image.reference import parse, parse_tag_target

D = "sha256:" + "a" * 64

# input -> (full string, familiar string, api host)
VALID = [
    (
        "reselbob/pinger",
        "docker.io/reselbob/pinger:latest",
        "reselbob/pinger:latest",
        "registry-1.docker.io",
    ),
    ("ubuntu", "docker.io/library/ubuntu:latest", "ubuntu:latest", "registry-1.docker.io"),
    ("ubuntu:22.04", "docker.io/library/ubuntu:22.04", "ubuntu:22.04", "registry-1.docker.io"),
    ("library/ubuntu", "docker.io/library/ubuntu:latest", "ubuntu:latest", "registry-1.docker.io"),
    (
        "docker.io/ubuntu",
        "docker.io/library/ubuntu:latest",
        "ubuntu:latest",
        "registry-1.docker.io",
    ),
    (
        "index.docker.io/ubuntu",
        "docker.io/library/ubuntu:latest",
        "ubuntu:latest",
        "registry-1.docker.io",
    ),
    (
        "docker.io/library/a/b",
        "docker.io/library/a/b:latest",
        "library/a/b:latest",
        "registry-1.docker.io",
    ),
    (
        "127.0.0.1:5000/t/small:1",
        "127.0.0.1:5000/t/small:1",
        "127.0.0.1:5000/t/small:1",
        "127.0.0.1:5000",
    ),
    ("localhost/x", "localhost/x:latest", "localhost/x:latest", "localhost"),
    ("localhost:5000/x", "localhost:5000/x:latest", "localhost:5000/x:latest", "localhost:5000"),
    ("quay.io/a/b/c:v1.2_3-x", "quay.io/a/b/c:v1.2_3-x", "quay.io/a/b/c:v1.2_3-x", "quay.io"),
    ("Example/foo", "Example/foo:latest", "Example/foo:latest", "Example"),
    ("[::1]:5000/x", "[::1]:5000/x:latest", "[::1]:5000/x:latest", "[::1]:5000"),
    (
        "a_b/c__d/e---f.g",
        "docker.io/a_b/c__d/e---f.g:latest",
        "a_b/c__d/e---f.g:latest",
        "registry-1.docker.io",
    ),
    (f"ubuntu@{D}", f"docker.io/library/ubuntu@{D}", f"ubuntu@{D}", "registry-1.docker.io"),
    (
        f"ubuntu:22.04@{D}",
        f"docker.io/library/ubuntu:22.04@{D}",
        f"ubuntu:22.04@{D}",
        "registry-1.docker.io",
    ),
    (f"h:1/x@{D}", f"h:1/x@{D}", f"h:1/x@{D}", "h:1"),
]

INVALID = [
    "",
    "UPPER",
    "ubuntu:",
    ":tag",
    "a//b",
    "/a",
    "a/",
    "a:b:c",
    "a@sha256:abc",
    "a@sha256:" + "A" * 64,
    "a b",
    "-a",
    "a_",
    "a___b",
    "host:5000/UP",
    "ubuntu:" + "x" * 129,
    "a" * 256,
    "a:-tag",
]


@pytest.mark.parametrize(("text", "full", "familiar", "host"), VALID)
def test_valid(text: str, full: str, familiar: str, host: str) -> None:
    ref = parse(text)
    assert str(ref) == full
    assert ref.familiar == familiar
    assert ref.api_host == host
    assert parse(str(ref)) == ref
    assert parse(ref.familiar) == ref


@pytest.mark.parametrize("text", INVALID)
def test_invalid(text: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid reference format") as info:
        parse(text)
    assert info.value.hint


def test_parts_and_defaults() -> None:
    ref = parse("reselbob/pinger")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (
        "docker.io",
        "reselbob/pinger",
        "latest",
        None,
    )
    assert ref.tag_defaulted
    assert ref.name == "docker.io/reselbob/pinger"
    assert ref.familiar_name == "reselbob/pinger"
    assert ref.auth_key == "https://index.docker.io/v1/"
    assert not parse("reselbob/pinger:latest").tag_defaulted
    assert parse("reselbob/pinger") == parse("reselbob/pinger:latest")
    assert parse("x", default_tag=False).tag is None
    assert parse(f"x@{D}").tag is None
    assert parse("127.0.0.1:5000/a").auth_key == "127.0.0.1:5000"


def test_uppercase_message_names_the_repository() -> None:
    with pytest.raises(
        InvalidArgument, match=r"repository name \(library/Ubuntu\) must be lowercase"
    ):
        parse("Ubuntu")


def test_hex_id_refused() -> None:
    with pytest.raises(InvalidArgument, match="64-byte hexadecimal"):
        parse("a" * 64)


def test_non_sha256_digest_refused() -> None:
    with pytest.raises(InvalidArgument, match="unsupported digest algorithm"):
        parse("x@sha512:" + "a" * 128)


def test_with_tag_digest_and_canonical() -> None:
    ref = parse("127.0.0.1:5000/t/x:1")
    assert str(ref.with_tag("2")) == "127.0.0.1:5000/t/x:2"
    pinned = ref.with_digest(D)
    assert pinned.canonical == f"127.0.0.1:5000/t/x@{D}"
    assert str(ref.repo_only()) == "127.0.0.1:5000/t/x"
    with pytest.raises(InvalidArgument):
        ref.with_tag("bad tag")


def test_tag_target_refuses_digest() -> None:
    assert str(parse_tag_target("a/b")) == "docker.io/a/b:latest"
    with pytest.raises(InvalidArgument, match="digest"):
        parse_tag_target(f"a@{D}")
