"""A container's tree: Docker's init layer, the container's own upper dir, the mount, and the
paths inside it (user, working dir) resolved safely.

Snapshots (engineer D's :class:`~overunder.snapshots.Snapshotter`), bottom to top::

    image layers (committed, shared)
    <id>-init      Docker's init layer: /.dockerenv, /etc/{hostname,hosts,resolv.conf} (empty
                   files, bind-mounted over at run time), /etc/mtab -> /proc/mounts,
                   /dev/{console,pts,shm}, and real /dev, /proc, /sys dirs
    <id>           the container's upper + work dirs

Because the init layer sits *below* the container's upper dir, ``diff`` (upper vs. lowers)
shows none of it (docker-compat.md §3 rule 1), and writes to the bind-mounted files never
reach the upper dir (rule 14). The init layer's real ``/dev``, ``/proc`` and ``/sys`` dirs
hide an image's symlinks at those names: an image whose ``/dev`` is a symlink cannot steer the
runtime's mounts onto host paths (the /dev-symlink class of runc CVEs; Docker is immune for
the same reason).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from overunder.engine.container_record import ensure_private
from overunder.errors import InvalidArgument, NotFound
from overunder.layerfs.safepath import resolve_in_root
from overunder.mount import mount, mount_entry, unmount
from overunder.snapshots import Snapshotter

__all__ = [
    "INIT_FILES",
    "UserSpec",
    "create_snapshots",
    "merged_dir",
    "mount_rootfs",
    "remove_snapshots",
    "resolve_user",
    "resolve_workdir",
    "unmount_rootfs",
    "write_container_files",
]

INIT_FILES = (
    "/.dockerenv",
    "/etc/hostname",
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/mtab",
    "/dev/console",
    "/dev/pts",
    "/dev/shm",
)

HOSTS_LOOPBACK = (
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "ff00::0\tip6-mcastprefix\n"
    "ff02::1\tip6-allnodes\n"
    "ff02::2\tip6-allrouters\n"
)

# Runtime mounts cover these: a working dir in them is refused (CVE-2024-21626 used
# /proc/self/fd/N as the working dir to reach a leaked host fd).
_RUNTIME_MOUNTED = ("proc", "sys", "dev")


def _copy_dir_meta(src: Path, dst: Path) -> None:
    """Give the init layer's dir the image's mode and owner, so the merged dir looks the same."""
    try:
        st = os.lstat(src)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))
        with contextlib.suppress(PermissionError):
            os.lchown(dst, st.st_uid, st.st_gid)


def _populate_init(upper: Path, image_top: Path | None) -> None:
    for d in ("etc", "dev", "dev/pts", "dev/shm", "proc", "sys"):
        p = upper / d
        p.mkdir(mode=0o755, exist_ok=True)
        os.chmod(p, 0o755)
        if image_top is not None and d in ("etc", "proc", "sys"):
            _copy_dir_meta(image_top / d, p)
    for f in (".dockerenv", "etc/hostname", "etc/hosts", "etc/resolv.conf", "dev/console"):
        p = upper / f
        p.touch(mode=0o755)
        os.chmod(p, 0o755)
    os.symlink("/proc/mounts", upper / "etc/mtab")


def create_snapshots(
    snaps: Snapshotter, cid: str, parent_chain: str | None, image_top: Path | None, driver: str
) -> tuple[str, str]:
    """Make ``<id>-init`` (populated, committed) and ``<id>`` (active) snapshots.

    Returns (init key, container key). ``image_top`` is the image's top layer dir (for the
    mode of /etc and friends); it is only read.
    """
    init_active = f"{cid}-init-prep"
    init_key = f"{cid}-init"
    key = cid
    snaps.prepare(init_active, parent_chain, driver=driver)
    try:
        _populate_init(snaps.upper_dir(init_active), image_top)
        snaps.commit(init_key, init_active)
    except BaseException:
        with contextlib.suppress(NotFound):
            snaps.remove(init_active)
        raise
    try:
        snaps.prepare(key, init_key, driver=driver)
    except BaseException:
        with contextlib.suppress(NotFound):
            snaps.remove(init_key)
        raise
    return init_key, key


def remove_snapshots(snaps: Snapshotter, key: str, init_key: str) -> None:
    for k in (key, init_key, f"{key}-init-prep"):
        if k:
            with contextlib.suppress(NotFound):
                snaps.remove(k)


def merged_dir(run_dir: Path) -> Path:
    return run_dir / "merged"


def mount_rootfs(snaps: Snapshotter, key: str, driver: str, target: Path) -> None:
    """Mount the container's tree on ``target`` (made 0755 inside a 0700 run dir, so host
    users cannot reach setuid files in it: CVE-2021-41091)."""
    ensure_private(target.parent)
    target.mkdir(mode=0o755, exist_ok=True)
    if mount_entry(target) is not None and os.path.ismount(target):
        return
    for m in snaps.mounts(key, driver=driver):
        mount(m, target)


def unmount_rootfs(target: Path) -> None:
    """Unmount (lazily if busy) and remove the mount point; nothing mounted is fine."""
    for _ in range(4):
        if not os.path.ismount(target):
            break
        try:
            unmount(target)
        except Exception:
            with contextlib.suppress(Exception):
                unmount(target, lazy=True)
    with contextlib.suppress(OSError):
        target.rmdir()


def write_container_files(cdir: Path, hostname: str, network: str) -> dict[str, Path]:
    """``hostname``, ``hosts`` and ``resolv.conf`` in the container's durable dir."""
    files = {
        "hostname": cdir / "hostname",
        "hosts": cdir / "hosts",
        "resolv.conf": cdir / "resolv.conf",
    }
    if not files["hostname"].exists():
        files["hostname"].write_text(hostname + "\n")
    if not files["hosts"].exists():
        if network == "host":
            try:
                text = Path("/etc/hosts").read_text()
            except OSError:
                text = HOSTS_LOOPBACK
        else:
            text = HOSTS_LOOPBACK
        files["hosts"].write_text(text)
    if not files["resolv.conf"].exists():
        try:
            host = Path("/etc/resolv.conf").read_text()
        except OSError:
            host = ""
        lines = []
        for line in host.splitlines():
            parts = line.split()
            # A loopback resolver on the host is unreachable from a private network namespace.
            if parts[:1] == ["nameserver"] and network != "host" and len(parts) > 1:
                addr = parts[1]
                if addr.startswith("127.") or addr == "::1":
                    continue
            lines.append(line)
        if network != "host" and not any(x.startswith("nameserver") for x in lines):
            lines += ["nameserver 8.8.8.8", "nameserver 8.8.4.4"]
        files["resolv.conf"].write_text("\n".join(lines) + "\n")
    for p in files.values():
        os.chmod(p, 0o644)
    return files


