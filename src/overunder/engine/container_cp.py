"""``cp``: copy files and dirs between the host and a container, Docker's rules (docker-compat
§4), without any of Docker's cp CVEs.

Both directions go through a tar stream, as Docker's do: the source side is written by
:func:`overunder.layerfs.tar_write.write_tree` (which walks with ``O_NOFOLLOW`` dir fds) in a
thread, and the destination side unpacks it with
:func:`overunder.engine.container_cp_extract.extract`.

**Paths inside the container** resolve in the container's root (Docker's
``FollowSymlinkInScope``): a relative path is relative to ``/`` (not the working dir); absolute
and relative symlinks, chained, stay inside the root; a destination that is a symlink is
followed (``cp f c:/data/pwlink`` with ``pwlink -> /etc/passwd`` overwrites the container's
``/etc/passwd``). The decision of *what* to do is made on names; the writes themselves are
done on dir fds opened with ``RESOLVE_IN_ROOT``, so a symlink swapped in between (the
CVE-2018-15664 race) resolves inside the root too. Missing parents are never created
(Docker's "Could not find the file" error), and those we create below the destination are made
with ``mkdirat`` on in-root fds (CVE-2021-41089). Nothing is executed, no process is started
and nothing is loaded from the container's tree: this is Python in the engine's process, not
a helper chrooted into the container (CVE-2019-14271).

**The container's tree**: a running container's live merged dir, or for a stopped (or never
started) one a private mount for the duration of the copy (see
:func:`overunder.engine.container_mount.container_root`). ``/etc/hostname``, ``/etc/hosts``
and ``/etc/resolv.conf``, which a running container gets bind-mounted, are read from the
container's own files when copied out (``/etc/hostname`` holds the short id, running or
stopped) and refused as destinations (``device or resource busy``), as Docker does.

Ownership: copied in, files keep their host owner and mode (Docker does, with or without
``-a``); copied out, they belong to the caller, modes kept.

Gaps: when a whole directory holding those three files is copied out, the init layer's empty
files are copied, not the bind-mounted content.
"""

from __future__ import annotations

import os
import posixpath
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Final

from overunder.engine.container_cp_extract import InRoot, OnHost, extract
from overunder.engine.container_mount import container_root
from overunder.engine.container_record import container_dir
from overunder.engine.paths import EnginePaths
from overunder.errors import FailedPrecondition, InvalidArgument, NotFound
from overunder.layerfs.safepath import open_dir_in_root, open_root, resolve_in_root
from overunder.layerfs.tar_write import write_tree

__all__ = ["BIND_MOUNTED", "copy_from_container", "copy_to_container", "split_cp_arg"]

BIND_MOUNTED: Final = {
    "etc/hostname": "hostname",
    "etc/hosts": "hosts",
    "etc/resolv.conf": "resolv.conf",
}
"""Container paths bind-mounted from the container's dir while it runs -> that file's name."""
_RESOLVE_ATTEMPTS: Final = 5


def split_cp_arg(arg: str) -> tuple[str | None, str]:
    """Docker's ``splitCpArg``: ``NAME:PATH`` names a container path unless the argument is an
    absolute path, has no ``:``, or starts with ``.`` (``./file:name.txt`` is local)."""
    if arg.startswith("/"):
        return None, arg
    container, sep, path = arg.partition(":")
    if not sep or container.startswith("."):
        return None, arg
    return container, path


def _in_container(path: str) -> str:
    """A container path as absolute (relative means relative to ``/``, not WORKDIR)."""
    return path if path.startswith("/") else "/" + path


def _is_contents(path: str) -> bool:
    return path.endswith("/.") or path == "."


def _dir_syntax(path: str) -> bool:
    return path.endswith("/") or _is_contents(path)


def _shown(path: str) -> str:
    """A container path as Docker's messages show it (no trailing ``/``)."""
    return posixpath.normpath(path) if path not in ("", "/") else "/"


def _rel(root: Path, resolved: Path) -> str:
    rel = str(resolved.relative_to(root))
    return "" if rel == "." else rel


