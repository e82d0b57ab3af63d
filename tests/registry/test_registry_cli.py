"""pull / push / login / logout end to end: the CLI, the engine and a real registry."""

from __future__ import annotations

import io
import itertools
import json
import os
import stat
from pathlib import Path

import pytest
from registry_helpers import (
    FaultTransport,
    RegistryProc,
    SampleImage,
    TokenSetup,
    basic_header,
    layer_tar,
    make_image,
    make_index,
    raw_push,
    raw_put_manifest,
)

from overunder.cli.main import run
from overunder.engine.images import stores
from overunder.engine.paths import EnginePaths
from overunder.engine.pull import pull
from overunder.errors import IntegrityError

# The registries and images are session fixtures of this plugin module (one registry of
# each kind for the whole run; a conftest.py here would shadow tests/conftest.py).
pytest_plugins = ["registry_helpers"]
pytestmark = pytest.mark.registry
_seq = itertools.count()


def cli(capsys: pytest.CaptureFixture[str], root: Path, *argv: str) -> tuple[int, str, str]:
    code = run(["--root", str(root), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_pull_cli_output_layers_and_up_to_date(
    plain_registry: RegistryProc,
    busybox_image: SampleImage,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = f"t/cli{next(_seq)}"
    raw_push(plain_registry.host, name, "latest", busybox_image)
    ref = f"{plain_registry.host}/{name}"
    root = tmp_path / "root"
    code, out, err = cli(capsys, root, "pull", ref)
    assert code == 0, err
    lines = out.splitlines()
    short = [d.digest[7:19] for d in busybox_image.layers]
    assert lines[0] == "Using default tag: latest"
    assert lines[1] == f"latest: Pulling from {name}"
    for s in short:
        assert f"{s}: Pulling fs layer" in lines
        assert f"{s}: Download complete" in lines
        assert f"{s}: Pull complete" in lines
    assert lines[-3] == f"Digest: {busybox_image.digest}"
    assert lines[-2] == f"Status: Downloaded newer image for {ref}:latest"
    assert lines[-1] == f"{ref}:latest"
    # The layers are unpacked and the image recorded with tag and RepoDigest.
    s = stores(EnginePaths.resolve(root))
    rec = s.images.resolve(f"{ref}:latest")
    assert rec.id == busybox_image.config.digest
    assert f"{ref}@{busybox_image.digest}" in rec.repo_digests
    from overunder.image.ids import chain_ids

    chains = chain_ids(busybox_image.diff_ids)
    assert (s.snapshots.layer_dir(chains[0]) / "bin" / "busybox").is_file()
    assert (s.snapshots.layer_dir(chains[1]) / "data" / "one.txt").read_bytes() == b"one\n" * 1000
    # Again: nothing to do.
    code, out, _ = cli(capsys, root, "pull", ref)
    assert code == 0
    assert f"{short[0]}: Already exists" in out
    assert f"Status: Image is up to date for {ref}:latest" in out
    code, out, _ = cli(capsys, root, "pull", "-q", f"{ref}@{busybox_image.digest}")
    assert code == 0
    assert out == f"{ref}@{busybox_image.digest}\n"


def test_pull_platform_missing_fails_clearly(
    plain_registry: RegistryProc, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"t/multi-cli{next(_seq)}"
    amd = make_image([layer_tar({"arch": b"amd64\n"})])
    arm = make_image([layer_tar({"arch": b"arm64\n"})], architecture="arm64")
    raw_push(plain_registry.host, name, "amd", amd)
    raw_push(plain_registry.host, name, "arm", arm)
    raw_put_manifest(
        plain_registry.host,
        name,
        "1",
        make_index([(amd, "amd64", None), (arm, "arm64", None)], oci=False),
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
    root = tmp_path / "root"
    ref = f"{plain_registry.host}/{name}:1"
    code, _, err = cli(capsys, root, "pull", "--platform", "linux/ppc64le", ref)
    assert code == 1
    assert "no matching manifest for linux/ppc64le" in err
    assert "available: linux/amd64, linux/arm64" in err
    assert "Hint:" in err
    code, _, err = cli(capsys, root, "pull", "--platform", "linux/arm64", ref)
    assert code == 0, err
    s = stores(EnginePaths.resolve(root))
    assert s.images.resolve(ref).id == arm.config.digest


def test_corrupt_layer_records_nothing(
    plain_registry: RegistryProc, busybox_image: SampleImage, tmp_path: Path
) -> None:
    name = f"t/corrupt{next(_seq)}"
    raw_push(plain_registry.host, name, "1", busybox_image)
    ft = FaultTransport()
    ft.mangle(busybox_image.layers[1].digest, corrupt_at=10)
    paths = EnginePaths.resolve(tmp_path / "root")
    with pytest.raises(IntegrityError):
        pull(paths, f"{plain_registry.host}/{name}:1", transport=ft)
    ft.close()
    s = stores(paths)
    assert s.images.list() == []
    assert not s.content.has(busybox_image.layers[1].digest)
    # No partial data of the corrupt blob is kept for resuming (a good layer cut short by the
    # failure may keep its partial ingest: that is what a later pull resumes from).
    with s.content.writer(ref=f"pull-{busybox_image.layers[1].digest}") as w:
        assert w.offset == 0
        w.abort()
    # The good first layer may be kept (verified, like Docker keeps finished layers for the
    # next try); the corrupt one never becomes a snapshot.
    from overunder.image.ids import chain_ids

    chains = chain_ids(busybox_image.diff_ids)
    assert set(s.snapshots.snapshots()) <= {chains[0]}
    ok = {busybox_image.layers[0].digest, busybox_image.config.digest}
    assert set(s.content.digests()) <= ok


def test_push_round_trip_keeps_digest(
    plain_registry: RegistryProc, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = next(_seq)
    img = make_image([layer_tar({"x": b"x" * 100_000}), layer_tar({"y": b"y"})], oci=True)
    src = f"{plain_registry.host}/t/rt-src{n}:1"
    raw_push(plain_registry.host, f"t/rt-src{n}", "1", img)
    root = tmp_path / "root"
    assert cli(capsys, root, "pull", "-q", src)[0] == 0
    from overunder.engine.images import tag

    dst = f"{plain_registry.host}/t/rt-dst{n}:2"
    tag(EnginePaths.resolve(root), src, dst)
    code, out, err = cli(capsys, root, "push", dst)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"The push refers to repository [{dst[:-2]}]"
    assert lines[-1] == f"2: digest: {img.digest} size: {len(img.manifest)}"
    assert any(line.endswith(f"Mounted from t/rt-src{n}") for line in lines)
    rec = stores(EnginePaths.resolve(root)).images.resolve(src)
    assert rec.manifest_digest == img.digest


def test_login_logout_and_authenticated_pull(  # noqa: PLR0917 - fixtures
    basic_registry: RegistryProc,
    busybox_image: SampleImage,
    tmp_path: Path,
    docker_config: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = f"t/auth{next(_seq)}"
    raw_push(basic_registry.host, name, "1", busybox_image, auth=basic_header())
    root = tmp_path / "root"
    ref = f"{basic_registry.host}/{name}:1"
    code, _, err = cli(capsys, root, "pull", ref)
    assert code == 1
    assert "unauthorized" in err
    assert f"overunder login {basic_registry.host}" in err
    monkeypatch.setattr("sys.stdin", io.StringIO("wrong\n"))
    code, _, err = cli(
        capsys, root, "login", "-u", "tester", "--password-stdin", basic_registry.host
    )
    assert code == 1
    assert "incorrect username or password" in err
    assert not docker_config.exists()
    monkeypatch.setattr("sys.stdin", io.StringIO("testpw\n"))
    code, out, err = cli(
        capsys, root, "login", "-u", "tester", "--password-stdin", basic_registry.host
    )
    assert code == 0, err
    assert out == "Login Succeeded\n"
    assert stat.S_IMODE(docker_config.stat().st_mode) == 0o600
    doc = json.loads(docker_config.read_text())
    assert doc == {"auths": {basic_registry.host: {"auth": "dGVzdGVyOnRlc3Rwdw=="}}}
    code, out, err = cli(capsys, root, "pull", "-q", ref)
    assert code == 0, err
    code, out, _ = cli(capsys, root, "logout", basic_registry.host)
    assert out == f"Removing login credentials for {basic_registry.host}\n"
    assert json.loads(docker_config.read_text()) == {"auths": {}}
    code, out, _ = cli(capsys, root, "logout", basic_registry.host)
    assert out == f"Not logged in to {basic_registry.host}\n"


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_engine_unpacks_zstd_and_plain_layers(
    plain_registry: RegistryProc, tmp_path: Path, compression: str
) -> None:
    img = make_image(
        [layer_tar({"etc/os": b"zz\n" * 500}), layer_tar({"etc/more": b"more\n"})],
        oci=True,
        compression=compression,
    )
    name = f"t/{compression}{next(_seq)}"
    raw_push(plain_registry.host, name, "1", img)
    paths = EnginePaths.resolve(tmp_path / "root")
    got = pull(paths, f"{plain_registry.host}/{name}:1")
    assert got.image_id == img.config.digest
    from overunder.image.ids import chain_ids

    s = stores(paths)
    top, bottom = chain_ids(img.diff_ids)[1], chain_ids(img.diff_ids)[0]
    assert (s.snapshots.layer_dir(bottom) / "etc" / "os").read_bytes() == b"zz\n" * 500
    assert (s.snapshots.layer_dir(top) / "etc" / "more").read_bytes() == b"more\n"


def test_login_with_token_service(
    token_registry: TokenSetup,
    tmp_path: Path,
    docker_config: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host = token_registry.registry.host
    monkeypatch.setattr("sys.stdin", io.StringIO("nope\n"))
    code, _, err = cli(capsys, tmp_path, "login", "-u", "tester", "--password-stdin", host)
    assert code == 1
    assert "refused" in err
    code, out, err = cli(capsys, tmp_path, "login", "-u", "tester", "-p", "testpw", host)
    assert code == 0, err
    assert out == "Login Succeeded\n"
    assert "Using --password via the CLI is insecure" in err
    assert json.loads(docker_config.read_text())["auths"][host]["auth"] == "dGVzdGVyOnRlc3Rwdw=="


def test_interrupted_pull_resumes_with_range(plain_registry: RegistryProc, tmp_path: Path) -> None:
    """Ctrl-C mid-blob keeps the partial download; the next pull asks only for the rest."""
    img = make_image([layer_tar({"big.bin": os.urandom(3_000_000)})], compression="none")
    name = f"t/resume{next(_seq)}"
    raw_push(plain_registry.host, name, "1", img)
    layer = img.layers[0]

    class Interrupt:
        def message(self, text: str) -> None:
            pass

        def layer(self, short: str, status: str, done: int = 0, total: int = 0) -> None:
            if status == "Downloading" and done >= 300_000:
                raise KeyboardInterrupt

    paths = EnginePaths.resolve(tmp_path / "root")
    ref = f"{plain_registry.host}/{name}:1"
    with pytest.raises(KeyboardInterrupt):
        pull(paths, ref, observer=Interrupt())
    s = stores(paths)
    assert s.images.list() == []
    assert not s.content.has(layer.digest)
    ft = FaultTransport()
    got = pull(paths, ref, transport=ft)
    ft.close()
    assert got.image_id == img.config.digest
    assert s.content.read(layer.digest) == layer.data
    (get,) = ft.requests("GET", f"/blobs/{layer.digest}")
    start, end = get["Range"].removeprefix("bytes=").split("-")
    assert int(start) >= 300_000
    assert int(end) == len(layer.data) - 1


def test_all_tags_pull_and_push(
    plain_registry: RegistryProc, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = next(_seq)
    h = plain_registry.host
    one = make_image([layer_tar({"v": b"1\n"})])
    two = make_image([layer_tar({"v": b"2\n"})])
    raw_push(h, f"t/alltags{n}", "one", one)
    raw_push(h, f"t/alltags{n}", "two", two)
    root = tmp_path / "root"
    code, out, err = cli(capsys, root, "pull", "-a", "-q", f"{h}/t/alltags{n}")
    assert code == 0, err
    assert out.splitlines() == [f"{h}/t/alltags{n}:one", f"{h}/t/alltags{n}:two"]
    code, _, err = cli(capsys, root, "pull", "-a", f"{h}/t/alltags{n}:one")
    assert code == 1
    assert "tag can't be used with --all-tags/-a" in err
    from overunder.engine.images import tag

    for t in ("one", "two"):
        tag(EnginePaths.resolve(root), f"{h}/t/alltags{n}:{t}", f"{h}/t/copies{n}:{t}")
    code, out, err = cli(capsys, root, "push", "-a", "-q", f"{h}/t/copies{n}")
    assert code == 0, err
    assert out.splitlines() == [f"{h}/t/copies{n}:one", f"{h}/t/copies{n}:two"]
    from overunder.registry.client import RegistryClient

    with RegistryClient(h) as c:
        assert sorted(c.list_tags(f"t/copies{n}", page_size=1)) == ["one", "two"]
        assert c.get_manifest(f"t/copies{n}", "two").digest == two.digest
