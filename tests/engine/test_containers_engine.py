"""engine.containers through its Python API: the state machine, records and lookups, paths
resolved inside the rootfs (workdir and user), the init layer against hostile images, and
what other parts ask of it (images in use, inspect's key order)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import require_binary, require_overlay, require_root
from overunder.engine.container_record import (
    ContainerRecord,
    State,
    list_records,
    load_record,
    save_record,
)
from overunder.engine.container_rootfs import resolve_user, resolve_workdir
from overunder.engine.paths import EnginePaths
from overunder.errors import FailedPrecondition, InvalidArgument, NotFound

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))
import g_busybox

IMAGE = "busybox:engine"


def _record(cid: str, name: str) -> ContainerRecord:
    return ContainerRecord(
        id=cid,
        name=name,
        created="2026-11-27T00:00:00.000000000Z",
        image_id="sha256:" + "a" * 64,
        image_name="img",
        path="sh",
        args=[],
        config={"Hostname": cid[:12]},
        host_config={},
    )


def test_state_machine() -> None:
    rec = _record("1" * 64, "x")
    assert rec.state.status == State.CREATED
    rec.set_state(State.RUNNING)
    rec.set_state(State.PAUSED)
    rec.set_state(State.RUNNING)
    rec.set_state(State.EXITED)
    rec.set_state(State.RUNNING)  # start again
    rec.set_state(State.RESTARTING)  # a restart policy's backoff
    docker = rec.state.to_docker()
    assert (docker["Status"], docker["Running"], docker["Restarting"]) == ("restarting", True, True)
    with pytest.raises(FailedPrecondition, match="cannot go from restarting to paused"):
        rec.set_state(State.PAUSED)
    rec.set_state(State.RUNNING)  # restarted by the shim
    with pytest.raises(FailedPrecondition, match="cannot go from running to created"):
        rec.set_state(State.CREATED)
    rec.set_state(State.REMOVING)
    with pytest.raises(FailedPrecondition):
        rec.set_state(State.RUNNING)
    rec.set_state(State.DEAD)
    assert rec.state.to_docker()["Dead"] is True
    assert list(rec.state.to_docker()) == [
        "Status", "Running", "Paused", "Restarting", "OOMKilled", "Dead", "Pid", "ExitCode",
        "Error", "StartedAt", "FinishedAt",
    ]  # fmt: skip


def test_records_and_lookup(tmp_path: Path) -> None:
    from overunder.engine.containers import find_container

    paths = EnginePaths.resolve(tmp_path / "root")
    a = _record("abc" + "1" * 61, "alpha")
    b = _record("abd" + "2" * 61, "beta")
    for r in (a, b):
        save_record(paths, r)
    assert {r.name for r in list_records(paths)} == {"alpha", "beta"}
    assert load_record(paths, a.id).to_dict() == a.to_dict()
    assert find_container(paths, "beta").id == b.id
    assert find_container(paths, "/alpha").id == a.id
    assert find_container(paths, "abc1").id == a.id
    assert find_container(paths, b.id).id == b.id
    with pytest.raises(InvalidArgument, match="multiple IDs"):
        find_container(paths, "ab")
    with pytest.raises(NotFound, match="No such container: gamma"):
        find_container(paths, "gamma")
    mode = os.stat(tmp_path / "root" / "containers").st_mode & 0o777
    assert mode == 0o700
    assert not list((tmp_path / "root" / "containers" / a.id).glob(".*.tmp"))


def test_workdir_and_user_resolve_inside_rootfs(tmp_path: Path) -> None:
    root = g_busybox.make_rootfs(tmp_path / "rootfs")
    (root / "data").mkdir()
    os.symlink("/proc/self/fd", root / "data" / "fdlink")
    os.symlink("../../../../..", root / "data" / "up")
    os.symlink("/etc", root / "data" / "etclink")
    assert resolve_workdir(root, "/data") == "/data"
    assert resolve_workdir(root, "/data/etclink") == "/etc"
    assert resolve_workdir(root, "/data/up/tmp") == "/tmp"  # .. stops at the rootfs
    assert resolve_workdir(root, "/new/dir") == "/new/dir"
    assert (root / "new" / "dir").is_dir()  # created, as Docker does
    for hostile in ("/proc/self/fd/7", "/data/fdlink/3", "/sys/fs", "/dev/shm/../pts"):
        with pytest.raises(InvalidArgument):
            resolve_workdir(root, hostile)
    with pytest.raises(InvalidArgument, match="absolute"):
        resolve_workdir(root, "tmp")
    with pytest.raises(InvalidArgument, match="not a directory"):
        resolve_workdir(root, "/etc/passwd")
    u = resolve_user(root, "app")
    assert (u.uid, u.gid, u.home) == (1000, 1000, "/home/app")
    u = resolve_user(root, "1000:nogroup")
    assert (u.uid, u.gid) == (1000, 65534)
    assert resolve_user(root, "4242").uid == 4242
    with pytest.raises(InvalidArgument, match="unable to find user nosuch"):
        resolve_user(root, "nosuch")
    # /etc/passwd as a symlink out of the root is read inside the root
    (root / "etc" / "passwd").unlink()
    os.symlink("/etc/shadow-not-here", root / "etc" / "passwd")
    with pytest.raises(InvalidArgument):
        resolve_user(root, "root")


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EnginePaths]:
    if os.geteuid() != 0:
        require_root()
    base = tmp_path_factory.mktemp("g-engine-api")
    root = base / "root"
    g_busybox.build_image(root, IMAGE, work=base)
    paths = EnginePaths.resolve(root)
    yield paths
    from overunder.engine.containers import remove_container

    for r in list_records(paths):
        try:
            remove_container(paths, r.id, force=True)
        except Exception:
            continue


def test_images_in_use_blocks_rmi(engine: EnginePaths) -> None:
    require_root()
    require_overlay()
    from overunder.engine.container_rootfs import create_snapshots
    from overunder.engine.containers import (
        RunOptions,
        create_container,
        images_in_use,
        inspect_container,
        remove_container,
    )
    from overunder.engine.images import rmi, stores

    # A create killed after its snapshots but before its record: the next create cleans up.
    snaps = stores(engine).snapshots
    ghost = "f" * 64
    top = next(k for k in snaps.snapshots() if k.startswith("sha256:"))
    create_snapshots(snaps, ghost, top, None, "overlay")
    assert snaps.exists(ghost)
    rec = create_container(engine, RunOptions(image=IMAGE, command=["true"], network="none"))
    assert not snaps.exists(ghost)
    assert not snaps.exists(ghost + "-init")
    try:
        assert images_in_use(engine) == {rec.image_id: [rec.id]}
        result = rmi(engine, [IMAGE])
        assert len(result.errors) == 1
        assert isinstance(result.errors[0], FailedPrecondition)
        assert f"container {rec.id[:12]} is using its referenced image" in str(result.errors[0])
        data = inspect_container(engine, rec)
        assert list(data)[:12] == [
            "Id", "Created", "Path", "Args", "State", "Image", "ResolvConfPath",
            "HostnamePath", "HostsPath", "LogPath", "Name", "RestartCount",
        ]  # fmt: skip
        assert list(data)[-5:] == ["HostConfig", "GraphDriver", "Mounts", "Config",
                                   "NetworkSettings"]  # fmt: skip
        assert data["Name"] == "/" + rec.name
        assert data["Config"]["Hostname"] == rec.id[:12]
        assert data["Path"] == "true"
        lowers = data["GraphDriver"]["Data"]["LowerDir"].split(":")
        assert len(lowers) == 2  # init layer, then the image's one layer
    finally:
        remove_container(engine, rec.id)
    assert images_in_use(engine) == {}


def test_image_with_dev_symlink_gets_a_real_dev(engine: EnginePaths, tmp_path: Path) -> None:
    """An image whose /dev and /proc are symlinks must not steer the runtime's mounts
    (the init layer's real dirs hide them, as Docker's does)."""
    require_root()
    require_overlay()
    require_binary("runc")
    from overunder.engine.containers import (
        Attach,
        RunOptions,
        create_container,
        remove_container,
        start_container,
    )

    work = tmp_path / "img"
    rootfs = g_busybox.make_rootfs(work / "rootfs")
    (rootfs / "dev").rmdir()
    os.symlink("/tmp", rootfs / "dev")
    g_busybox.build_image(engine.root, "busybox:devlink", work=work)
    rec = create_container(
        engine, RunOptions(image="busybox:devlink", command=["true"], network="none")
    )
    out = tmp_path / "out"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        rec2 = create_container(
            engine,
            RunOptions(
                image="busybox:devlink",
                command=["sh", "-c", "ls -ld /dev | cut -c1; ls /tmp"],
                network="none",
                attach=True,
            ),
        )
        _, handle = start_container(engine, rec2.id, attach=Attach(None, fd, fd))
        assert handle is not None
        assert handle.wait_exit() == 0
        handle.close()
    finally:
        os.close(fd)
        remove_container(engine, rec.id, force=True)
        remove_container(engine, rec2.id, force=True)
    assert out.read_text() == "d\n"  # a real /dev; nothing was mounted into /tmp
