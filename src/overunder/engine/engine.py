"""``overunder.Engine``: the Python API for scripting layered sandboxes.

A thin facade over the engine modules the CLI uses (``images``, ``image_load``, ``pull``,
``containers``, ``container_diff``, ``container_cp``, ``container_commit``,
``container_mount``, ``explore``): the same stores, the same rules, the same errors
(:mod:`overunder.errors`, with the messages and hints the CLI prints). Results are typed
objects instead of text::

    from overunder import Engine

    eng = Engine(root="/tmp/sandbox-store")            # a private store; default: the CLI's
    eng.import_("rootfs.tar", "busybox:latest")        # or eng.pull(...), eng.load(...)
    with eng.run("busybox", ["sleep", "600"]) as box:  # removed (forcibly) when the block ends
        box.exec(["sh", "-c", "echo hi > /greeting"])
        for change in box.diff():                      # [Change(kind=A, path='/greeting')]
            print(change)
        image = box.commit("busybox:with-greeting")    # keep the changes as an image

Gaps: ``exec`` runs ``overunder exec`` in a child process to capture the command's output
(the runtime hands the process our own stdout otherwise), so each call costs an interpreter
start; containers run detached (no attached terminal); ``logs`` returns what the json-file log
holds.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO

from overunder.engine.paths import EnginePaths
from overunder.errors import FailedPrecondition, InvalidArgument, NotFound, OverunderError
from overunder.semantics import Change, ChangeKind

if TYPE_CHECKING:
    from overunder.engine.container_record import ContainerRecord
    from overunder.explain import LayersReport, PathReport
    from overunder.image.store import ImageRecord

__all__ = ["Change", "ChangeKind", "Container", "Engine", "ExecResult", "Image"]


@dataclass(frozen=True, slots=True)
class Image:
    """An image in the store: ``id`` is ``sha256:<hex>`` (its config digest)."""

    id: str
    tags: tuple[str, ...] = ()
    digests: tuple[str, ...] = ()

    @property
    def short_id(self) -> str:
        return self.id.removeprefix("sha256:")[:12]

    def __str__(self) -> str:
        return self.tags[0] if self.tags else self.short_id


@dataclass(frozen=True, slots=True)
class ExecResult:
    """What a command run with :meth:`Container.exec` did."""

    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def text(self) -> str:
        """stdout decoded (UTF-8, undecodable bytes replaced)."""
        return self.stdout.decode("utf-8", "replace")


@dataclass
class Container:
    """A container of an :class:`Engine`. Its state is read fresh on every access (another
    process may stop or remove it). As a context manager it is removed (``rm -f``) when the
    block ends, however it ends: a throwaway sandbox."""

    engine: Engine
    id: str
    name: str
    image: str = ""
    _removed: bool = field(default=False, repr=False)

    # -- state ---------------------------------------------------------------------------
    def _record(self) -> ContainerRecord:
        from overunder.engine.containers import find_container, reconcile

        return reconcile(self.engine.paths, find_container(self.engine.paths, self.id))

    @property
    def status(self) -> str:
        """``created``, ``running``, ``exited`` … (Docker's words)."""
        return str(self._record().state.status)

    @property
    def exit_code(self) -> int:
        return self._record().state.exit_code

    def inspect(self) -> dict[str, Any]:
        """``docker inspect`` for this container (GraphDriver included)."""
        from overunder.engine.containers import inspect_container

        return inspect_container(self.engine.paths, self._record())

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> Container:
        from overunder.engine.containers import start_container

        _, handle = start_container(self.engine.paths, self.id)
        if handle is not None:
            handle.close()
        return self

    def stop(self, *, timeout: float | None = None) -> Container:
        from overunder.engine.containers import stop_container

        stop_container(self.engine.paths, self.id, timeout=timeout)
        return self

    def kill(self, signal: str = "KILL") -> Container:
        from overunder.engine.containers import kill_container

        kill_container(self.engine.paths, self.id, signal=signal)
        return self

    def wait(self) -> int:
        """Block until the container's main process ends; its exit code."""
        from overunder.engine.containers import wait_container

        return wait_container(self.engine.paths, self.id)

    def remove(self, *, force: bool = False) -> None:
        from overunder.engine.containers import remove_container

        remove_container(self.engine.paths, self.id, force=force)
        self._removed = True

    def logs(self) -> str:
        """Everything the container wrote to stdout and stderr so far, in order."""
        from overunder.engine.containers import log_path
        from overunder.runtime.logs import read_log

        entries, _ = read_log(log_path(self.engine.paths, self._record()))
        return "".join(e.text for e in entries)

    # -- the layered part ----------------------------------------------------------------
    def exec(
        self,
        command: Sequence[str],
        *,
        env: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,
    ) -> ExecResult:
        return self.engine.exec(self.id, command, env=env, workdir=workdir, user=user)

    def diff(self) -> list[Change]:
        return self.engine.diff(self.id)

    def copy_in(self, src: str | os.PathLike[str], dest: str) -> None:
        """``cp SRC CONTAINER:DEST``."""
        self.engine.cp(os.fspath(src), f"{self.id}:{dest}")

    def copy_out(self, src: str, dest: str | os.PathLike[str]) -> None:
        """``cp CONTAINER:SRC DEST``."""
        self.engine.cp(f"{self.id}:{src}", os.fspath(dest))

    def commit(self, reference: str | None = None, *, message: str = "") -> Image:
        return self.engine.commit(self.id, reference, message=message)

    def mount(self) -> Path:
        return self.engine.mount(self.id)

    def umount(self) -> None:
        self.engine.umount(self.id)

    def __enter__(self) -> Container:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._removed:
            # NotFound: removed by someone else meanwhile; nothing left to clean
            with contextlib.suppress(NotFound):
                self.remove(force=True)


class Engine:
    """The engine over one store. ``root``/``run_root`` as the CLI's ``--root``/``--run-root``
    (defaults: ``OVERUNDER_ROOT``, then ``/var/lib/overunder`` for root)."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        run_root: str | os.PathLike[str] | None = None,
    ) -> None:
        self.paths = EnginePaths.resolve(root, run_root)

    def __repr__(self) -> str:
        return f"Engine(root={str(self.paths.root)!r}, run_root={str(self.paths.run_root)!r})"

    # -- images ---------------------------------------------------------------------------
    def image(self, name: str) -> Image:
        """The image ``name`` (a reference or an id prefix). NotFound ``No such image: X``."""
        from overunder.engine.images import stores

        rec = stores(self.paths).images.resolve(name)
        return _image_of(rec)

    def images(self) -> list[Image]:
        from overunder.engine.images import stores

        return [_image_of(rec) for rec in stores(self.paths).images.list()]

    def pull(
        self, name: str, *, platform: str | None = None, insecure: Iterable[str] = ()
    ) -> Image:
        """``docker pull``. Registries on 127.0.0.1 are spoken to over plain HTTP."""
        from overunder.engine.pull import pull

        result = pull(self.paths, name, platform=platform, insecure=insecure)
        return self.image(result.image_id)

    def push(self, name: str, *, insecure: Iterable[str] = ()) -> str:
        """``docker push``; the pushed manifest's digest."""
        from overunder.engine.push import push

        return push(self.paths, name, insecure=insecure).digest

    def load(self, source: str | os.PathLike[str] | BinaryIO) -> list[Image]:
        """``docker load`` from a ``docker save`` tarball or OCI layout (path or stream)."""
        from overunder.engine.image_load import load

        src: Path | BinaryIO = (
            Path(os.fspath(source)) if isinstance(source, str | os.PathLike) else source
        )
        return [self.image(loaded.id) for loaded in load(self.paths, src)]

    def import_(
        self,
        source: str | os.PathLike[str] | BinaryIO,
        reference: str | None = None,
        *,
        changes: Sequence[str] = (),
    ) -> Image:
        """``docker import``: a rootfs tar as a one-layer image."""
        from overunder.engine.image_import import import_

        src: Path | BinaryIO = (
            Path(os.fspath(source)) if isinstance(source, str | os.PathLike) else source
        )
        return self.image(import_(self.paths, src, reference=reference, changes=changes))

    def tag(self, source: str, target: str) -> Image:
        from overunder.engine.images import tag

        return _image_of(tag(self.paths, source, target))

    def rmi(self, name: str, *, force: bool = False) -> None:
        from overunder.engine.images import rmi

        result = rmi(self.paths, [name], force=force)
        if result.errors:
            raise result.errors[0]

    # -- containers ---------------------------------------------------------------------------
    def create(
        self,
        image: str,
        command: Sequence[str] = (),
        *,
        name: str | None = None,
        env: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,
        publish: Sequence[str] = (),
        volumes: Sequence[str] = (),
        network: str = "private",
        storage_driver: str = "overlay",
    ) -> Container:
        """``docker create``: the container's layers are made, nothing runs yet."""
        from overunder.engine.containers import RunOptions, create_container

        opts = RunOptions(
            image=image,
            command=list(command),
            name=name,
            env=list(env),
            workdir=workdir,
            user=user,
            publish=list(publish),
            volumes=list(volumes),
            network=network,
            storage_driver=storage_driver,
        )
        rec = create_container(self.paths, opts)
        return Container(self, rec.id, rec.name, image)

    def run(
        self,
        image: str,
        command: Sequence[str] = (),
        *,
        name: str | None = None,
        env: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,
        publish: Sequence[str] = (),
        volumes: Sequence[str] = (),
        network: str = "private",
        storage_driver: str = "overlay",
    ) -> Container:
        """``docker run -d``: create and start; the container runs in the background. Use it
        in a ``with`` block for a throwaway container. A container that fails to start is
        removed and the error raised."""
        box = self.create(
            image,
            command,
            name=name,
            env=env,
            workdir=workdir,
            user=user,
            publish=publish,
            volumes=volumes,
            network=network,
            storage_driver=storage_driver,
        )
        try:
            box.start()
        except BaseException:
            with contextlib.suppress(OverunderError):
                box.remove(force=True)
            raise
        return box

    def container(self, name: str) -> Container:
        """The container ``name`` (name or id prefix). NotFound ``No such container: X``."""
        from overunder.engine.containers import find_container

        rec = find_container(self.paths, name)
        return Container(self, rec.id, rec.name, rec.image_name)

    def containers(self, *, all: bool = True) -> list[Container]:
        from overunder.engine.containers import list_containers

        return [
            Container(self, r.id, r.name, r.image_name)
            for r in list_containers(self.paths, all_states=all)
        ]

    def rm(self, container: str, *, force: bool = False) -> None:
        from overunder.engine.containers import remove_container

        remove_container(self.paths, container, force=force)

    def exec(
        self,
        container: str,
        command: Sequence[str],
        *,
        env: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,
    ) -> ExecResult:
        """``docker exec``: run ``command`` in the running container and capture its output.
        A container that is not running: FailedPrecondition (the CLI's error); a command the
        runtime cannot start (not found, not executable): FailedPrecondition with the
        runtime's words and ``exit_code`` 126/127 in the message."""
        from overunder.engine.container_record import State
        from overunder.engine.containers import find_container, reconcile

        rec = reconcile(self.paths, find_container(self.paths, container))
        if rec.state.status != State.RUNNING:
            raise FailedPrecondition(
                f"Container {rec.id} is not running",
                hint=f"start it with 'overunder start {container}'",
            )
        if not command:
            raise InvalidArgument("exec needs a command", hint="pass e.g. ['sh', '-c', '...']")
        argv = [sys.executable, "-m", "overunder"]
        argv += ["--root", str(self.paths.root), "--run-root", str(self.paths.run_root), "exec"]
        for e in env:
            argv += ["-e", e]
        if workdir:
            argv += ["-w", workdir]
        if user:
            argv += ["-u", user]
        argv += [rec.id, *command]
        proc = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL, check=False)
        if proc.returncode in (125, 126, 127):
            # The CLI's own error ("Error: …"), or the runtime's refusal to start the command
            # ("OCI runtime exec failed: …", printed where Docker prints it): not the
            # command's output, so raised like the CLI reports it.
            for stream in (proc.stderr, proc.stdout):
                text = stream.decode("utf-8", "replace")
                if text.startswith(("Error: ", "OCI runtime exec failed")):
                    lines = text.splitlines()
                    message = lines[0].removeprefix("Error: ")
                    hint = next(
                        (x.removeprefix("Hint: ") for x in lines if x.startswith("Hint: ")), None
                    )
                    raise FailedPrecondition(f"{message} (exit {proc.returncode})", hint=hint)
        return ExecResult(proc.returncode, proc.stdout, proc.stderr)

    def diff(self, container: str) -> list[Change]:
        """``docker diff``: typed A/C/D changes, sorted by path (a dir before its subtree)."""
        from overunder.engine.container_diff import container_changes

        return container_changes(self.paths, container)

    def cp(self, src: str, dest: str, *, follow: bool = False) -> None:
        """``docker cp`` with Docker's argument forms: ``CONTAINER:PATH`` on one side, a host
        path on the other. As a source, ``NAME:PATH`` may also name an image (tried when no
        container has that name): files come straight from its layers."""
        from overunder.engine.container_cp import (
            copy_from_container,
            copy_to_container,
            split_cp_arg,
        )
        from overunder.engine.containers import find_container

        src_c, src_path = split_cp_arg(src)
        dest_c, dest_path = split_cp_arg(dest)
        if (src_c is None) == (dest_c is None):
            raise InvalidArgument(
                "cp needs exactly one side named CONTAINER:PATH (or IMAGE:PATH as the source)",
                hint="e.g. engine.cp('box:/etc/hosts', '/tmp/hosts')",
            )
        if src_c is not None:
            try:
                find_container(self.paths, src_c)
            except NotFound:
                from overunder.engine.explore import copy_from_image, split_image_arg

                image, image_path = split_image_arg(src)
                copy_from_image(self.paths, image, image_path, dest_path, follow=follow)
                return
            copy_from_container(self.paths, src_c, src_path, dest_path, follow=follow)
            return
        assert dest_c is not None
        copy_to_container(self.paths, dest_c, src_path, dest_path, follow=follow)

    def commit(
        self,
        container: str,
        reference: str | None = None,
        *,
        message: str = "",
        author: str = "",
        changes: Sequence[str] = (),
    ) -> Image:
        """``docker commit``: the container's upper dir becomes a new layer of a new image."""
        from overunder.engine.container_commit import commit_container

        image_id = commit_container(
            self.paths, container, reference, message=message, author=author, changes=changes
        )
        return self.image(image_id)

    def mount(self, container: str) -> Path:
        """``overunder mount CONTAINER`` (like ``podman mount``): the merged dir on the host."""
        from overunder.engine.container_mount import mount_container

        return mount_container(self.paths, container)

    def umount(self, container: str) -> None:
        from overunder.engine.container_mount import umount_container

        umount_container(self.paths, container)

    # -- the explorer ------------------------------------------------------------------------
    def layers(self, name: str) -> LayersReport:
        """``overunder layers``: per-layer counts, hidden bytes and the wasted space."""
        from overunder.engine.explore import layers

        return layers(self.paths, name)

    def explain(self, name: str, path: str) -> PathReport:
        """``overunder explain``: ``path`` through every layer of an image or container."""
        from overunder.engine.explore import explain

        return explain(self.paths, name, path)

    def cat(self, image: str, path: str) -> bytes:
        """``overunder cat``: a file of an image, without a container."""
        import io

        from overunder.engine.explore import cat

        buf = io.BytesIO()
        cat(self.paths, image, path, buf)
        return buf.getvalue()


def _image_of(rec: ImageRecord) -> Image:
    from overunder.image.store import familiar

    return Image(
        id=rec.id,
        tags=tuple(familiar(t) for t in rec.repo_tags),
        digests=tuple(familiar(d) for d in rec.repo_digests),
    )