def _resolve(root: Path, path: str, *, follow_last: bool) -> Path:
    """:func:`resolve_in_root`, retried when the tree changes under it (a link swapped for a
    dir between its lstat and readlink gives EINVAL): a running container may do that."""
    for _ in range(_RESOLVE_ATTEMPTS):
        try:
            return resolve_in_root(root, path, follow_last=follow_last)
        except OSError as err:
            last = err
    raise FailedPrecondition(
        f"{path} changed while it was being resolved in the container ({last.strerror})",
        hint="the container is changing this path right now; retry",
    ) from last


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _pump(produce: Callable[[BinaryIO], object], consume: Callable[[BinaryIO], object]) -> None:
    """Run ``produce(out)`` in a thread writing a pipe that ``consume(inp)`` reads; errors of
    either side are raised (the producer's first when both failed: it is the cause)."""
    r, w = os.pipe()
    failures: list[BaseException] = []

    def run() -> None:
        try:
            with open(w, "wb") as out:
                produce(out)
        except BrokenPipeError:
            pass
        except BaseException as err:  # handed to the main thread
            failures.append(err)

    t = threading.Thread(target=run, name="cp-tar-writer", daemon=True)
    t.start()
    consumer_error: BaseException | None = None
    with open(r, "rb") as inp:
        try:
            consume(inp)
            while inp.read(1 << 16):  # let the writer finish its trailer
                pass
        except BaseException as err:
            consumer_error = err
    t.join()
    if failures and not isinstance(failures[0], OSError | FailedPrecondition):
        raise failures[0]
    if consumer_error is not None:
        raise consumer_error
    if failures:
        raise failures[0]


# -- into the container --------------------------------------------------------------------
def copy_to_container(
    paths: EnginePaths,
    container: str,
    src: str,
    dest: str,
    *,
    stdin: BinaryIO | None = None,
    follow: bool = False,
) -> None:
    """``cp SRC CONTAINER:DEST`` (``SRC`` ``-``: a tar on ``stdin``, extracted into the
    existing dir ``DEST``). Errors carry Docker's messages (docker-compat §4)."""
    dest_c = _in_container(dest)
    local = ""
    st: os.stat_result | None = None
    if src != "-":
        local = os.path.abspath(src)
        if src.endswith("/."):
            local += "/."
        try:
            st = os.stat(local) if follow else os.lstat(local.removesuffix("/."))
        except FileNotFoundError:
            raise NotFound(
                f"lstat {os.path.abspath(src)}: no such file or directory",
                hint="check the local source path",
            ) from None
    with container_root(paths, container) as (_rec, root):
        root_fd = open_root(root)
        try:
            if st is None:
                _stream_in(root, root_fd, container, dest, dest_c, stdin)
                return
            _copy_in(root, root_fd, container, local, st, dest_c, follow=follow)
        finally:
            os.close(root_fd)


def _stream_in(  # noqa: PLR0917  # private helper of one caller
    root: Path, root_fd: int, container: str, dest: str, dest_c: str, stdin: BinaryIO | None
) -> None:
    if stdin is None:
        raise InvalidArgument("cp from '-' needs a tar stream on stdin")
    try:
        fd = open_dir_in_root(root_fd, dest_c)
    except (NotFound, FailedPrecondition):
        raise InvalidArgument(
            f'destination "{container}:{dest}" must be a directory',
            hint="a tar stream is extracted into an existing directory",
        ) from None
    os.close(fd)
    base = _rel(root, _resolve(root, dest_c, follow_last=True))
    extract(stdin, InRoot(root_fd, base))


def _copy_in(  # noqa: PLR0917  # private helper of one caller
    root: Path,
    root_fd: int,
    container: str,
    local: str,
    st: os.stat_result,
    dest_c: str,
    *,
    follow: bool,
) -> None:
    src_is_dir = stat.S_ISDIR(st.st_mode)
    contents = _is_contents(local)
    resolved = _resolve(root, dest_c, follow_last=True)
    rel = _rel(root, resolved)
    dst = _lstat(resolved)
    if dst is not None and stat.S_ISDIR(dst.st_mode):
        base, name = rel, "." if contents else os.path.basename(local.removesuffix("/."))
    else:
        if _dir_syntax(dest_c):
            raise InvalidArgument(
                "no such directory", hint=f"{dest_c} is not an existing directory"
            )
        if dst is not None and src_is_dir:
            raise InvalidArgument(
                "cannot copy directory", hint=f"{dest_c} is an existing file in the container"
            )
        base, name = posixpath.dirname(rel), posixpath.basename(rel)
        if dst is None:
            parent = _lstat(resolved.parent)
            if parent is None or not stat.S_ISDIR(parent.st_mode):
                raise NotFound(
                    f"Could not find the file {posixpath.dirname(_shown(dest_c))} "
                    f"in container {container}",
                    hint="create the parent directory in the container first",
                )
        target = posixpath.join(base, name) if base else name
        if not src_is_dir and target in BIND_MOUNTED:
            raise FailedPrecondition(
                "Error processing tar file(exit status 1): unlinkat "
                f"/{target}: device or resource busy",
                hint="the container's /etc/hostname, /etc/hosts and /etc/resolv.conf belong to "
                "the engine; change them with the container's options (--hostname, --add-host)",
            )

    def produce(out: BinaryIO) -> None:
        write_tree(local, out, name=name, follow=follow)

    _pump(produce, lambda inp: extract(inp, InRoot(root_fd, base)))


