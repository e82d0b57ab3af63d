"""Conformance scenarios: one small function per overlay behaviour, with its expected result
(a value, or the errno name), run on the kernel overlay and on ours over the same layers.

Both must give the expected result, and the merged view and the upper dir of the scenario's
subtree must be the same in both (metadata included; the kernel's bookkeeping xattrs
``origin``/``impure``/``nlink`` are ignored). Each scenario works in its own subtree
``/<name>`` of one shared set of mounts, so the module mounts only three times:

- ``K``: the kernel overlay with the defaults (``redirect_dir=off``, ``index=off``);
- ``KR``: the kernel with ``redirect_dir=on,index=on``: the reference where ours differs from
  the default kernel on purpose (renaming lower dirs succeeds; hard links survive copy-up);
- ``O``: ours.

The model target (``semantics.OverlayModel``) joins when it exists.
"""

from __future__ import annotations

import ctypes
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fuse_overlay_helpers import (
    PAST_NS,
    describe_diff,
    errname,
    kernel_mount,
    kernel_umount,
    ours_mount,
    ours_umount,
    remove_tree,
    renameat2,
    set_past,
    snapshot,
    whiteout,
    world_dir,
    write,
)

from conftest import require_fuse, require_overlay

pytestmark = [pytest.mark.root, pytest.mark.overlay, pytest.mark.fuse]

Result = object


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[Path], Result]
    expect: Result
    reference: str = "K"  # which kernel mount to compare with


SCENARIOS: list[Scenario] = []


Fn = Callable[[Path], Result]


def scenario(expect: Result, *, reference: str = "K") -> Callable[[Fn], Fn]:
    def deco(fn: Fn) -> Fn:
        SCENARIOS.append(Scenario(fn.__name__, fn, expect, reference))
        return fn

    return deco


def build_subtree(l1: Path, l2: Path) -> None:
    """The same small tree for every scenario (l1 on top of l2)."""
    write(l2 / "f", "l2 f\n")
    write(l2 / "d/x", "x\n")
    write(l2 / "d/sub/deep", "deep\n")
    write(l2 / "hl1", "hard\n")
    os.link(l2 / "hl1", l2 / "hl2")
    os.symlink("f", l2 / "sym")
    write(l2 / "gone", "hidden by l1's whiteout\n")
    write(l2 / "opq/old", "hidden by l1's opaque dir\n")
    write(l2 / "dd/a", "a\n")
    write(l2 / "ro", "read-only\n", 0o444)
    os.setxattr(l2 / "d/x", "user.origin", b"lower")
    write(l1 / "f", "l1 f\n")
    write(l1 / "d/z", "z\n")
    write(l1 / "top", "top\n")
    whiteout(l1 / "gone")
    write(l1 / "opq/new", "new\n")
    os.setxattr(l1 / "opq", "trusted.overlay.opaque", b"y")


# --------------------------------------------------------------------------- scenarios
@scenario(b"l1 f\n")
def read_does_not_copy_up(m: Path) -> Result:
    return (m / "f").read_bytes()


@scenario(["d", "dd", "f", "hl1", "hl2", "opq", "ro", "sym", "top"])
def readdir_merges_layers(m: Path) -> Result:
    return sorted(os.listdir(m))


@scenario(["new"])
def opaque_dir_hides_lower(m: Path) -> Result:
    return sorted(os.listdir(m / "opq"))


@scenario("ENOENT")
def whiteout_hides_lower(m: Path) -> Result:
    return os.stat(m / "gone")


@scenario(b"new")
def open_trunc_copies_up(m: Path) -> Result:
    fd = os.open(m / "f", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"new")
    os.close(fd)
    return (m / "f").read_bytes()


@scenario(b"x\nmore\n")
def append_copies_up(m: Path) -> Result:
    with open(m / "d/x", "ab") as fh:
        fh.write(b"more\n")
    return (m / "d/x").read_bytes()


