"""Blobs by digest, like containerd's content store.

Layout under ``root`` (``<engine root>/content``)::

    blobs/sha256/<hex>          committed, verified blobs (read-only mode 0444)
    ingest/<name>/data          bytes being written
    ingest/<name>/ref           the caller's ref (names are a hash of it, refs may hold '/')
    ingest/<name>/lock          flock'ed while a writer is live

A writer streams into ``ingest/<name>/data`` while hashing, and ``commit()`` fsyncs, checks
digest and size, and renames the file into ``blobs/``: a blob path exists only for complete,
verified content. A writer opened with a ``ref`` is resumable: a later writer with the same ref
continues at ``offset`` (the bytes already there are re-hashed). Anonymous writers are removed
on abort and by :meth:`ContentStore.cleanup_ingests` once nobody holds their lock.

Gaps: only sha256; no garbage collection of unreferenced blobs here (the image store decides
what is referenced and calls :meth:`ContentStore.delete`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from overunder.content.digest import digest_hex, validate_digest
from overunder.errors import FailedPrecondition, IntegrityError, NotFound

__all__ = ["ContentStore", "ContentWriter", "fsync_dir"]

_ANON_PREFIX = "anon-"
# Named (resumable) ingests untouched for this long are considered abandoned.
DEFAULT_STALE_SECONDS = 24 * 3600.0


def fsync_dir(path: Path) -> None:
    """fsync a directory so that a rename into it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ContentWriter:
    """One ingest in progress. Use as a context manager; leaving it without ``commit()``
    aborts an anonymous ingest and keeps a named one for resuming."""

    def __init__(
        self,
        store: ContentStore,
        directory: Path,
        *,
        ref: str | None,
        expected_digest: str | None,
        expected_size: int | None,
    ) -> None:
        self._store = store
        self._dir = directory
        self.ref = ref
        self.expected_digest = expected_digest
        self.expected_size = expected_size
        self._hash = hashlib.sha256()
        self._closed = False
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            os.close(self._lock_fd)
            raise FailedPrecondition(
                f"content ingest {ref!r} is being written by another process",
                hint="wait for the other command to finish, or use another ref",
            ) from err
        if ref is not None and not (directory / "ref").exists():
            _write_small(directory / "ref", ref.encode())
        self._fd = os.open(directory / "data", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        # Resume: re-hash what is there, then append.
        self.offset = 0
        while chunk := os.read(self._fd, 1 << 20):
            self._hash.update(chunk)
            self.offset += len(chunk)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise FailedPrecondition("write to a closed content writer", hint="open a new writer")
        view = memoryview(data)
        total = len(view)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        self._hash.update(data)
        self.offset += total
        if self.expected_size is not None and self.offset > self.expected_size:
            size = self.offset
            self.abort()
            raise IntegrityError(
                f"content for {self.expected_digest or self.ref or 'blob'} is larger than "
                f"its declared size {self.expected_size} (got at least {size} bytes)",
                hint="the source is corrupt or the descriptor is wrong; nothing was stored",
            )
        return total

    def digest(self) -> str:
        """The digest of everything written so far."""
        return "sha256:" + self._hash.hexdigest()

    def commit(self) -> str:
        """Verify and move the content into ``blobs/``; returns its digest.

        IntegrityError (and the ingest is removed) when the digest or size is not the one
        expected."""
        if self._closed:
            raise FailedPrecondition("commit of a closed content writer", hint="open a new writer")
        digest = self.digest()
        size = self.offset
        what = self.expected_digest or self.ref or digest
        if self.expected_size is not None and size != self.expected_size:
            self.abort()
            raise IntegrityError(
                f"size mismatch for {what}: expected {self.expected_size} bytes, got {size}",
                hint="the source is truncated or corrupt; nothing was stored",
            )
        if self.expected_digest is not None and digest != self.expected_digest:
            self.abort()
            raise IntegrityError(
                f"digest mismatch: expected {self.expected_digest}, got {digest}",
                hint="the source is corrupt or was modified; nothing was stored",
            )
        os.fsync(self._fd)
        os.fchmod(self._fd, 0o444)
        target = self._store.path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            self._discard()
        else:
            os.rename(self._dir / "data", target)
            fsync_dir(target.parent)
            self._discard()
        return digest

    def abort(self) -> None:
        """Drop what was written (also for a named ingest)."""
        if not self._closed:
            self._discard()

    def close(self) -> None:
        """Release the ingest without committing; a named ingest stays for resuming."""
        if self._closed:
            return
        if self.ref is None:
            self._discard()
            return
        with contextlib.suppress(OSError):
            os.fsync(self._fd)
        self._release()

    def _release(self) -> None:
        self._closed = True
        os.close(self._fd)
        os.close(self._lock_fd)

    def _discard(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)
        self._release()

    def __enter__(self) -> ContentWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ContentStore:
    """Blobs under ``root/blobs/sha256``; see the module docstring for the layout."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.ingest = self.root / "ingest"

    def path(self, digest: str) -> Path:
        """Where the blob lives (whether or not it exists)."""
        return self.blobs / digest_hex(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def open(self, digest: str) -> BinaryIO:
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError as err:
            raise NotFound(
                f"blob {digest} is not in the content store {self.root}",
                hint="pull or load the image again",
            ) from err

    def read(self, digest: str) -> bytes:
        with self.open(digest) as f:
            return f.read()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError as err:
            raise NotFound(
                f"blob {digest} is not in the content store {self.root}",
                hint="pull or load the image again",
            ) from err

    def writer(
        self,
        *,
        ref: str | None = None,
        expected_digest: str | None = None,
        expected_size: int | None = None,
    ) -> ContentWriter:
        """A writer for one blob. ``ref`` makes the ingest resumable (see the module doc)."""
        if expected_digest is not None:
            validate_digest(expected_digest)
        if ref is None:
            name = _ANON_PREFIX + uuid.uuid4().hex
        else:
            name = "ref-" + hashlib.sha256(ref.encode()).hexdigest()[:32]
        return ContentWriter(
            self,
            self.ingest / name,
            ref=ref,
            expected_digest=expected_digest,
            expected_size=expected_size,
        )

    def put(self, data: bytes, *, expected_digest: str | None = None) -> str:
        """Store ``data``; returns its digest (IntegrityError when it is not ``expected``)."""
        if expected_digest is not None and self.has(expected_digest):
            if hashlib.sha256(data).hexdigest() != digest_hex(expected_digest):
                raise IntegrityError(
                    f"digest mismatch: expected {expected_digest}",
                    hint="the data is corrupt; nothing was stored",
                )
            return expected_digest
        with self.writer(expected_digest=expected_digest, expected_size=None) as w:
            w.write(data)
            return w.commit()

    def delete(self, digest: str) -> None:
        """Remove a blob; NotFound when it is not there."""
        try:
            self.path(digest).unlink()
        except FileNotFoundError as err:
            raise NotFound(f"blob {digest} is not in the content store {self.root}") from err

    def digests(self) -> Iterator[str]:
        """Every committed blob's digest (order unspecified)."""
        try:
            names = os.listdir(self.blobs)
        except FileNotFoundError:
            return
        for name in names:
            if len(name) == 64:
                yield "sha256:" + name

    def ingests(self) -> list[Path]:
        try:
            return sorted(self.ingest.iterdir())
        except FileNotFoundError:
            return []

    def cleanup_ingests(self, *, stale_seconds: float = DEFAULT_STALE_SECONDS) -> list[Path]:
        """Remove ingests nobody is writing: every anonymous one (a crashed or killed
        command's leftovers), and named ones untouched for ``stale_seconds``. Returns what was
        removed."""
        removed: list[Path] = []
        now = time.time()
        for d in self.ingests():
            lock = d / "lock"
            try:
                fd = os.open(lock, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                fd = -1
            except OSError as err:
                if err.errno != errno.ENOTDIR:
                    raise
                continue
            try:
                if fd >= 0:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # a live writer
                if not d.name.startswith(_ANON_PREFIX):
                    try:
                        age = now - (d / "data").stat().st_mtime
                    except FileNotFoundError:
                        age = now - d.stat().st_mtime
                    if age < stale_seconds:
                        continue
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
            finally:
                if fd >= 0:
                    os.close(fd)
        return removed


def _write_small(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
