from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from overunder.content import ContentStore, validate_digest
from overunder.errors import FailedPrecondition, IntegrityError, InvalidArgument, NotFound


def _d(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_put_read_and_layout(tmp_path: Path) -> None:
    cs = ContentStore(tmp_path / "content")
    d = cs.put(b"hello")
    assert d == _d(b"hello")
    assert cs.has(d)
    assert cs.read(d) == b"hello"
    assert cs.size(d) == 5
    assert cs.path(d) == tmp_path / "content/blobs/sha256" / d[7:]
    assert list(cs.digests()) == [d]
    assert cs.ingests() == []


def test_writer_verifies_digest_and_stores_nothing_on_mismatch(tmp_path: Path) -> None:
    cs = ContentStore(tmp_path)
    with cs.writer(expected_digest=_d(b"abc")) as w:
        w.write(b"abd")
        with pytest.raises(IntegrityError, match="digest mismatch"):
            w.commit()
    assert list(cs.digests()) == []
    assert cs.ingests() == []


def test_writer_verifies_size(tmp_path: Path) -> None:
    cs = ContentStore(tmp_path)
    with pytest.raises(IntegrityError, match="size"), cs.writer(expected_size=2) as w:
        w.write(b"abc")
    with cs.writer(expected_size=4) as w:
        w.write(b"abc")
        with pytest.raises(IntegrityError, match="size"):
            w.commit()
    assert list(cs.digests()) == []


def test_resume_named_ingest(tmp_path: Path) -> None:
    cs = ContentStore(tmp_path)
    data = os.urandom(3 << 20)
    with cs.writer(ref="pull/layer-1", expected_digest=_d(data)) as w:
        assert w.offset == 0
        w.write(data[:1000000])
    # A new writer with the same ref continues where the first stopped.
    with cs.writer(ref="pull/layer-1", expected_digest=_d(data)) as w:
        assert w.offset == 1000000
        w.write(data[w.offset :])
        assert w.commit() == _d(data)
    assert cs.read(_d(data)) == data
    assert cs.ingests() == []


def test_concurrent_writer_on_same_ref_refused(tmp_path: Path) -> None:
    cs = ContentStore(tmp_path)
    with cs.writer(ref="x"), pytest.raises(FailedPrecondition, match="another process"):
        cs.writer(ref="x")


def test_anonymous_ingest_removed_on_exit(tmp_path: Path) -> None:
    cs = ContentStore(tmp_path)
    with cs.writer() as w:
        w.write(b"partial")
    assert cs.ingests() == []


def test_cleanup_removes_stale_but_not_live(tmp_path: Path) -> None:
    cs = ContentStore(tmp_path)
    # Simulate a killed anonymous writer: dir with data, nobody holds the lock.
    dead = cs.ingest / "anon-dead"
    dead.mkdir(parents=True)
    (dead / "data").write_bytes(b"x")
    (dead / "lock").touch()
    named = cs.writer(ref="keep")
    named.write(b"y")
    named.close()
    live = cs.writer()
    removed = cs.cleanup_ingests()
    assert removed == [dead]
    assert len(cs.ingests()) == 2  # the live anonymous one and the recent named one
    assert len(cs.cleanup_ingests(stale_seconds=0)) == 1
    live.abort()


def test_bad_digests_refused(tmp_path: Path) -> None:
    cs = ContentStore(tmp_path)
    for bad in ["sha256:../../etc", "sha256:" + "A" * 64, "md5:" + "a" * 32, ""]:
        with pytest.raises(InvalidArgument):
            cs.path(bad)
    with pytest.raises(InvalidArgument):
        validate_digest("sha256:" + "0" * 63)
    with pytest.raises(NotFound):
        cs.read("sha256:" + "0" * 64)


def test_put_existing_is_idempotent(tmp_path: Path) -> None:
    cs = ContentStore(tmp_path)
    d = cs.put(b"x")
    assert cs.put(b"x", expected_digest=d) == d
    with pytest.raises(IntegrityError):
        cs.put(b"y", expected_digest=d)