@scenario(b"l2 XX\n")
def write_in_the_middle(m: Path) -> Result:
    with open(m / "dd/a", "r+b") as fh:
        fh.write(b"l2 XX\n")
    return (m / "dd/a").read_bytes()


@scenario((0o640, b"created"))
def creat_new_file(m: Path) -> Result:
    fd = os.open(m / "new", os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o640)
    os.write(fd, b"created")
    os.close(fd)
    return stat.S_IMODE(os.stat(m / "new").st_mode), (m / "new").read_bytes()


@scenario("EEXIST")
def creat_excl_on_lower_file(m: Path) -> Result:
    return os.open(m / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY)


@scenario(["dd", "f", "hl1", "hl2", "opq", "ro", "sym", "top"])
def unlink_lower_file_leaves_whiteout(m: Path) -> Result:
    os.unlink(m / "d" / "x")
    os.unlink(m / "d" / "z")
    os.unlink(m / "d" / "sub" / "deep")
    os.rmdir(m / "d" / "sub")
    os.rmdir(m / "d")
    return sorted(os.listdir(m))


@scenario(["d", "dd", "f", "hl1", "hl2", "opq", "ro", "sym", "top"])
def unlink_new_file_leaves_nothing(m: Path) -> Result:
    (m / "tmp").write_text("x")
    os.unlink(m / "tmp")
    return sorted(os.listdir(m))


@scenario(b"again")
def unlink_then_create(m: Path) -> Result:
    os.unlink(m / "f")
    (m / "f").write_bytes(b"again")
    return (m / "f").read_bytes()


@scenario("ENOTEMPTY")
def rmdir_merged_nonempty(m: Path) -> Result:
    return os.rmdir(m / "d")


@scenario([])
def rm_rf_then_mkdir_is_opaque(m: Path) -> Result:
    for p in ("d/x", "d/z", "d/sub/deep"):
        os.unlink(m / p)
    os.rmdir(m / "d/sub")
    os.rmdir(m / "d")
    os.mkdir(m / "d", 0o755)
    return sorted(os.listdir(m / "d"))


@scenario("EEXIST")
def mkdir_over_lower_dir(m: Path) -> Result:
    return os.mkdir(m / "dd")


@scenario(["n"], reference="KR")
def mkdir_new_nested(m: Path) -> Result:
    os.mkdir(m / "newdir", 0o750)
    os.mkdir(m / "newdir/n", 0o700)
    return os.listdir(m / "newdir")


@scenario(("ENOENT", b"l1 f\n"))
def rename_lower_file(m: Path) -> Result:
    os.rename(m / "f", m / "g")
    try:
        os.stat(m / "f")
    except OSError as err:
        return errname(err), (m / "g").read_bytes()
    return "exists", b""


@scenario(b"top\n")
def rename_onto_existing_lower_file(m: Path) -> Result:
    os.rename(m / "top", m / "f")
    return (m / "f").read_bytes()


@scenario("EISDIR")
def rename_file_onto_dir(m: Path) -> Result:
    return os.rename(m / "f", m / "dd")


@scenario("ENOTDIR", reference="KR")
def rename_dir_onto_file(m: Path) -> Result:
    os.mkdir(m / "nd")
    return os.rename(m / "nd", m / "f")


@scenario(["x"], reference="KR")
def rename_upper_dir(m: Path) -> Result:
    os.mkdir(m / "u1")
    (m / "u1/x").write_text("x")
    os.rename(m / "u1", m / "u2")
    return os.listdir(m / "u2")


@scenario(["x"], reference="KR")
def rename_upper_dir_into_merged_dir(m: Path) -> Result:
    os.mkdir(m / "u1")
    (m / "u1/x").write_text("x")
    os.rename(m / "u1", m / "d/u1")
    return os.listdir(m / "d/u1")


