"""Containers: create → mount → start (via the shim) → exit → unmount → rm.

Each verb here is a function over :class:`~overunder.engine.paths.EnginePaths`; the CLI parses
argv and prints. Records and the state machine live in :mod:`container_record`, the tree in
:mod:`container_rootfs`, Docker's inspect shape in :mod:`container_inspect`.

**Never shown running when it is not.** Every read of a container goes through
:func:`reconcile`: a running record whose shim wrote ``exit.json`` becomes exited with that
code; one whose shim is gone (pid dead, or recycled for another process) becomes exited
(code 137, ``State.Error`` says the shim died) after its leftovers are killed; in both cases
the rootfs is unmounted and ``MergedDir`` removed, and ``--rm`` containers are removed.

**Paused** containers are frozen with ``runc pause`` (the cgroup freezer: v1 ``freezer``
here, ``cgroup.freeze`` on v2), the same call ``commit`` uses (engineer H's
``container_commit`` pauses only a *running* container and resumes only what it paused, so a
user's pause survives a commit). ``stop`` of a paused container does what Docker does: the
signal waits while frozen; after the grace period SIGKILL goes to every process and the
cgroup is thawed so that they die. ``kill -s KILL`` and ``rm -f`` thaw too.

**--rm** containers are removed by their shim as soon as they exit (``ShimConfig.on_exit``
runs :mod:`container_autoremove`); a reconcile removes any it missed.

**--restart** policies run in the shim: after an exit it asks the policy (``on-failure[:N]``:
a non-zero code, at most N times; ``always`` and ``unless-stopped``: every exit — the same
thing here, as no daemon restarts), waits Docker's backoff (100 ms doubling, reset after a
10 s run, at most a minute; ``State.Status`` "restarting" meanwhile) and runs ``runc create``
and ``start`` again on the same mounted tree, keeping the log and the published ports (their
relay moves to the new network namespace). It reports in ``restart.json``; reconcile copies
that into the record (``RestartCount``, ``Pid``, ``StartedAt``). ``stop``, ``kill`` (SIGKILL)
and ``rm -f`` first drop a stop marker in the run dir, so that no policy restarts what the user
stopped. Not done: restarting ``always`` containers when the host reboots (no daemon).

Gaps: no anonymous volumes (``rm -v`` has nothing to remove), no UDP ports, no user
namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overunder.engine.container_autoremove import autoremove_argv
from overunder.engine.container_names import random_name
from overunder.engine.container_record import (
    ContainerRecord,
    ContainerState,
    State,
    container_dir,
    containers_lock,
    ensure_private,
    list_records,
    load_record,
    new_container_id,
    record_lock,
    run_dir,
    save_record,
)
from overunder.engine.container_rootfs import (
    create_snapshots,
    merged_dir,
    mount_rootfs,
    remove_snapshots,
    resolve_user,
    resolve_workdir,
    unmount_rootfs,
    write_container_files,
)
from overunder.engine.paths import EnginePaths
from overunder.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OverunderError,
)
from overunder.runtime import (
    BindMount,
    ProcessSpec,
    Resources,
    RuntimeBinary,
    ShimConfig,
    ShimHandle,
    SpecOptions,
    StartError,
    build_spec,
    parse_publish,
    read_exit,
    shim_alive,
    spawn_shim,
)
from overunder.runtime.logs import format_timestamp
from overunder.runtime.runc import signal_number
from overunder.runtime.shim import (
    STOP_MARKER,
    read_restart,
    request_stop,
    wait_shim_exit,
    write_json_atomic,
)
from overunder.runtime.spec import DEFAULT_PATH, build_process
from overunder.snapshots import Snapshotter

__all__ = [
    "Attach",
    "ExecOptions",
    "RunOptions",
    "create_container",
    "exec_in_container",
    "find_container",
    "images_in_use",
    "inspect_container",
    "kill_container",
    "list_containers",
    "log_path",
    "pause_container",
    "reconcile",
    "remove_container",
    "restart_container",
    "runtime_for",
    "start_container",
    "stop_container",
    "unpause_container",
    "wait_container",
]

DRIVER_NAMES = {"overlay": "overlay", "fuse": "fuse.overunder", "fuse.overunder": "fuse.overunder"}
SHIM_DIED = "the container's shim died; the container was stopped"


@dataclass(slots=True)
class RunOptions:
    """``run``/``create`` options (Docker's flags)."""

    image: str
    command: list[str] = field(default_factory=list)
    name: str | None = None
    env: list[str] = field(default_factory=list)
    env_files: list[str] = field(default_factory=list)
    workdir: str | None = None
    user: str | None = None
    entrypoint: str | None = None
    hostname: str | None = None
    volumes: list[str] = field(default_factory=list)
    publish: list[str] = field(default_factory=list)
    network: str = "private"
    interactive: bool = False
    tty: bool = False
    memory: int | None = None
    pids_limit: int | None = None
    cpus: float | None = None
    read_only: bool = False
    storage_driver: str = "overlay"
    runtime: str = "runc"
    auto_remove: bool = False
    no_new_privileges: bool = False
    attach: bool = False  # not detached (for Config.AttachStdout/err)
    # Docker's --security-opt items: no-new-privileges, seccomp=unconfined|PROFILE.json
    security_opt: list[str] = field(default_factory=list)
    privileged: bool = False
    restart: str = "no"  # no | on-failure[:N] | always | unless-stopped


@dataclass(frozen=True, slots=True)
class Attach:
    """The caller's fds handed to the shim for a foreground run/start."""

    stdin: int | None
    stdout: int
    stderr: int


@dataclass(slots=True)
class ExecOptions:
    command: list[str]
    env: list[str] = field(default_factory=list)
    workdir: str | None = None
    user: str | None = None
    interactive: bool = False
    tty: bool = False
    detach: bool = False
    privileged: bool = False


# -- helpers --------------------------------------------------------------------------------------
def _valid_name(name: str) -> str:
    clean = name.removeprefix("/")
    ok = clean and clean[0].isalnum() and all(c.isalnum() or c in "_.-" for c in clean)
    if not ok:
        raise InvalidArgument(
            f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
            hint="pick a name of letters, digits, '_', '.' and '-'",
        )
    return clean


def _parse_env_file(path: str) -> list[str]:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise NotFound(f"open {path}: {err.strerror}", hint="check the --env-file path") from err
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            value = os.environ.get(line)
            if value is None:
                continue
            line = f"{line}={value}"
        out.append(line)
    return out


def _expand_env(items: Sequence[str]) -> list[str]:
    out = []
    for item in items:
        if "=" in item:
            out.append(item)
        elif item in os.environ:  # -e NAME takes the caller's value, as Docker
            out.append(f"{item}={os.environ[item]}")
    return out


def merge_env(base: Sequence[str], extra: Sequence[str]) -> list[str]:
    """Later entries replace earlier ones with the same name, keeping the first position."""
    out: list[str] = []
    index: dict[str, int] = {}
    for item in [*base, *extra]:
        key = item.split("=", 1)[0]
        if key in index:
            out[index[key]] = item
        else:
            index[key] = len(out)
            out.append(item)
    return out


def parse_security_opts(items: Sequence[str], *, no_new_privileges: bool = False) -> list[str]:
    """``--security-opt`` values → what ``HostConfig.SecurityOpt`` records (Docker's form):
    ``no-new-privileges``, ``seccomp=unconfined``, or ``seccomp=<the profile's JSON>`` (the
    file is read now, as Docker's CLI does, so later edits of it change nothing)."""
    from overunder.runtime.seccomp import load_profile

    out: list[str] = ["no-new-privileges"] if no_new_privileges else []
    for raw in items:
        key, sep, value = raw.partition("=")
        if not sep:
            key, sep, value = raw.partition(":")  # Docker's old colon form
        if key == "no-new-privileges" and value in ("", "true"):
            if "no-new-privileges" not in out:
                out.append("no-new-privileges")
        elif key == "no-new-privileges" and value == "false":
            out = [o for o in out if o != "no-new-privileges"]
        elif key == "seccomp" and value == "unconfined":
            out.append("seccomp=unconfined")
        elif key == "seccomp" and value:
            try:
                text = Path(value).read_text()
            except OSError as err:
                raise InvalidArgument(
                    f"opening seccomp profile ({value}) failed: {err.strerror}",
                    hint="give the path of a seccomp profile in Docker's JSON format",
                ) from None
            profile = load_profile(text, source=value)
            out.append("seccomp=" + json.dumps(profile, separators=(",", ":")))
        else:
            raise InvalidArgument(
                f"invalid --security-opt: {raw!r}",
                hint="supported: no-new-privileges, seccomp=unconfined, seccomp=PROFILE.json",
            )
    return out


@dataclass(frozen=True, slots=True)
class SecuritySettings:
    """What a container's ``HostConfig`` says about its confinement."""

    no_new_privileges: bool
    seccomp: bool
    seccomp_profile: dict[str, Any] | None
    privileged: bool
    capabilities: tuple[str, ...]


def security_settings(host_config: dict[str, Any]) -> SecuritySettings:
    from overunder.runtime.spec import DOCKER_CAPABILITIES, host_capabilities

    opts = list(host_config.get("SecurityOpt") or [])
    privileged = bool(host_config.get("Privileged"))
    profile: dict[str, Any] | None = None
    for o in opts:
        if o.startswith("seccomp=") and o != "seccomp=unconfined":
            profile = json.loads(o.removeprefix("seccomp="))
    return SecuritySettings(
        no_new_privileges="no-new-privileges" in opts,
        seccomp="seccomp=unconfined" not in opts and not privileged,
        seccomp_profile=profile,
        privileged=privileged,
        capabilities=host_capabilities() if privileged else DOCKER_CAPABILITIES,
    )


RESTART_POLICIES = ("no", "on-failure", "always", "unless-stopped")


def parse_restart_policy(text: str) -> dict[str, Any]:
    """``--restart`` → Docker's ``HostConfig.RestartPolicy`` object."""
    name, sep, count = text.partition(":")
    if name not in RESTART_POLICIES or (sep and (name != "on-failure" or not count.isdigit())):
        if sep and name in RESTART_POLICIES and name != "on-failure":
            message = f"maximum retry count cannot be used with restart policy '{name}'"
        else:
            message = f"invalid restart policy '{text}'"
        raise InvalidArgument(
            message, hint="use --restart no, on-failure[:MAX-RETRIES], always or unless-stopped"
        )
    return {"Name": name, "MaximumRetryCount": int(count) if sep else 0}


def runtime_for(paths: EnginePaths, name: str) -> RuntimeBinary:
    root = ensure_private(paths.run_root / name)
    return RuntimeBinary.find(name, root)


def log_path(paths: EnginePaths, rec: ContainerRecord) -> Path:
    return container_dir(paths, rec.id) / f"{rec.id}-json.log"


def _image_stores(paths: EnginePaths) -> Any:
    from overunder.engine.images import stores

    return stores(paths)


def _snapshotter(paths: EnginePaths) -> Snapshotter:
    """The snapshot store alone (what rm needs), without importing the image store's
    modules (~20 ms of a short command's start)."""
    return Snapshotter(paths.root / "snapshots")


def _parse_volume(spec: str) -> BindMount:
    parts = spec.split(":")
    if len(parts) < 2 or len(parts) > 3 or not parts[0] or not parts[1]:
        raise InvalidArgument(
            f"invalid volume specification: '{spec}'",
            hint="use -v /host/path:/container/path[:ro] (named volumes are not supported)",
        )
    src, dst = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise InvalidArgument(f"invalid mode: {mode} in -v {spec}", hint="use :ro or :rw")
    if not src.startswith("/"):
        raise InvalidArgument(
            f"-v {spec}: named volumes are not supported; give an absolute host path",
            hint="use -v /host/path:/container/path",
        )
    if not dst.startswith("/"):
        raise InvalidArgument(
            f"invalid mount config for type \"bind\": invalid mount path: '{dst}' mount path "
            "must be absolute",
            hint="give an absolute container path",
        )
    return BindMount(source=os.path.abspath(src), destination=dst, readonly=mode == "ro")


# -- create -------------------------------------------------------------------------------------
def resolve_image(
    paths: EnginePaths, name: str
) -> tuple[str, dict[str, Any], str | None, Path | None]:
    """(image id, image Config, top chain id, top layer dir) for ``name``."""
    from overunder.engine.images import load_config
    from overunder.image.ids import chain_ids

    s = _image_stores(paths)
    rec = s.images.resolve(name)
    cfg = load_config(s, rec.id)
    chains = chain_ids(cfg.diff_ids)
    top = chains[-1] if chains else None
    top_dir = s.snapshots.layer_dir(top) if top else None
    return rec.id, cfg.config or {}, top, top_dir


def create_container(paths: EnginePaths, opts: RunOptions) -> ContainerRecord:
    """``docker create``: the record, the init layer and the container's snapshot. The image
    must be present (the CLI pulls first when asked)."""
    driver = DRIVER_NAMES.get(opts.storage_driver)
    if driver is None:
        raise InvalidArgument(
            f"--storage-driver {opts.storage_driver}: unknown driver",
            hint="use overlay (the kernel's) or fuse (overunder's FUSE overlay)",
        )
    if opts.network not in ("private", "none", "host", "default", "bridge"):
        raise InvalidArgument(
            f"--network {opts.network}: unknown network",
            hint="use private (the default: a network namespace of its own), none or host",
        )
    network = "private" if opts.network in ("default", "bridge") else opts.network
    runtime_for(paths, opts.runtime)  # fail early when the runtime cannot work here
    ports = [parse_publish(p) for p in opts.publish]
    for v in opts.volumes:
        _parse_volume(v)  # validate now, not at start
    resources = Resources(memory=opts.memory, pids_limit=opts.pids_limit, cpus=opts.cpus)
    resources.to_oci()  # validate now, not at start
    security_opt = parse_security_opts(opts.security_opt, no_new_privileges=opts.no_new_privileges)
    restart_policy = parse_restart_policy(opts.restart or "no")
    if opts.auto_remove and restart_policy["Name"] != "no":
        raise InvalidArgument(
            "Conflicting options: --restart and --rm",
            hint="a container removed at its exit cannot be restarted; drop one of them",
        )
    image_id, icfg, top_chain, top_dir = resolve_image(paths, opts.image)

    entrypoint: list[str]
    if opts.entrypoint is not None:
        entrypoint = [opts.entrypoint] if opts.entrypoint else []
        cmd = list(opts.command)
    else:
        entrypoint = list(icfg.get("Entrypoint") or [])
        cmd = list(opts.command) or list(icfg.get("Cmd") or [])
    argv = entrypoint + cmd
    if not argv:
        raise InvalidArgument(
            "no command specified",
            hint="give a command after the image name, or use an image with CMD or ENTRYPOINT",
        )
    user_env = []
    for f in opts.env_files:
        user_env += _parse_env_file(f)
    user_env += _expand_env(opts.env)
    image_env = list(icfg.get("Env") or [])
    config_env = merge_env(image_env, user_env)

    with containers_lock(paths):
        existing = list_records(paths)
        _remove_orphan_snapshots(paths, {r.id for r in existing})
        taken = {r.name: r for r in existing}
        if opts.name is not None:
            name = _valid_name(opts.name)
            if name in taken:
                raise AlreadyExists(
                    f'Conflict. The container name "/{name}" is already in use by container '
                    f'"{taken[name].id}". You have to remove (or rename) that container to be '
                    "able to reuse that name.",
                    hint=f"remove it with 'overunder rm -f {name}' or pick another --name",
                )
        else:
            name = random_name(set(taken))
        cid = new_container_id(paths)
        hostname = opts.hostname or cid[:12]
        process_env = merge_env(
            ["PATH=" + DEFAULT_PATH, f"HOSTNAME={hostname}"] + (["TERM=xterm"] if opts.tty else []),
            config_env,
        )
        s = _image_stores(paths)
        cdir = ensure_private(container_dir(paths, cid))
        try:
            init_key, key = create_snapshots(s.snapshots, cid, top_chain, top_dir, driver)
        except BaseException:
            shutil.rmtree(cdir, ignore_errors=True)
            raise
        config: dict[str, Any] = {
            "Hostname": hostname,
            "Domainname": "",
            "User": opts.user if opts.user is not None else str(icfg.get("User") or ""),
            "AttachStdin": opts.interactive and opts.attach,
            "AttachStdout": opts.attach,
            "AttachStderr": opts.attach,
        }
        if ports:
            config["ExposedPorts"] = {f"{p.container_port}/tcp": {} for p in ports}
        config.update(
            {
                "Tty": opts.tty,
                "OpenStdin": opts.interactive,
                "StdinOnce": opts.interactive and opts.attach,
                "Env": config_env,
                "Cmd": cmd or None,
                "Image": opts.image,
                "Volumes": None,
                "WorkingDir": opts.workdir
                if opts.workdir is not None
                else str(icfg.get("WorkingDir") or ""),
                "Entrypoint": entrypoint or None,
                "OnBuild": None,
                "Labels": dict(icfg.get("Labels") or {}),
            }
        )
        if icfg.get("StopSignal"):
            config["StopSignal"] = str(icfg["StopSignal"])
        port_bindings: dict[str, list[dict[str, str]]] = {}
        for p in ports:
            port_bindings.setdefault(f"{p.container_port}/tcp", []).append(
                {"HostIp": p.host_ip, "HostPort": str(p.host_port) if p.host_port else ""}
            )
        host_config: dict[str, Any] = {
            "Binds": list(opts.volumes) or None,
            "ContainerIDFile": "",
            "LogConfig": {"Type": "json-file", "Config": {}},
            "NetworkMode": network,
            "PortBindings": port_bindings,
            "RestartPolicy": restart_policy,
            "AutoRemove": opts.auto_remove,
            "VolumeDriver": "",
            "VolumesFrom": None,
            "CapAdd": None,
            "CapDrop": None,
            "Dns": [],
            "DnsOptions": [],
            "DnsSearch": [],
            "ExtraHosts": None,
            "GroupAdd": None,
            "IpcMode": "private",
            "Cgroup": "",
            "Links": None,
            "OomScoreAdj": 0,
            "PidMode": "",
            "Privileged": opts.privileged,
            "PublishAllPorts": False,
            "ReadonlyRootfs": opts.read_only,
            "SecurityOpt": security_opt or None,
            "UTSMode": "",
            "UsernsMode": "",
            "ShmSize": 67108864,
            "Runtime": opts.runtime,
            "Isolation": "",
            "CpuShares": 0,
            "Memory": opts.memory or 0,
            "NanoCpus": int((opts.cpus or 0) * 1e9),
            "CgroupParent": "overunder",
            "PidsLimit": opts.pids_limit,
            "StorageDriver": driver,
        }
        now = time.time_ns()
        rec = ContainerRecord(
            id=cid,
            name=name,
            created=format_timestamp(now),
            image_id=image_id,
            image_name=opts.image,
            path=argv[0],
            args=argv[1:],
            config=config,
            host_config=host_config,
            driver=driver,
            snapshot_key=key,
            init_key=init_key,
            runtime=opts.runtime,
            ports=[p.to_dict() for p in ports],
            process_env=process_env,
            created_ns=now,
        )
        write_container_files(cdir, hostname, network)
        save_record(paths, rec)
    return rec


def _remove_orphan_snapshots(paths: EnginePaths, known: set[str]) -> None:
    """Snapshots of containers whose record never got written (a create killed half-way).
    Runs under the containers lock, which every create and rm holds from its first snapshot
    to its record, so nothing found here is in the middle of being made."""
    snaps = _image_stores(paths).snapshots
    orphans = set()
    for key in snaps.snapshots():
        cid = key.split("-", 1)[0]
        if len(cid) == 64 and all(c in "0123456789abcdef" for c in cid) and cid not in known:
            orphans.add(cid)
    for cid in orphans:
        with contextlib.suppress(OverunderError):
            remove_snapshots(snaps, cid, f"{cid}-init")


# -- finding and reconciling -------------------------------------------------------------------
def _match(paths: EnginePaths, name_or_id: str) -> ContainerRecord:
    records = list_records(paths)
    want = name_or_id.removeprefix("/")
    for r in records:
        if r.id == want:
            return r
    for r in records:
        if r.name == want:
            return r
    if want and all(c in "0123456789abcdef" for c in want):
        hits = [r for r in records if r.id.startswith(want)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise InvalidArgument(
                f"multiple IDs found with provided prefix: {want}",
                hint="give more characters of the id, or the name",
            )
    raise NotFound(f"No such container: {name_or_id}", hint="see 'overunder ps -a'")


def find_container(paths: EnginePaths, name_or_id: str) -> ContainerRecord:
    """By full id, name, or unique id prefix (Docker's order); reconciled with reality.
    NotFound ``No such container: X`` otherwise."""
    rec = reconcile(paths, _match(paths, name_or_id))
    if not (container_dir(paths, rec.id) / "config.v2.json").exists():  # --rm took it
        raise NotFound(f"No such container: {name_or_id}", hint="see 'overunder ps -a'")
    return rec


def list_containers(paths: EnginePaths, *, all_states: bool = True) -> list[ContainerRecord]:
    """Newest first, reconciled; only live ones (running, paused, restarting) unless
    ``all_states``."""
    out = []
    for found in list_records(paths):
        try:
            r = reconcile(paths, found)
        except NotFound:
            continue
        if not (container_dir(paths, r.id) / "config.v2.json").exists():
            continue  # --rm took it on the way
        if all_states or _is_live(r):
            out.append(r)
    out.sort(key=lambda r: r.created_ns, reverse=True)
    return out


def _is_live(rec: ContainerRecord) -> bool:
    """Has a shim (running, paused, or between two runs of a restart policy)."""
    return rec.state.status in (State.RUNNING, State.PAUSED, State.RESTARTING)


def _sync_restarts(paths: EnginePaths, rec: ContainerRecord, rd: Path) -> ContainerRecord:
    """Take in what a live shim reported of its restarts (``restart.json``)."""
    info = read_restart(rd)
    if info is None or rec.state.status == State.PAUSED:
        return rec
    want = State.RESTARTING if info.restarting else State.RUNNING
    if info.count == rec.policy_restarts and rec.state.status == want:
        return rec
    with record_lock(paths, rec.id):
        rec = load_record(paths, rec.id)
        if not _is_live(rec) or rec.state.status == State.PAUSED:
            return rec
        if info.count > rec.policy_restarts:
            rec.restart_count += info.count - rec.policy_restarts
            rec.policy_restarts = info.count
        if rec.state.status != want:
            rec.set_state(want)
        if info.restarting:
            rec.state.pid = 0
            rec.state.exit_code = info.exit_code
            rec.state.finished_at = info.finished_at
        else:
            rec.state.pid = info.pid
            rec.state.started_at = info.started_at
        save_record(paths, rec)
    return rec


def reconcile(paths: EnginePaths, rec: ContainerRecord) -> ContainerRecord:
    """Bring a running record in line with its shim (see the module docstring)."""
    if not _is_live(rec):
        return rec
    rd = run_dir(paths, rec.id)
    if read_exit(rd) is None and shim_alive(rd):
        return _sync_restarts(paths, rec, rd)
    with record_lock(paths, rec.id):
        rec = load_record(paths, rec.id)
        if not _is_live(rec):
            return rec
        ex = read_exit(rd)
        if ex is None and shim_alive(rd):
            return rec
        info = read_restart(rd)
        if info is not None and info.count > rec.policy_restarts:
            rec.restart_count += info.count - rec.policy_restarts
            rec.policy_restarts = info.count
        if ex is not None:
            rec.state.exit_code = ex.exit_code
            rec.state.finished_at = ex.finished_at
            rec.state.error = ex.error
        else:
            _kill_leftovers(paths, rec)
            rec.state.exit_code = 137
            rec.state.finished_at = format_timestamp()
            rec.state.error = SHIM_DIED
        rec.set_state(State.EXITED)
        rec.state.pid = 0
        unmount_rootfs(merged_dir(rd))
        save_record(paths, rec)
    if rec.host_config.get("AutoRemove"):
        with contextlib.suppress(NotFound):
            remove_container(paths, rec.id, force=True)
    return rec


def _kill_leftovers(paths: EnginePaths, rec: ContainerRecord) -> None:
    with contextlib.suppress(OverunderError, OSError):
        rt = runtime_for(paths, rec.runtime)
        with contextlib.suppress(OverunderError):
            rt.kill(rec.id, 9, all_processes=True)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            st = rt.state(rec.id)
            if st is None or st.get("status") == "stopped":
                break
            time.sleep(0.02)
        rt.delete(rec.id, force=True)


# -- start ----------------------------------------------------------------------------------------
def _spec_for(paths: EnginePaths, rec: ContainerRecord, rootfs: Path) -> dict[str, Any]:
    user = resolve_user(rootfs, rec.config.get("User") or "0")
    workdir = resolve_workdir(rootfs, rec.config.get("WorkingDir") or "/")
    rec.uid, rec.gid, rec.additional_gids = user.uid, user.gid, list(user.additional_gids)
    env = list(rec.process_env)
    if not any(e.startswith("HOME=") for e in env):
        env.append(f"HOME={user.home if user.home else '/root'}")
    cdir = container_dir(paths, rec.id)
    binds = [
        BindMount(str(cdir / "hostname"), "/etc/hostname"),
        BindMount(str(cdir / "hosts"), "/etc/hosts"),
        BindMount(str(cdir / "resolv.conf"), "/etc/resolv.conf"),
    ]
    for v in rec.host_config.get("Binds") or []:
        b = _parse_volume(v)
        Path(b.source).mkdir(parents=True, exist_ok=True) if not os.path.exists(b.source) else None
        binds.append(b)
    hc = rec.host_config
    sec = security_settings(hc)
    opts = SpecOptions(
        process=ProcessSpec(
            args=[rec.path, *rec.args],
            env=env,
            cwd=workdir,
            uid=user.uid,
            gid=user.gid,
            additional_gids=user.additional_gids,
            terminal=bool(rec.config.get("Tty")),
            no_new_privileges=sec.no_new_privileges,
            capabilities=sec.capabilities,
        ),
        rootfs=str(rootfs),
        hostname=rec.config["Hostname"],
        readonly_rootfs=bool(hc.get("ReadonlyRootfs")),
        network=str(hc.get("NetworkMode") or "private"),
        binds=binds,
        resources=Resources(
            memory=hc.get("Memory") or None,
            pids_limit=hc.get("PidsLimit"),
            cpus=(hc.get("NanoCpus") or 0) / 1e9 or None,
        ),
        cgroups_path=f"/overunder/{rec.id}",
        seccomp=sec.seccomp,
        seccomp_profile=sec.seccomp_profile,
        privileged=sec.privileged,
    )
    return build_spec(opts)


def _terminal_size(attach: Attach | None) -> list[int]:
    from overunder.runtime.console import get_winsize

    if attach is None:
        return []
    for fd in (attach.stdin, attach.stdout):
        if fd is not None and os.isatty(fd):
            with contextlib.suppress(OSError):
                return list(get_winsize(fd))
    return []


def start_container(
    paths: EnginePaths, name_or_id: str, *, attach: Attach | None = None
) -> tuple[ContainerRecord, ShimHandle | None]:
    """Mount the tree, write the bundle and start the shim. A running container is left
    alone (handle None). On a start failure the container stays ``created`` (or ``exited``)
    with ``State.Error`` and the exit code Docker uses, and the error is raised."""
    rec = find_container(paths, name_or_id)
    with record_lock(paths, rec.id):
        rec = load_record(paths, rec.id)
        if _is_live(rec):
            return rec, None
        if rec.state.status not in (State.CREATED, State.EXITED):
            raise FailedPrecondition(
                f"container {rec.name} is {rec.state.status}; it cannot be started",
                hint="remove it with 'overunder rm -f'",
            )
        rt = runtime_for(paths, rec.runtime)
        ensure_private(paths.run_root / "containers")
        rd = ensure_private(run_dir(paths, rec.id))
        for leftover in ("exit.json", "shim.pid", "init.pid", "restart.json", STOP_MARKER):
            with contextlib.suppress(FileNotFoundError):
                (rd / leftover).unlink()
        if (rt.state_root / rec.id).exists():  # a runtime record from a crash blocks create
            with contextlib.suppress(OverunderError):
                rt.delete(rec.id, force=True)
        s = _image_stores(paths)
        target = merged_dir(rd)
        mount_rootfs(s.snapshots, rec.snapshot_key, rec.driver, target)
        try:
            spec = _spec_for(paths, rec, target)
            bundle = rd / "bundle"
            bundle.mkdir(mode=0o700, exist_ok=True)
            policy = rec.host_config.get("RestartPolicy") or {}
            write_json_atomic(bundle / "config.json", spec)
            cfg = ShimConfig(
                container_id=rec.id,
                bundle=str(bundle),
                state_dir=str(rd),
                log_path=str(log_path(paths, rec)),
                runtime_name=rt.name,
                runtime_path=rt.path,
                runtime_root=str(rt.state_root),
                ports=list(rec.ports),
                network_host=rec.host_config.get("NetworkMode") == "host",
                attach=attach is not None,
                stdin=attach is not None and attach.stdin is not None,
                tty=bool(rec.config.get("Tty")),
                # FUSE mounts end through their own process (the engine's unmount does it).
                unmount_after_exit=str(target) if rec.driver == "overlay" else "",
                console_size=_terminal_size(attach) if rec.config.get("Tty") else [],
                on_exit=autoremove_argv(paths, rec.id) if rec.host_config.get("AutoRemove") else [],
                restart_policy=str(policy.get("Name") or "no"),
                restart_max=int(policy.get("MaximumRetryCount") or 0),
            )
            handle = spawn_shim(
                cfg,
                stdin=attach.stdin if attach else None,
                stdout=attach.stdout if attach else None,
                stderr=attach.stderr if attach else None,
            )
        except StartError as err:
            unmount_rootfs(target)
            rec.state.error = err.message
            rec.state.exit_code = err.exit_code
            save_record(paths, rec)
            raise
        except BaseException:
            unmount_rootfs(target)
            raise
        rec.set_state(State.RUNNING)
        rec.policy_restarts = 0
        rec.state.pid = handle.pid
        rec.state.exit_code = 0
        rec.state.error = ""
        rec.state.started_at = format_timestamp()
        rec.state.finished_at = "0001-01-01T00:00:00Z"
        rec.ports = [p.to_dict() for p in handle.ports]
        save_record(paths, rec)
    return rec, handle


# -- stop, kill, wait --------------------------------------------------------------------------
def _wait_exit(paths: EnginePaths, rec: ContainerRecord, timeout: float | None) -> bool:
    return wait_shim_exit(run_dir(paths, rec.id), timeout)


def stop_container(
    paths: EnginePaths, name_or_id: str, *, timeout: float | None = None
) -> ContainerRecord:
    """SIGTERM (or the image's StopSignal), ``timeout`` seconds (default 10), then SIGKILL."""
    rec = find_container(paths, name_or_id)
    if not _is_live(rec):
        return rec
    rt = runtime_for(paths, rec.runtime)
    request_stop(run_dir(paths, rec.id))  # no restart policy applies after a stop
    grace = 10.0 if timeout is None else max(0.0, timeout)
    sig = signal_number(str(rec.config.get("StopSignal") or "TERM"))
    with contextlib.suppress(OverunderError):
        rt.signal_init(rec.id, sig)
    if not _wait_exit(paths, rec, grace):
        with contextlib.suppress(OverunderError):
            rt.kill(rec.id, 9, all_processes=True)
        _thaw(rt, rec)
        if not _wait_exit(paths, rec, 10.0):
            raise FailedPrecondition(
                f"container {rec.name} did not stop after SIGKILL",
                hint="see 'overunder inspect' and the shim.log in its run dir",
            )
    return _reconciled_or_gone(paths, rec)


def _reconciled_or_gone(paths: EnginePaths, rec: ContainerRecord) -> ContainerRecord:
    """The record after an exit; the last one we had when a ``--rm`` shim already removed
    the container (stop and kill of such a container succeed, as in Docker)."""
    try:
        return reconcile(paths, load_record(paths, rec.id))
    except NotFound:
        return rec


def _thaw(rt: RuntimeBinary, rec: ContainerRecord) -> None:
    """Resume a paused container's cgroup so that a SIGKILL sent to it takes effect."""
    if rec.state.status == State.PAUSED:
        with contextlib.suppress(OverunderError):
            rt.resume(rec.id)


def pause_container(paths: EnginePaths, name_or_id: str) -> ContainerRecord:
    """``docker pause``: freeze every process of the container (``runc pause``)."""
    rec = find_container(paths, name_or_id)
    with record_lock(paths, rec.id):
        rec = load_record(paths, rec.id)
        if rec.state.status == State.PAUSED:
            raise FailedPrecondition(
                f"Container {rec.id} is already paused", hint=f"'overunder unpause {name_or_id}'"
            )
        if rec.state.status != State.RUNNING:
            raise FailedPrecondition(
                f"Container {rec.id} is not running",
                hint=f"start it with 'overunder start {name_or_id}'",
            )
        rec.set_state(State.PAUSED)
        runtime_for(paths, rec.runtime).pause(rec.id)
        save_record(paths, rec)
    return rec


def unpause_container(paths: EnginePaths, name_or_id: str) -> ContainerRecord:
    """``docker unpause``: thaw a paused container."""
    rec = find_container(paths, name_or_id)
    with record_lock(paths, rec.id):
        rec = load_record(paths, rec.id)
        if rec.state.status != State.PAUSED:
            raise FailedPrecondition(
                f"Container {rec.id} is not paused", hint="see its state with 'overunder ps -a'"
            )
        rec.set_state(State.RUNNING)
        runtime_for(paths, rec.runtime).resume(rec.id)
        save_record(paths, rec)
    return rec


def kill_container(paths: EnginePaths, name_or_id: str, *, signal: str = "KILL") -> ContainerRecord:
    rec = find_container(paths, name_or_id)
    sig = signal_number(signal)
    if not _is_live(rec):
        raise FailedPrecondition(
            f"Cannot kill container: {name_or_id}: Container {rec.id} is not running",
            hint="start it first",
        )
    rt = runtime_for(paths, rec.runtime)
    if sig == 9:
        request_stop(run_dir(paths, rec.id))
    with contextlib.suppress(NotFound):
        rt.signal_init(rec.id, sig)
    if sig == 9:
        _thaw(rt, rec)
        _wait_exit(paths, rec, 10.0)
        return _reconciled_or_gone(paths, rec)
    return rec


def wait_container(paths: EnginePaths, name_or_id: str) -> int:
    """Block until the container is not running; its exit code."""
    rec = find_container(paths, name_or_id)
    if _is_live(rec):
        _wait_exit(paths, rec, None)
        # Read the code before a --rm shim's removal can take the run dir with it.
        ex = read_exit(run_dir(paths, rec.id))
        try:
            rec = reconcile(paths, load_record(paths, rec.id))
        except NotFound:
            if ex is None:
                raise
            return ex.exit_code
    return rec.state.exit_code


def restart_container(
    paths: EnginePaths, name_or_id: str, *, timeout: float | None = None
) -> ContainerRecord:
    stop_container(paths, name_or_id, timeout=timeout)
    rec, handle = start_container(paths, name_or_id)
    if handle is not None:
        handle.close()
    with record_lock(paths, rec.id):
        rec = load_record(paths, rec.id)
        rec.restart_count += 1
        save_record(paths, rec)
    return rec


# -- rm ---------------------------------------------------------------------------------------
def remove_container(
    paths: EnginePaths, name_or_id: str, *, force: bool = False
) -> ContainerRecord:
    """``docker rm``: a running container only with ``force`` (killed first). Removes the
    mount, the runtime's state, the snapshots, and both of the container's dirs."""
    rec = _match(paths, name_or_id)
    rec = reconcile(paths, rec) if not rec.host_config.get("AutoRemove") else rec
    # A --rm container that has just exited still has a live record (reconcile is skipped
    # for it, not to recurse): its exit.json says there is nothing to kill (a runc round trip).
    if _is_live(rec) and read_exit(run_dir(paths, rec.id)) is None:
        if not force:
            raise FailedPrecondition(
                f"You cannot remove a running container {rec.id}. Stop the container before "
                "attempting removal or force remove",
                hint=f"use 'overunder rm -f {name_or_id}'",
            )
        request_stop(run_dir(paths, rec.id))
        with contextlib.suppress(OverunderError):
            rt = runtime_for(paths, rec.runtime)
            rt.signal_init(rec.id, 9)
            _thaw(rt, rec)
        _wait_exit(paths, rec, 10.0)
    with containers_lock(paths), contextlib.ExitStack() as held:
        try:
            held.enter_context(record_lock(paths, rec.id))
            rec = load_record(paths, rec.id)
        except NotFound:
            return rec  # removed meanwhile (a --rm shim, or another rm)
        rd = run_dir(paths, rec.id)
        if _is_live(rec) and read_exit(rd) is None and shim_alive(rd):
            raise FailedPrecondition(f"container {rec.name} is still running after SIGKILL")
        rec.state.status = State.REMOVING
        save_record(paths, rec)
        try:
            unmount_rootfs(merged_dir(rd))
            with contextlib.suppress(OverunderError):
                rt = runtime_for(paths, rec.runtime)
                if (rt.state_root / rec.id).exists():
                    rt.delete(rec.id, force=True)
            remove_snapshots(_snapshotter(paths), rec.snapshot_key, rec.init_key)
        except BaseException:
            rec.state.status = State.DEAD
            save_record(paths, rec)
            raise
        shutil.rmtree(rd, ignore_errors=True)
        cdir = container_dir(paths, rec.id)
        # The record goes first (rename away), then the rest of the dir.
        with contextlib.suppress(FileNotFoundError):
            (cdir / "config.v2.json").unlink()
        shutil.rmtree(cdir, ignore_errors=True)
    return rec


# -- exec -------------------------------------------------------------------------------------
def exec_in_container(paths: EnginePaths, name_or_id: str, opts: ExecOptions) -> int:
    """``docker exec``; the process's exit code (0 at once with ``detach``)."""
    from overunder.runtime.exec import exec_process

    rec = find_container(paths, name_or_id)
    if rec.state.status == State.PAUSED:
        raise FailedPrecondition(f"Container {rec.id} is paused, unpause the container before exec")
    if rec.state.status == State.RESTARTING:
        raise FailedPrecondition(
            f"Container {rec.id} is restarting, wait until the container is running"
        )
    if rec.state.status != State.RUNNING:
        raise FailedPrecondition(
            f"Container {rec.id} is not running",
            hint=f"start it with 'overunder start {name_or_id}'",
        )
    rootfs = merged_dir(run_dir(paths, rec.id))
    sec = security_settings(rec.host_config)
    if opts.user is not None:
        u = resolve_user(rootfs, opts.user)
        uid, gid, extra, home = u.uid, u.gid, list(u.additional_gids), u.home
    else:
        uid, gid, extra, home = rec.uid, rec.gid, rec.additional_gids, ""
    cwd = rec.config.get("WorkingDir") or "/"
    if opts.workdir:
        cwd = opts.workdir
    cwd = resolve_workdir(rootfs, cwd, create=False)
    env = merge_env(rec.process_env, _expand_env(opts.env))
    if opts.tty:
        env = merge_env(env, ["TERM=xterm"])
    if home and not any(e.startswith("HOME=") for e in opts.env):
        env = merge_env(env, [f"HOME={home}"])
    elif not any(e.startswith("HOME=") for e in env):
        env.append("HOME=/root")
    process = build_process(
        ProcessSpec(
            args=opts.command,
            env=env,
            cwd=cwd,
            uid=uid,
            gid=gid,
            additional_gids=extra,
            terminal=opts.tty,
            no_new_privileges=sec.no_new_privileges,
            capabilities=sec.capabilities,
        )
    )
    rt = runtime_for(paths, rec.runtime)
    return exec_process(
        rt,
        rec.id,
        process,
        work_dir=run_dir(paths, rec.id),
        stdin=opts.interactive,
        detach=opts.detach,
    )


# -- what others ask ---------------------------------------------------------------------------
def images_in_use(paths: EnginePaths) -> dict[str, list[str]]:
    """Image id → ids of the containers created from it (``rmi`` refuses those)."""
    out: dict[str, list[str]] = {}
    for r in list_records(paths):
        out.setdefault(r.image_id, []).append(r.id)
    return out


def inspect_container(paths: EnginePaths, rec: ContainerRecord) -> dict[str, Any]:
    from overunder.engine.container_inspect import container_json

    return container_json(paths, reconcile(paths, rec))


_ = ContainerState  # re-exported through container_record for callers that build states