# -- out of the container ------------------------------------------------------------------
def copy_from_container(
    paths: EnginePaths,
    container: str,
    src: str,
    dest: str,
    *,
    stdout: BinaryIO | None = None,
    follow: bool = False,
) -> None:
    """``cp CONTAINER:SRC DEST`` (``DEST`` ``-``: a tar of SRC on ``stdout``, named by its
    base name, ``SRC/.`` giving ``./``)."""
    src_c = _in_container(src)
    contents = _is_contents(src_c)
    follow_last = follow or src_c.endswith("/") or contents
    with container_root(paths, container) as (rec, root):
        resolved = _resolve(root, src_c, follow_last=follow_last)
        sst = _lstat(resolved)
        if sst is None:
            raise NotFound(
                f"Could not find the file {_shown(src_c)} in container {container}",
                hint="paths are resolved from the container's / (not its working dir)",
            )
        rel = _rel(root, resolved)
        given_base = posixpath.basename(posixpath.normpath(src_c)) or "/"
        host_file: Path | None = None
        if rel in BIND_MOUNTED and stat.S_ISREG(sst.st_mode):
            candidate = container_dir(paths, rec.id) / BIND_MOUNTED[rel]
            if candidate.is_file():
                host_file = candidate

        def produce_as(name: str | None) -> Callable[[BinaryIO], None]:
            def produce(out: BinaryIO) -> None:
                try:
                    if host_file is not None:
                        write_tree(host_file, out, name=name or given_base)
                    else:
                        write_tree(src_c, out, root=root, name=name, follow=follow)
                except BrokenPipeError:
                    raise
                except OSError as err:  # the tree changed under the archiver
                    raise FailedPrecondition(
                        f"cannot copy {src_c} out of container {container}: {err.strerror}",
                        hint="the container is changing this path right now; retry",
                    ) from err

            return produce

        if dest == "-":
            if stdout is None:
                raise InvalidArgument("cp to '-' needs a stream for the tar")
            produce_as(None)(stdout)
            return
        src_is_dir = stat.S_ISDIR(sst.st_mode)
        base, name = _host_target(dest, src_is_dir, contents, given_base)
        try:
            dfd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as err:
            raise FailedPrecondition(f"cannot open {base}: {err.strerror}") from err
        try:
            _pump(produce_as(name), lambda inp: extract(inp, OnHost(dfd, base)))
        finally:
            os.close(dfd)


def _host_target(dest: str, src_is_dir: bool, contents: bool, src_base: str) -> tuple[str, str]:
    """(host dir to extract in, archive name of the source) for a host DEST."""
    dest_abs = os.path.abspath(dest)
    try:
        dst: os.stat_result | None = os.stat(dest_abs)
    except (FileNotFoundError, NotADirectoryError):
        dst = None
    if dst is not None and stat.S_ISDIR(dst.st_mode):
        return dest_abs, "." if contents else src_base
    if _dir_syntax(dest):
        raise InvalidArgument("no such directory", hint=f"{dest_abs} is not an existing directory")
    if dst is not None and src_is_dir:
        raise InvalidArgument("cannot copy directory", hint=f"{dest_abs} is an existing file")
    parent = os.path.dirname(dest_abs)
    if not os.path.isdir(parent):
        raise InvalidArgument(
            f'invalid output path: directory "{parent}" does not exist',
            hint="create the destination's parent directory first",
        )
    return parent, os.path.basename(dest_abs)