@scenario(["a"], reference="KR")
def rename_lower_only_dir(m: Path) -> Result:
    # The default kernel says EXDEV here (see test_kernel_default_refuses_lower_dir_rename);
    # ours does what the kernel does with redirect_dir=on.
    os.rename(m / "dd", m / "dd2")
    return sorted(os.listdir(m / "dd2"))


@scenario(["sub", "x", "z"], reference="KR")
def rename_merged_dir_same_parent(m: Path) -> Result:
    os.rename(m / "d", m / "d2")
    return sorted(os.listdir(m / "d2"))


@scenario(["a"], reference="KR")
def rename_lower_dir_across_dirs(m: Path) -> Result:
    os.rename(m / "dd", m / "d/moved")
    return sorted(os.listdir(m / "d/moved"))


@scenario(["b"], reference="KR")
def rename_lower_dir_onto_emptied_dir(m: Path) -> Result:
    os.mkdir(m / "e")
    (m / "e/b").write_text("b")
    os.unlink(m / "dd/a")
    os.rename(m / "e", m / "dd")
    return sorted(os.listdir(m / "dd"))


@scenario("EEXIST")
def rename_noreplace_refuses(m: Path) -> Result:
    return renameat2(m / "f", m / "top", 1)


@scenario((b"top\n", b"l1 f\n"))
def rename_exchange_swaps(m: Path) -> Result:
    renameat2(m / "f", m / "top", 2)
    return (m / "f").read_bytes(), (m / "top").read_bytes()


@scenario("EINVAL")
def rename_whiteout_flag_refused(m: Path) -> Result:
    return renameat2(m / "f", m / "g", 4)


@scenario((2, b"l1 f\n"))
def hard_link_of_lower_file(m: Path) -> Result:
    os.link(m / "f", m / "f2")
    return os.stat(m / "f2").st_nlink, (m / "f2").read_bytes()


@scenario((b"hard\nmore\n", 2), reference="KR")
def hard_link_identity_across_copy_up(m: Path) -> Result:
    with open(m / "hl1", "ab") as fh:
        fh.write(b"more\n")
    return (m / "hl2").read_bytes(), os.stat(m / "hl2").st_nlink


@scenario((b"hard\nmore\n", "ENOENT", b"hard\nmore\n"), reference="KR")
def hard_link_names_used_separately(m: Path) -> Result:
    with open(m / "hl1", "ab") as fh:
        fh.write(b"more\n")
    os.stat(m / "hl2")
    os.rename(m / "hl2", m / "hl3")
    try:
        os.stat(m / "hl2")
    except OSError as err:
        gone = errname(err)
    else:
        gone = "exists"
    os.unlink(m / "hl1")
    return (m / "hl3").read_bytes(), gone, (m / "hl3").read_bytes()


@scenario(("f", b"l1 f\n", "target"))
def symlinks(m: Path) -> Result:
    os.symlink("target", m / "newlink")
    return os.readlink(m / "sym"), (m / "sym").read_bytes(), os.readlink(m / "newlink")


@scenario((0o600, 1, 2, True))
def chmod_chown_copy_up_keeps_mtime(m: Path) -> Result:
    os.chmod(m / "dd/a", 0o600)
    os.chown(m / "dd/a", 1, 2)
    st = os.stat(m / "dd/a")
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns == PAST_NS


@scenario(123 * 10**9)
def utimes_copies_up(m: Path) -> Result:
    os.utime(m / "top", ns=(5 * 10**9, 123 * 10**9))
    return os.stat(m / "top").st_mtime_ns


@scenario(1)
def truncate_lower(m: Path) -> Result:
    os.truncate(m / "f", 1)
    return os.stat(m / "f").st_size


@scenario((b"lower", ["user.new", "user.origin"], "ENODATA"))
def xattrs_copy_up_and_hide_overlay_ones(m: Path) -> Result:
    value = os.getxattr(m / "d/x", "user.origin")
    os.setxattr(m / "d/x", "user.new", b"v")
    names = sorted(os.listxattr(m / "d/x"))
    os.removexattr(m / "d/x", "user.new")
    try:
        os.getxattr(m / "d/x", "user.new")
    except OSError as err:
        return value, names, errname(err)
    return value, names, "present"