# -- paths inside the rootfs ------------------------------------------------------------------
def _read_in_root(root: Path, path: str) -> str | None:
    host = resolve_in_root(root, path, follow_last=True)
    try:
        fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "r", errors="replace") as f:
        return f.read(1 << 20)


@dataclass(frozen=True, slots=True)
class UserSpec:
    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    home: str


def resolve_user(root: Path, user: str) -> UserSpec:
    """Docker's ``-u``: ``name``, ``uid``, ``name:group``, ``uid:gid``, looked up in the
    container's ``/etc/passwd`` and ``/etc/group`` (read without leaving the rootfs)."""
    name, _, group = user.partition(":")
    passwd = _read_in_root(root, "/etc/passwd") or ""
    entries = [line.split(":") for line in passwd.splitlines() if line.count(":") >= 6]
    uid: int | None = None
    gid = 0
    home = "/"
    if name == "":
        name = "0"
    if name.isdigit():
        uid = int(name)
        for e in entries:
            if e[2] == name:
                gid, home = int(e[3]), e[5]
                break
        else:
            home = "/root" if uid == 0 else "/"
    else:
        for e in entries:
            if e[0] == name:
                uid, gid, home = int(e[2]), int(e[3]), e[5]
                break
        if uid is None:
            raise InvalidArgument(
                f"unable to find user {name}: no matching entries in passwd file",
                hint="give a numeric uid (-u 1000) or a user of the image's /etc/passwd",
            )
    groups_text = _read_in_root(root, "/etc/group") or ""
    gentries = [line.split(":") for line in groups_text.splitlines() if line.count(":") >= 3]
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            for g in gentries:
                if g[0] == group:
                    gid = int(g[2])
                    break
            else:
                raise InvalidArgument(
                    f"unable to find group {group}: no matching entries in group file",
                    hint="give a numeric gid or a group of the image's /etc/group",
                )
    user_name = next((e[0] for e in entries if e[2] == str(uid)), None)
    extra: list[int] = []
    if user_name is not None:
        for g in gentries:
            members = g[3].split(",") if len(g) > 3 else []
            if user_name in members and g[2].isdigit() and int(g[2]) != gid:
                extra.append(int(g[2]))
    return UserSpec(uid=uid, gid=gid, additional_gids=tuple(extra), home=home or "/")


def resolve_workdir(root: Path, workdir: str, *, create: bool = True) -> str:
    """The working dir as a clean path inside the container; created when missing (as Docker).

    Refused: relative paths, and paths that lead (directly or through symlinks, which resolve
    inside the rootfs) into /proc, /sys or /dev, where the runtime mounts its own filesystems
    (``-w /proc/self/fd/7`` was CVE-2024-21626).
    """
    if not workdir.startswith("/"):
        raise InvalidArgument(
            f"the working directory '{workdir}' is invalid, it needs to be an absolute path",
            hint="give -w an absolute path",
        )
    host = resolve_in_root(root, workdir, follow_last=True)
    rel = os.path.relpath(host, root)
    if rel == ".":
        return "/"
    if rel.startswith(".."):
        raise InvalidArgument(f"working directory {workdir} resolves outside the container")
    if rel.split("/")[0] in _RUNTIME_MOUNTED:
        raise InvalidArgument(
            f"working directory {workdir} resolves to /{rel}, inside a filesystem the runtime "
            "mounts (/proc, /sys, /dev); refused",
            hint="use a working directory of the image's own tree",
        )
    if os.path.lexists(host):
        if not os.path.isdir(host) or os.path.islink(host):
            raise InvalidArgument(
                f"working directory {workdir} is not a directory in the container",
                hint="give -w a directory",
            )
    elif create:
        _mkdirs_in_root(root, rel)
    return "/" + rel


def _mkdirs_in_root(root: Path, rel: str) -> None:
    """mkdir -p of ``rel`` under ``root``, one component at a time, never following links."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in rel.split("/"):
            if part in ("", "."):
                continue
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            nxt = os.open(
                part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
            )
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)


def rmtree_quiet(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
