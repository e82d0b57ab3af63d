"""Layer dirs by chain ID and active snapshots for containers (containerd's snapshotter model).

Layout under ``root`` (``<engine root>/snapshots``)::

    metadata.json              key -> SnapshotInfo (see metadata.py)
    <id>/fs                    a layer's files (committed) or a container's upper dir (active)
    <id>/work                  overlay work dir of an active snapshot
    locks/<hash of key>        flock'ed while a process creates that snapshot

``<id>`` is 10 hex characters so that a long ``lowerdir=`` list stays short (the kernel reads
mount options from one 4 KiB page; with a root like ``/var/lib/overunder`` each layer costs
about 50 bytes, so some 75 layers fit; B's mounter handles longer lists).

**Crash safety.** A layer is recorded as ``unpacking`` *before* its dir is made and becomes
``committed`` only after the whole tar is applied and its diff ID checked; readers treat only
``committed`` layers as present. The per-key flock tells a live unpack from a dead one:
:meth:`Snapshotter.cleanup` removes ``unpacking`` records whose lock it can take, and dirs that
no record names (metadata goes first, dirs after, when removing). A process killed at any
moment therefore leaves nothing that claims to be complete.

Gaps: no fsync of the unpacked files (a power cut right after a load may leave a committed
layer with lost data; a SIGKILL cannot); no ``l/`` short-link dir like overlay2.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from overunder.errors import AlreadyExists, FailedPrecondition, IntegrityError, NotFound
from overunder.snapshots.metadata import Kind, MetadataFile, SnapshotInfo, ensure_private_dir

if TYPE_CHECKING:
    # Imported lazily at run time: the mount package is heavy and `images` never mounts.
    from overunder.mount.types import Mount

__all__ = ["AppliedLayer", "Snapshotter", "Usage", "dir_size"]

DRIVERS = ("overlay", "fuse.overunder")


class AppliedLayer(Protocol):
    """What an apply callback returns (E's ``ApplyResult`` fits)."""

    @property
    def diff_id(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Usage:
    size: int
    inodes: int


def dir_size(path: Path) -> Usage:
    """Bytes of regular files and symlinks (hard links once) and the number of inodes, like
    Docker's layer size."""
    seen: set[tuple[int, int]] = set()
    size = 0
    inodes = 0
    stack = [str(path)]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except FileNotFoundError:
            continue
        with it:
            for e in it:
                st = e.stat(follow_symlinks=False)
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                inodes += 1
                if st.st_nlink > 1:
                    seen.add(key)
                if stat.S_ISDIR(st.st_mode):
                    stack.append(e.path)
                else:
                    size += st.st_size
    return Usage(size=size, inodes=inodes)


class Snapshotter:
    """See the module docstring."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.meta = MetadataFile(self.root)

    # -- paths ---------------------------------------------------------------------------
    def _dir(self, info: SnapshotInfo) -> Path:
        return self.root / info.id

    def _info(self, key: str) -> SnapshotInfo:
        info = self.meta.read().get(key)
        if info is None or info.kind == Kind.UNPACKING:
            raise NotFound(
                f"no snapshot {key!r} in {self.root}", hint="load or pull the image again"
            )
        return info

    def exists(self, key: str) -> bool:
        info = self.meta.read().get(key)
        return info is not None and info.kind != Kind.UNPACKING

    def layer_dir(self, chain_id: str) -> Path:
        """The ``fs`` dir of a committed layer (NotFound when not unpacked)."""
        info = self._info(chain_id)
        if info.kind != Kind.COMMITTED:
            raise NotFound(f"snapshot {chain_id!r} is not a committed layer")
        return self._dir(info) / "fs"

    def info(self, key: str) -> SnapshotInfo:
        return self._info(key)

    def snapshots(self) -> dict[str, SnapshotInfo]:
        """Every complete snapshot by key."""
        return {k: v for k, v in self.meta.read().items() if v.kind != Kind.UNPACKING}

    # -- locking -------------------------------------------------------------------------
    def _lock_path(self, key: str) -> Path:
        return self.root / "locks" / hashlib.sha256(key.encode()).hexdigest()[:32]

    @contextlib.contextmanager
    def _key_lock(self, key: str, *, blocking: bool = True) -> Iterator[bool]:
        path = self._lock_path(key)
        ensure_private_dir(self.root)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)

    def _new_id(self, snaps: dict[str, SnapshotInfo]) -> str:
        used = {s.id for s in snaps.values()}
        while True:
            sid = secrets.token_hex(5)
            if sid not in used and not (self.root / sid).exists():
                return sid

    # -- layers --------------------------------------------------------------------------
    def ensure_layer(
        self,
        chain_id: str,
        parent: str | None,
        apply: Callable[[Path], AppliedLayer],
        *,
        diff_id: str | None = None,
    ) -> Path:
        """The layer's dir, unpacking it with ``apply(fs_dir)`` unless some process already
        did. Concurrent callers for one chain ID wait for each other; the layer is applied once.

        ``diff_id`` (from the image config) is checked against what ``apply`` returns:
        IntegrityError and nothing recorded on mismatch. ``parent`` is only recorded, not
        required to exist yet: the layers of one image unpack in parallel, and a layer whose
        parent never completes is harmless (no image record names it; the next unpack of
        that image finds it done)."""
        existing = self.meta.read().get(chain_id)
        if existing is not None and existing.kind == Kind.COMMITTED:
            return self._dir(existing) / "fs"
        with self._key_lock(chain_id):
            with self.meta.update() as snaps:
                info = snaps.get(chain_id)
                if info is not None and info.kind == Kind.COMMITTED:
                    return self._dir(info) / "fs"
                stale = info  # UNPACKING with a free lock: a dead process's leftover
                sid = self._new_id(snaps)
                snaps[chain_id] = SnapshotInfo(
                    key=chain_id, id=sid, kind=Kind.UNPACKING, parent=parent, created=time.time()
                )
            if stale is not None:
                shutil.rmtree(self._dir(stale), ignore_errors=True)
            d = self.root / sid
            fs = d / "fs"
            try:
                fs.mkdir(parents=True)
                result = apply(fs)
                if diff_id is not None and result.diff_id != diff_id:
                    raise IntegrityError(
                        f"layer diff ID mismatch: the config says {diff_id}, "
                        f"the layer tar hashes to {result.diff_id}",
                        hint="the image is corrupt; nothing was kept of this layer",
                    )
                usage = dir_size(fs)
            except BaseException:
                with self.meta.update() as snaps:
                    if snaps.get(chain_id) is not None and snaps[chain_id].id == sid:
                        del snaps[chain_id]
                _rmtree(d)
                raise
            with self.meta.update() as snaps:
                snaps[chain_id] = SnapshotInfo(
                    key=chain_id,
                    id=sid,
                    kind=Kind.COMMITTED,
                    parent=parent,
                    diff_id=result.diff_id,
                    size=usage.size,
                    created=time.time(),
                )
            return fs

    def lower_dirs(self, key: str) -> list[Path]:
        """The ``fs`` dirs a snapshot stacks on, top first (its own dir excluded for active
        snapshots, included for committed ones)."""
        snaps = self.meta.read()
        info = snaps.get(key)
        if info is None or info.kind == Kind.UNPACKING:
            raise NotFound(f"no snapshot {key!r} in {self.root}")
        out: list[Path] = []
        cur: SnapshotInfo | None = info if info.kind == Kind.COMMITTED else None
        if cur is None and info.parent is not None:
            cur = snaps.get(info.parent)
            if cur is None:
                raise NotFound(f"parent snapshot {info.parent!r} of {key!r} is missing")
        while cur is not None:
            out.append(self._dir(cur) / "fs")
            if cur.parent is None:
                break
            nxt = snaps.get(cur.parent)
            if nxt is None:
                raise NotFound(f"parent snapshot {cur.parent!r} of {cur.key!r} is missing")
            cur = nxt
        return out

    # -- active snapshots (containers) ---------------------------------------------------
    def prepare(self, key: str, parent: str | None, *, driver: str = "overlay") -> list[Mount]:
        """A writable snapshot ``key`` on ``parent`` (a committed layer's chain ID): its own
        upper (``fs``) and ``work`` dirs. Returns the mounts that assemble it."""
        _check_driver(driver)
        if parent is not None:
            self.layer_dir(parent)
        with self._key_lock(key), self.meta.update() as snaps:
            if key in snaps:
                raise AlreadyExists(f"snapshot {key!r} already exists")
            sid = self._new_id(snaps)
            (self.root / sid / "fs").mkdir(parents=True)
            (self.root / sid / "work").mkdir()
            snaps[key] = SnapshotInfo(
                key=key, id=sid, kind=Kind.ACTIVE, parent=parent, created=time.time()
            )
        return self.mounts(key, driver=driver)

    def view(self, key: str, parent: str, *, driver: str = "overlay") -> list[Mount]:
        """A read-only snapshot of ``parent`` (no upper dir)."""
        _check_driver(driver)
        self.layer_dir(parent)
        with self.meta.update() as snaps:
            if key in snaps:
                raise AlreadyExists(f"snapshot {key!r} already exists")
            sid = self._new_id(snaps)
            (self.root / sid).mkdir(parents=True)
            snaps[key] = SnapshotInfo(
                key=key, id=sid, kind=Kind.VIEW, parent=parent, created=time.time()
            )
        return self.mounts(key, driver=driver)

    def mounts(self, key: str, *, driver: str = "overlay") -> list[Mount]:
        from overunder.mount.types import Mount

        _check_driver(driver)
        info = self._info(key)
        lowers = self.lower_dirs(key)
        source = "overlay" if driver == "overlay" else "overunder"
        if info.kind == Kind.ACTIVE:
            upper = self._dir(info) / "fs"
            if not lowers:
                return [Mount(type="bind", source=str(upper), options=("rw", "rbind"))]
            return [
                Mount(
                    type=driver,
                    source=source,
                    options=(
                        "lowerdir=" + ":".join(_escape(p) for p in lowers),
                        f"upperdir={_escape(upper)}",
                        f"workdir={_escape(self._dir(info) / 'work')}",
                    ),
                )
            ]
        # committed or view: read-only
        if len(lowers) == 1:
            return [Mount(type="bind", source=str(lowers[0]), options=("ro", "rbind"))]
        return [
            Mount(
                type=driver,
                source=source,
                options=("lowerdir=" + ":".join(_escape(p) for p in lowers),),
            )
        ]

    def upper_dir(self, key: str) -> Path:
        info = self._info(key)
        if info.kind != Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key!r} is not active; it has no upper dir")
        return self._dir(info) / "fs"

    def work_dir(self, key: str) -> Path:
        info = self._info(key)
        if info.kind != Kind.ACTIVE:
            raise FailedPrecondition(f"snapshot {key!r} is not active; it has no work dir")
        return self._dir(info) / "work"

    def commit(self, name: str, key: str, *, diff_id: str | None = None) -> None:
        """Turn active snapshot ``key`` into the committed layer ``name`` (a chain ID)."""
        with self.meta.update() as snaps:
            info = snaps.get(key)
            if info is None or info.kind != Kind.ACTIVE:
                raise NotFound(f"no active snapshot {key!r}")
            if name in snaps:
                raise AlreadyExists(f"snapshot {name!r} already exists")
            del snaps[key]
            snaps[name] = SnapshotInfo(
                key=name,
                id=info.id,
                kind=Kind.COMMITTED,
                parent=info.parent,
                diff_id=diff_id,
                size=dir_size(self._dir(info) / "fs").size,
                created=time.time(),
            )
        _rmtree(self._dir(info) / "work")

    def usage(self, key: str) -> Usage:
        info = self._info(key)
        return dir_size(self._dir(info) / "fs")

    def remove(self, key: str) -> None:
        """Forget a snapshot and delete its dirs (metadata first). FailedPrecondition when
        another snapshot stacks on it."""
        with self.meta.update() as snaps:
            info = snaps.get(key)
            if info is None:
                raise NotFound(f"no snapshot {key!r} in {self.root}")
            children = sorted(k for k, v in snaps.items() if v.parent == key)
            if children:
                raise FailedPrecondition(
                    f"snapshot {key!r} is the parent of {len(children)} other snapshot(s)",
                    hint="remove the images or containers that use it first",
                )
            del snaps[key]
        _rmtree(self._dir(info))

    def cleanup(self) -> list[Path]:
        """Remove what killed processes left: ``unpacking`` records nobody is working on,
        and dirs no record names. Returns the removed dirs."""
        removed: list[Path] = []
        snaps = self.meta.read()
        for key, info in snaps.items():
            if info.kind != Kind.UNPACKING:
                continue
            with self._key_lock(key, blocking=False) as got:
                if not got:
                    continue
                with self.meta.update() as cur:
                    now = cur.get(key)
                    if now is None or now.kind != Kind.UNPACKING:
                        continue
                    del cur[key]
                _rmtree(self._dir(info))
                removed.append(self._dir(info))
        known = {s.id for s in self.meta.read().values()}
        try:
            entries = list(self.root.iterdir())
        except FileNotFoundError:
            return removed
        for entry in entries:
            if len(entry.name) == 10 and entry.is_dir() and entry.name not in known:
                # Recheck under the metadata lock: a concurrent ensure_layer records first.
                with self.meta.update() as cur:
                    if entry.name in {s.id for s in cur.values()}:
                        continue
                _rmtree(entry)
                removed.append(entry)
        return removed


def _check_driver(driver: str) -> None:
    if driver not in DRIVERS:
        from overunder.errors import InvalidArgument

        raise InvalidArgument(
            f"unknown snapshot driver {driver!r}", hint=f"use one of {', '.join(DRIVERS)}"
        )


def _escape(p: Path) -> str:
    # The kernel splits lowerdir on ':' and options on ','; escape both like mount(8) users do.
    return str(p).replace("\\", "\\\\").replace(":", "\\:").replace(",", "\\,")


def _rmtree(path: Path) -> None:
    """Remove a tree even where a layer made dirs read-only (mode 0555 dirs are common)."""

    def onerror(
        func: Callable[..., object], p: str, exc: tuple[type[BaseException], BaseException, object]
    ) -> None:
        err = exc[1]
        if isinstance(err, FileNotFoundError):
            return
        if isinstance(err, OSError) and err.errno in (errno.EACCES, errno.EPERM):
            with contextlib.suppress(OSError):
                os.chmod(os.path.dirname(p), 0o700)
            with contextlib.suppress(FileNotFoundError):
                func(p)
            return
        raise err

    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    if path.exists():
        shutil.rmtree(path, onerror=onerror)