@scenario(([], "ENODATA", "ok"))
def overlay_xattrs_are_hidden(m: Path) -> Result:
    listed = [n for n in os.listxattr(m / "opq") if "overlay" in n]
    errors = []
    for call in (
        lambda: os.getxattr(m / "opq", "trusted.overlay.opaque"),
        lambda: os.setxattr(m / "top", "trusted.overlay.opaque", b"y"),
    ):
        try:
            call()
            errors.append("ok")
        except OSError as err:
            errors.append(errname(err))
    return listed, *errors


@scenario(True)
def mkfifo_and_mknod(m: Path) -> Result:
    os.mkfifo(m / "fifo", 0o644)
    return stat.S_ISFIFO(os.lstat(m / "fifo").st_mode)


@scenario((False, True))
def readdir_snapshot_until_rewind(m: Path) -> Result:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.opendir.restype = ctypes.c_void_p
    libc.readdir.restype = ctypes.c_void_p
    libc.readdir.argtypes = [ctypes.c_void_p]
    libc.rewinddir.argtypes = [ctypes.c_void_p]
    libc.closedir.argtypes = [ctypes.c_void_p]

    def names(dirp: int) -> list[str]:
        out = []
        while True:
            ent = libc.readdir(dirp)
            if not ent:
                return out
            out.append(ctypes.string_at(ent + 19).decode())

    dirp = libc.opendir(os.fsencode(m / "d"))
    first = libc.readdir(dirp)
    assert first
    (m / "d/late").write_text("late")
    seen_before = "late" in names(dirp)
    libc.rewinddir(dirp)
    seen_after = "late" in names(dirp)
    libc.closedir(dirp)
    return seen_before, seen_after


