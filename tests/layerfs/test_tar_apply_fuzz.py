"""Random hostile layers (hypothesis): whatever the entries, apply_layer either succeeds or
raises one of overunder's errors, and nothing outside the layer dir ever changes."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overunder.errors import OverunderError
from overunder.layerfs.tar_apply import apply_layer

COMPONENTS = ["a", "b", "c", "..", ".", ".wh.a", ".wh.b", ".wh..wh..opq", ".wh..", ".wh..wh.plnk"]
TARGETS = ["/", "..", "../..", "../../outside", "a", "a/b", "/outside", "OUTSIDE", "b/../.."]

names = st.builds(
    lambda lead, parts: lead + "/".join(parts),
    st.sampled_from(["", "", "", "./", "/"]),
    st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=3),
)
entry = st.tuples(
    st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE]),
    names,
    st.sampled_from([*TARGETS, "a", "b", "a/a", "c/b"]),
)


def build(entries: list[tuple[bytes, str, str]], outside: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for kind, name, target in entries:
            ti = tarfile.TarInfo(name)
            ti.type = kind
            ti.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            ti.linkname = target.replace("OUTSIDE", str(outside))
            data = b"pwned" if kind == tarfile.REGTYPE else b""
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data else None)
    return buf.getvalue()


def snapshot(top: Path, skip: Path) -> dict[str, tuple[int, bytes]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        if Path(dirpath) == skip:
            dirnames[:] = []
            continue
        for n in dirnames + filenames:
            p = Path(dirpath, n)
            if p == skip:
                continue
            s = p.lstat()
            out[str(p)] = (s.st_mode, p.read_bytes() if stat.S_ISREG(s.st_mode) else b"")
    return out


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    layers=st.lists(st.lists(entry, min_size=1, max_size=8), min_size=1, max_size=2),
    flatten=st.booleans(),
)
def test_random_layers_never_touch_anything_outside(
    layers: list[list[tuple[bytes, str, str]]], flatten: bool
) -> None:
    top = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        dest = top / "sub" / "layer"
        dest.mkdir(parents=True)
        outside = top / "outside"
        outside.mkdir()
        (outside / "sentinel").write_text("keep")
        (top / "sub" / "a").write_text("neighbour")
        before = snapshot(top, dest)
        for i, entries in enumerate(layers):
            # a second layer is applied onto the first, as a lower it plants links in
            with contextlib.suppress(OverunderError):
                apply_layer(io.BytesIO(build(entries, outside)), dest, flatten=flatten or i > 0)
        assert snapshot(top, dest) == before
    finally:
        shutil.rmtree(top)


def _valid_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (("d/", b""), ("d/f", b"x" * 700), ("l" * 120, b"long"), ("g", b"g")):
            ti = tarfile.TarInfo(name)
            if name.endswith("/"):
                ti.type = tarfile.DIRTYPE
            ti.size = len(data)
            ti.pax_headers = {"SCHILY.xattr.user.a": "1"} if name == "g" else {}
            tf.addfile(ti, io.BytesIO(data) if data else None)
    return buf.getvalue()


VALID = _valid_tar()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    flips=st.lists(
        st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=6
    ),
    cut=st.one_of(st.none(), st.integers(0, len(VALID))),
)
def test_corrupted_tars_fail_only_with_overunder_errors(
    flips: list[tuple[int, int]], cut: int | None
) -> None:
    data = bytearray(VALID)
    for pos, value in flips:
        data[pos] = value
    if cut is not None:
        del data[cut:]
    top = Path(tempfile.mkdtemp(prefix="fuzz-"))
    try:
        dest = top / "layer"
        dest.mkdir()
        with contextlib.suppress(OverunderError):
            apply_layer(io.BytesIO(bytes(data)), dest)
    finally:
        shutil.rmtree(top)
