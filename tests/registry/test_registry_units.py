"""Pure parts of the registry package: challenges, endpoints, platforms, backoff."""

from __future__ import annotations

import pytest

from overunder.errors import InvalidArgument
from overunder.registry.auth import parse_challenges
from overunder.registry.client import RegistryClient, RetryPolicy, is_loopback
from overunder.registry.pull import PlatformSpec, host_platform, parse_platform


def test_parse_challenges() -> None:
    (c,) = parse_challenges(
        [
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:library/ubuntu:pull"'
        ]
    )
    assert c.scheme == "bearer"
    assert c.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/ubuntu:pull",
    }
    (b,) = parse_challenges(['Basic realm="test-realm"'])
    assert (b.scheme, b.params) == ("basic", {"realm": "test-realm"})
    two = parse_challenges(['Basic realm="a, b", Bearer realm="x",error="insufficient_scope"'])
    assert [c.scheme for c in two] == ["basic", "bearer"]
    assert two[0].params["realm"] == "a, b"
    assert two[1].params["error"] == "insufficient_scope"
    esc = parse_challenges(['Bearer realm="q\\"uote", scope=unquoted'])
    assert esc[0].params == {"realm": 'q"uote', "scope": "unquoted"}


@pytest.mark.parametrize(
    ("host", "loop"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.1.2.3", True),
        ("[::1]:5000", True),
        ("::1", True),
        ("registry-1.docker.io", False),
        ("10.0.0.1:5000", False),
        ("128.0.0.1", False),
        ("localhost.example.com", False),
    ],
)
def test_loopback(host: str, loop: bool) -> None:
    assert is_loopback(host) is loop


def test_endpoint_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OVERUNDER_INSECURE_REGISTRIES", raising=False)
    assert RegistryClient("127.0.0.1:5000").base_url == "http://127.0.0.1:5000"
    c = RegistryClient("registry.example.com")
    assert c.base_url == "https://registry.example.com"
    assert not c.insecure
    assert RegistryClient("reg.lan:5000", insecure=["reg.lan:5000"]).insecure
    monkeypatch.setenv("OVERUNDER_INSECURE_REGISTRIES", "a.lan, reg.lan")
    c = RegistryClient("reg.lan:5000")
    assert c.insecure
    assert c.base_url == "https://reg.lan:5000"  # HTTPS first, unverified; HTTP as fallback


def test_platforms() -> None:
    assert parse_platform("linux/arm64/v8") == PlatformSpec("linux", "arm64", "v8")
    assert parse_platform("linux/x86_64") == PlatformSpec("linux", "amd64")
    assert str(parse_platform("Linux/AMD64")) == "linux/amd64"
    for bad in ("linux", "linux/", "a/b/c/d", ""):
        with pytest.raises(InvalidArgument, match="platform"):
            parse_platform(bad)
    assert host_platform().os == "linux"


def test_backoff() -> None:
    r = RetryPolicy(base_delay=1.0, max_delay=5.0)
    assert r.delay(0, "3") == 3.0
    assert r.delay(0, "9999") == 5.0
    assert 0.5 <= r.delay(0, None) <= 1.0
    assert r.delay(10, None) <= 5.0
    assert 0.5 <= r.delay(0, "Wed, 21 Oct 2015 07:28:00 GMT") <= 1.0


def test_list_tags_follows_link_pages() -> None:
    """distribution 2.8 returns every tag at once; other registries page with Link."""
    import json as _json

    from registry_helpers import FakeResponse

    pages = {
        "/v2/": (200, {}, b"{}"),
        "/v2/r/tags/list?n=1000": (
            200,
            {"Link": '</v2/r/tags/list?last=b&n=2>; rel="next"'},
            _json.dumps({"name": "r", "tags": ["a", "b"]}).encode(),
        ),
        "/v2/r/tags/list?last=b&n=2": (200, {}, _json.dumps({"name": "r", "tags": ["c"]}).encode()),
    }
    seen: list[str] = []

    class Pages:
        def request(self, method: str, url: str, **kw: object) -> FakeResponse:
            path = url.split("127.0.0.1:9", 1)[1]
            seen.append(path)
            status, headers, body = pages[path]
            return FakeResponse(status, headers, body, url)

        def close(self) -> None:
            pass

    with RegistryClient("127.0.0.1:9", transport=Pages()) as c:  # type: ignore[arg-type]
        assert c.list_tags("r") == ["a", "b", "c"]
    assert seen[-1] == "/v2/r/tags/list?last=b&n=2"