@scenario((True, True), reference="KR")  # KR: a new dir in a merged dir is opaque, as ours
def readdir_continues_its_snapshot(m: Path) -> Result:
    """A reader part-way through a big dir (several READDIRs) while another lists it from the
    start and names come and go: every name untouched meanwhile is seen exactly once, and a
    second opendir() lists the same names (the kernel may answer it from its cache)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.opendir.restype = ctypes.c_void_p
    libc.readdir.restype = ctypes.c_void_p
    libc.readdir.argtypes = [ctypes.c_void_p]
    libc.closedir.argtypes = [ctypes.c_void_p]
    big = m / "big"
    big.mkdir()
    names = [f"n{i:05d}" for i in range(3000)]
    for name in names:
        os.close(os.open(big / name, os.O_CREAT | os.O_WRONLY, 0o644))
    dirp = libc.opendir(os.fsencode(big))
    seen: list[str] = []
    for _ in range(500):
        ent = libc.readdir(dirp)
        assert ent
        seen.append(ctypes.string_at(ent + 19).decode())
    listed = set(os.listdir(big))  # another reader, from the start
    os.unlink(big / names[-1])
    os.close(os.open(big / "late", os.O_CREAT | os.O_WRONLY, 0o644))
    while ent := libc.readdir(dirp):
        seen.append(ctypes.string_at(ent + 19).decode())
    libc.closedir(dirp)
    untouched = names[:-1]
    counts = dict.fromkeys(untouched, 0)
    for n in seen:
        if n in counts:
            counts[n] += 1
    return all(c == 1 for c in counts.values()), listed == set(names)


@scenario([])
def whiteout_over_whiteout(m: Path) -> Result:
    (m / "gone").write_text("again")
    os.unlink(m / "gone")
    return [n for n in os.listdir(m) if n == "gone"]


@scenario(True)
def statfs_and_fsync(m: Path) -> Result:
    st = os.statvfs(m)
    fd = os.open(m / "f", os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"x")
    os.fsync(fd)
    os.close(fd)
    return st.f_bsize > 0


# suid/sgid clearing (the VFS rule: set-user-ID always, set-group-ID only when group-executable;
# on write/truncate only for callers without CAP_FSETID, on chown for everyone).
_USER = 4242


def _as_user(fn: Callable[[], object]) -> object:
    """Run ``fn`` in a child as uid/gid 4242 (no CAP_FSETID); its result, or the errno name."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        code = 0
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(_USER)
            os.setuid(_USER)
            try:
                out = repr(fn())
            except OSError as err:
                out = repr(errname(err))
            os.write(w, out.encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as fh:
        data = fh.read()
    _, status = os.waitpid(pid, 0)
    assert status == 0, "the child running as another user failed"
    return eval(data.decode())  # the repr of our own str/int/None


def _setid_file(path: Path, mode: int) -> None:
    write(path, "#!/bin/sh\n")
    os.chmod(path, mode)


def _user_append(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"more\n")
    finally:
        os.close(fd)


@scenario({"suid": 0o777, "suid+sgid": 0o777, "sgid, g-x": 0o767, "root": 0o4777, "lower": 0o775})
def write_clears_setuid(m: Path) -> Result:
    _setid_file(m / "s", 0o4777)
    _setid_file(m / "sg", 0o6777)
    _setid_file(m / "g", 0o2767)
    _setid_file(m / "r", 0o4777)
    os.chmod(m / "f", 0o4777)  # a lower file: copied up by the chmod
    os.chmod(m, 0o777)  # copy up the dir too, so the lower file's dir is the same on both
    os.chmod(m / "f", 0o6775 | 0o002)
    out: dict[str, object] = {}
    for key, name in (("suid", "s"), ("suid+sgid", "sg"), ("sgid, g-x", "g")):
        _as_user(lambda name=name: _user_append(m / name))
        out[key] = stat.S_IMODE(os.stat(m / name).st_mode)
    _user_append(m / "r")  # root has CAP_FSETID: nothing cleared
    out["root"] = stat.S_IMODE(os.stat(m / "r").st_mode)
    _as_user(lambda: _user_append(m / "f"))
    out["lower"] = stat.S_IMODE(os.stat(m / "f").st_mode) & ~0o002
    return out


@scenario({"truncate": 0o777, "O_TRUNC": 0o777, "root": 0o4777})
def truncate_clears_setuid(m: Path) -> Result:
    _setid_file(m / "t", 0o4777)
    _setid_file(m / "o", 0o4777)
    _setid_file(m / "r", 0o4777)
    _as_user(lambda: os.truncate(m / "t", 1))

    def open_trunc() -> None:
        os.close(os.open(m / "o", os.O_WRONLY | os.O_TRUNC))

    _as_user(open_trunc)
    os.truncate(m / "r", 1)
    return {
        "truncate": stat.S_IMODE(os.stat(m / "t").st_mode),
        "O_TRUNC": stat.S_IMODE(os.stat(m / "o").st_mode),
        "root": stat.S_IMODE(os.stat(m / "r").st_mode),
    }


@scenario({"chown": 0o755, "chown -1 -1": 0o755, "chgrp sgid": 0o755, "sgid, g-x": 0o2745})
def chown_clears_setuid(m: Path) -> Result:
    _setid_file(m / "a", 0o4755)
    _setid_file(m / "b", 0o4755)
    _setid_file(m / "c", 0o2755)
    _setid_file(m / "d2", 0o2745)
    os.chown(m / "a", 0, 0)
    os.chown(m / "b", -1, -1)
    os.chown(m / "c", -1, 0)
    os.chown(m / "d2", 0, 0)
    return {
        "chown": stat.S_IMODE(os.stat(m / "a").st_mode),
        "chown -1 -1": stat.S_IMODE(os.stat(m / "b").st_mode),
        "chgrp sgid": stat.S_IMODE(os.stat(m / "c").st_mode),
        "sgid, g-x": stat.S_IMODE(os.stat(m / "d2").st_mode),
    }


# --------------------------------------------------------------------------- the mounts
@dataclass
class Mounts:
    base: Path
    lowers: list[Path]
    targets: dict[str, Path]
    uppers: dict[str, Path]


@pytest.fixture(scope="module")
def mounts() -> Iterator[Mounts]:
    require_overlay()
    require_fuse()
    base = world_dir("ovu-fuse-scen-")
    l1, l2 = base / "l1", base / "l2"
    for s in SCENARIOS:
        build_subtree(l1 / s.name, l2 / s.name)
    set_past(l1)
    set_past(l2)
    targets: dict[str, Path] = {}
    uppers: dict[str, Path] = {}
    mounted: list[tuple[str, Path]] = []
    try:
        for key, extra in (("K", []), ("KR", ["redirect_dir=on", "index=on"]), ("O", None)):
            for sub in ("u", "w", "m"):
                (base / f"{key}-{sub}").mkdir()
            targets[key] = base / f"{key}-m"
            uppers[key] = base / f"{key}-u"
            if extra is None:
                ours_mount([l1, l2], base / "O-u", base / "O-w", targets[key])
            else:
                kernel_mount([l1, l2], base / f"{key}-u", base / f"{key}-w", targets[key], extra)
            mounted.append((key, targets[key]))
        yield Mounts(base, [l1, l2], targets, uppers)
    finally:
        for key, target in mounted:
            (ours_umount if key == "O" else kernel_umount)(target)
        remove_tree(base)


def _run(fn: Callable[[Path], Result], m: Path) -> Result:
    try:
        result = fn(m)
    except OSError as err:
        return errname(err)
    if (
        isinstance(result, int)
        and not isinstance(result, bool)
        and fn.__name__.startswith(("creat_excl",))
    ):
        return "opened"
    return result


@pytest.mark.parametrize("sc", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_scenario(mounts: Mounts, sc: Scenario) -> None:
    ref = mounts.targets[sc.reference] / sc.name
    ours = mounts.targets["O"] / sc.name
    ref_result = _run(sc.run, ref)
    our_result = _run(sc.run, ours)
    assert ref_result == sc.expect, f"the kernel ({sc.reference}) gave {ref_result!r}"
    assert our_result == sc.expect, f"ours gave {our_result!r}, kernel {ref_result!r}"
    ref_merged, our_merged = snapshot(ref), snapshot(ours)
    assert ref_merged == our_merged, "merged views differ:\n" + describe_diff(
        ref_merged, our_merged
    )
    ref_upper = snapshot(mounts.uppers[sc.reference] / sc.name, upper=True)
    our_upper = snapshot(mounts.uppers["O"] / sc.name, upper=True)
    assert ref_upper == our_upper, "upper dirs differ:\n" + describe_diff(ref_upper, our_upper)


def test_every_object_reports_the_mount_st_dev(mounts: Mounts) -> None:
    m = mounts.targets["O"] / "read_does_not_copy_up"
    devs = {os.lstat(p).st_dev for p in (m, m / "d", m / "f", m / "dd/a", m / "top")}
    assert devs == {os.stat(mounts.targets["O"]).st_dev}


def test_inode_numbers_stable_across_copy_up(mounts: Mounts) -> None:
    m = mounts.targets["O"] / "utimes_copies_up"
    before = os.stat(m / "dd/a").st_ino
    os.chmod(m / "dd/a", 0o600)
    assert os.stat(m / "dd/a").st_ino == before
    assert (mounts.uppers["O"] / "utimes_copies_up/dd/a").exists()


def test_kernel_default_refuses_lower_dir_rename(mounts: Mounts) -> None:
    """Where ours differs on purpose: the default kernel (redirect_dir=off) refuses."""
    m = mounts.targets["K"] / "rename_lower_only_dir"
    with pytest.raises(OSError, match="Invalid cross-device link"):
        os.rename(m / "d", m / "d3")
