"""The explorer verbs (layers, explain, tree, cat, cp IMAGE:PATH) on a real image store: a
three-layer image loaded with D's ``load``, layer dirs read as the engine unpacked them."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
from explore_images import BIG, CACHE, TZ_UTC, load_explore_image

from overunder.cli.main import run as cli_run
from overunder.engine import explore
from overunder.engine.paths import EnginePaths
from overunder.errors import InvalidArgument, NotFound
from overunder.explain import scan_layer
from overunder.layerfs.reader import read_layer
from overunder.semantics import Kind


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> EnginePaths:
    work = tmp_path_factory.mktemp("explore")
    paths = EnginePaths.resolve(work / "root")
    load_explore_image(paths, work)
    return paths


def cli(paths: EnginePaths, *argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli_run(["--root", str(paths.root), *argv])
    out, err = capsys.readouterr()
    return code, out, err


# -- scan: the fast reader agrees with A's reader (minus hashes and file xattrs) ------------------
def test_scan_matches_read_layer(store: EnginePaths) -> None:
    stack = explore.image_stack(store, "explore")
    for info in stack.layers:
        fast = scan_layer(info.dir).layer
        full = read_layer(info.dir, with_data=False)
        assert list(fast) == list(full)
        for path, e in full.items():
            f = fast[path]
            assert (f.kind, f.size, f.target, f.rdev, f.opaque, f.redirect) == (
                e.kind,
                e.size,
                e.target,
                e.rdev,
                e.opaque,
                e.redirect,
            ), path
            assert (f.meta.mode, f.meta.uid, f.meta.gid) == (e.meta.mode, e.meta.uid, e.meta.gid)


def test_scan_under_reads_only_the_subtree(store: EnginePaths) -> None:
    bottom = explore.image_stack(store, "explore").layers[-1]
    part = scan_layer(bottom.dir, under="data")
    assert sorted(part.layer) == ["", "data", "data/keep.txt", "data/opq", "data/opq/old.txt"]


# -- layers -----------------------------------------------------------------------------------
def test_layers_counts_and_waste_counted_once(store: EnginePaths) -> None:
    report = explore.layers(store, "explore")
    top, mid, base = report.rows
    assert [r.info.name for r in report.rows] == ["layer 3", "layer 2", "layer 1"]
    # history: the ENV entry (empty_layer) is skipped when matching steps to layers
    assert [r.info.created_by for r in report.rows] == ["layer 2", "layer 1", "layer 0"]
    assert base.hidden == len(BIG) + len(TZ_UTC) + len(b"old\n")
    assert mid.hidden == len(CACHE)
    assert top.hidden == 0
    assert mid.added == 2
    assert mid.changed == 1
    assert top.deleted == 3  # cache.tar, localtime, opq/old.txt (opaque)
    # the chmod wastes exactly one copy of big.so, not two (dive#684)
    assert report.wasted == len(BIG) + len(CACHE) + len(TZ_UTC) + len(b"old\n")
    assert report.efficiency == pytest.approx((report.total - report.wasted) / report.total)
    reasons = {w.path: (w.kind, w.cause.name, w.layer.name) for w in report.waste}
    assert reasons == {
        "/usr/lib/big.so": ("chmod", "layer 2", "layer 1"),
        "/tmp/cache.tar": ("deleted", "layer 3", "layer 2"),
        "/etc/localtime": ("deleted", "layer 3", "layer 1"),
        "/data/opq/old.txt": ("opaque", "layer 3", "layer 1"),
    }
    assert report.waste[0].reason() == "chmod re-copied /usr/lib/big.so in layer 2 (0644 -> 0755)"


def test_layers_cli_text_and_json(store: EnginePaths, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(store, "layers", "explore", capsys=capsys)
    assert code == 0
    assert out.splitlines()[0].split() == [
        "LAYER",
        "DIGEST",
        "SIZE",
        "ADDED",
        "CHANGED",
        "DELETED",
        "HIDDEN",
        "CREATED",
        "BY",
    ]
    assert "chmod re-copied /usr/lib/big.so in layer 2 (0644 -> 0755)" in out
    assert "deleted in layer 3: /tmp/cache.tar" in out
    code, out, _ = cli(store, "layers", "explore", "--format", "json", capsys=capsys)
    doc = json.loads(out)
    assert doc["WastedBytes"] == sum(w["Size"] for w in doc["Waste"])
    assert [layer["Name"] for layer in doc["Layers"]] == ["layer 3", "layer 2", "layer 1"]


def test_unknown_name(store: EnginePaths, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(store, "layers", "nosuch", capsys=capsys)
    assert code == 1
    assert "No such container or image: nosuch" in err


# -- explain ----------------------------------------------------------------------------------
def test_explain_deleted_file(store: EnginePaths) -> None:
    rep = explore.explain(store, "explore", "/etc/localtime")
    assert [(f.layer.name, f.role) for f in rep.findings] == [
        ("layer 3", "deletes"),
        ("layer 1", "hidden"),
    ]
    assert rep.shown is None
    assert "does not exist" in rep.verdict
    assert "still stored in layer 1" in rep.verdict
    assert "deleted by the whiteout in layer 3" in rep.findings[1].why


def test_explain_opaque_parent_and_replaced_file(store: EnginePaths) -> None:
    rep = explore.explain(store, "explore", "data/opq/old.txt")
    assert [(f.layer.name, f.role) for f in rep.findings] == [
        ("layer 3", "hides"),
        ("layer 1", "hidden"),
    ]
    assert "/data/opq is opaque" in rep.findings[0].why
    rep = explore.explain(store, "explore", "/usr/lib/big.so")
    assert rep.shown is not None
    assert rep.shown.name == "layer 2"
    assert [f.role for f in rep.findings] == ["shown", "hidden"]
    assert "-rwxr-xr-x" in rep.findings[0].what
    assert "-rw-r--r--" in rep.findings[1].what


def test_explain_merged_dir_and_symlink_hint(store: EnginePaths) -> None:
    rep = explore.explain(store, "explore", "/etc")
    assert [f.role for f in rep.findings] == ["shown", "merged", "merged"]
    rep = explore.explain(store, "explore", "/lib/big.so")
    assert rep.findings == []
    assert "/lib is a symlink to usr/lib" in rep.verdict
    with pytest.raises(InvalidArgument):
        explore.explain(store, "explore", "/etc/../x")


def test_explain_cli_json(store: EnginePaths, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(
        store, "explain", "explore", "/tmp/cache.tar", "--format", "json", capsys=capsys
    )
    doc = json.loads(out)
    assert code == 0
    assert doc["ShownFrom"] is None
    assert [x["Role"] for x in doc["Layers"]] == ["deletes", "hidden"]


# -- tree ---------------------------------------------------------------------------------------
def test_tree_marks_sources_whiteouts_and_opaque(
    store: EnginePaths, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(store, "tree", "explore", capsys=capsys)
    assert code == 0
    lines = {
        line.split()[1] if line.split()[0] in "├└│" else line.split()[0]: line
        for line in out.splitlines()
        if line.strip()
    }
    assert any(
        "big.so" in line and "layer 2; hides /usr/lib/big.so (layer 1)" in line
        for line in out.splitlines()
    )
    assert any(
        "localtime (whiteout)" in line and "hides /etc/localtime (layer 1)" in line
        for line in out.splitlines()
    )
    assert any("opq/" in line and "opaque dir in layer 3" in line for line in out.splitlines())
    assert lines  # drawn


def test_tree_of_a_subdir_and_json(store: EnginePaths) -> None:
    view = explore.tree(store, "explore", "/data")
    paths = [e.path for e in view.entries]
    assert paths == ["/", "/data", "/data/keep.txt", "/data/opq", "/data/opq/new.txt"]
    entries = view.to_dict()["Entries"]
    assert isinstance(entries, list)
    assert entries[3]["Opaque"]["Layer"] == "layer 3"
    with pytest.raises(NotFound):
        explore.tree(store, "explore", "/etc/localtime")


# -- cat / cp ---------------------------------------------------------------------------------
def test_cat_follows_symlinks_inside_the_image(store: EnginePaths) -> None:
    out = io.BytesIO()
    explore.cat(store, "explore", "/etc/motd", out)  # absolute link -> /etc/os-release
    assert out.getvalue() == b"NAME=explore\n"
    out = io.BytesIO()
    explore.cat(store, "explore", "lib/big.so", out)  # relative dir link, across layers
    assert out.getvalue() == BIG
    with pytest.raises(NotFound, match="/etc/localtime"):
        explore.cat(store, "explore", "/etc/localtime", io.BytesIO())
    with pytest.raises(InvalidArgument, match="not a regular file"):
        explore.cat(store, "explore", "/etc", io.BytesIO())


def test_cat_cli(store: EnginePaths, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(store, "cat", "explore", "/etc/os-release", capsys=capsys)
    assert code == 0
    assert out == "NAME=explore\n"


def test_copy_dir_and_file_out_of_an_image(store: EnginePaths, tmp_path: Path) -> None:
    explore.copy_from_image(store, "explore", "/data", str(tmp_path))
    got = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert got == ["data", "data/keep.txt", "data/opq", "data/opq/new.txt"]  # old.txt hidden
    explore.copy_from_image(store, "explore", "/usr/lib/big.so", str(tmp_path / "big"))
    assert (tmp_path / "big").read_bytes() == BIG
    assert os.stat(tmp_path / "big").st_mode & 0o777 == 0o755
    buf = io.BytesIO()
    explore.copy_from_image(store, "explore", "/etc/motd", "-", stdout=buf, follow=True)
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        member = tf.getmember("motd")
        f = tf.extractfile(member)
        assert f is not None
        assert f.read() == b"NAME=explore\n"
    with pytest.raises(NotFound, match="Could not find the file /nope in image explore"):
        explore.copy_from_image(store, "explore", "/nope", str(tmp_path))


def test_whiteout_kinds_in_scan(store: EnginePaths) -> None:
    top = explore.image_stack(store, "explore").layers[0]
    scanned = scan_layer(top.dir)
    assert scanned.layer["etc/localtime"].kind is Kind.WHITEOUT
    assert scanned.layer["data/opq"].opaque
    expected = "char 0/0" if os.geteuid() == 0 else ".wh. file"
    assert scanned.whiteout_forms["etc/localtime"] == expected


def test_cp_cli_takes_an_image_source(
    store: EnginePaths, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(store, "cp", "explore:latest:/data/.", str(tmp_path), capsys=capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt", "opq"]
    code, _, err = cli(store, "cp", "explore:/etc/os-release", str(tmp_path / "r"), capsys=capsys)
    assert code == 0, err
    assert (tmp_path / "r").read_bytes() == b"NAME=explore\n"
    code, _, err = cli(store, "cp", "nosuch:/x", str(tmp_path), capsys=capsys)
    assert code == 1
    assert "No such container: nosuch" in err


def test_scan_without_meta_agrees_on_kinds(store: EnginePaths) -> None:
    for info in explore.image_stack(store, "explore").layers:
        full = scan_layer(info.dir)
        light = scan_layer(info.dir, meta=False)
        assert list(light.layer) == list(full.layer)
        assert light.whiteout_forms == full.whiteout_forms
        for path, e in full.layer.items():
            f = light.layer[path]
            assert (f.kind, f.target, f.opaque) == (e.kind, e.target, e.opaque), path
