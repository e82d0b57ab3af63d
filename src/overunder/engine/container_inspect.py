"""``inspect CONTAINER`` in Docker's JSON shape and key order (docker-compat.md §2).

``GraphDriver.Data`` names the real directories: ``LowerDir`` is the init layer's dir first,
then the image's layers top to bottom (colon-separated); ``UpperDir`` and ``WorkDir`` the
container's snapshot dirs; ``MergedDir`` the mount point (present while the container runs).
So ``ls $(overunder inspect -f … )`` on the host shows what the tutorial's steps 19-21 show.
"""

from __future__ import annotations

import contextlib
from typing import Any

from overunder.engine.container_record import ContainerRecord, container_dir, run_dir
from overunder.engine.container_rootfs import merged_dir
from overunder.engine.paths import EnginePaths
from overunder.errors import OverunderError

__all__ = ["container_json", "graph_driver"]


def graph_driver(paths: EnginePaths, rec: ContainerRecord) -> dict[str, Any]:
    from overunder.engine.images import stores

    snaps = stores(paths).snapshots
    data: dict[str, str] = {}
    with contextlib.suppress(OverunderError):
        lowers = snaps.lower_dirs(rec.snapshot_key)
        data["LowerDir"] = ":".join(str(p) for p in lowers)
        data["MergedDir"] = str(merged_dir(run_dir(paths, rec.id)))
        data["UpperDir"] = str(snaps.upper_dir(rec.snapshot_key))
        data["WorkDir"] = str(snaps.work_dir(rec.snapshot_key))
    return {"Data": data, "Name": "overlay" if rec.driver == "overlay" else rec.driver}


def _ports(rec: ContainerRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    running = rec.state.status in ("running", "paused")
    for p in rec.ports:
        key = f"{p['ContainerPort']}/tcp"
        if running:
            out.setdefault(key, []).append(
                {"HostIp": str(p["HostIp"]), "HostPort": str(p["HostPort"])}
            )
        else:
            out.setdefault(key, None)
    return out


def container_json(paths: EnginePaths, rec: ContainerRecord) -> dict[str, Any]:
    cdir = container_dir(paths, rec.id)
    network = str(rec.host_config.get("NetworkMode") or "private")
    mounts = []
    for spec in rec.host_config.get("Binds") or []:
        parts = spec.split(":")
        mode = parts[2] if len(parts) == 3 else ""
        mounts.append(
            {
                "Type": "bind",
                "Source": parts[0],
                "Destination": parts[1],
                "Mode": mode,
                "RW": mode != "ro",
                "Propagation": "rprivate",
            }
        )
    return {
        "Id": rec.id,
        "Created": rec.created,
        "Path": rec.path,
        "Args": list(rec.args),
        "State": rec.state.to_docker(),
        "Image": rec.image_id,
        "ResolvConfPath": str(cdir / "resolv.conf"),
        "HostnamePath": str(cdir / "hostname"),
        "HostsPath": str(cdir / "hosts"),
        "LogPath": str(cdir / f"{rec.id}-json.log"),
        "Name": "/" + rec.name,
        "RestartCount": rec.restart_count,
        "Driver": "overlay" if rec.driver == "overlay" else rec.driver,
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": None,
        "HostConfig": rec.host_config,
        "GraphDriver": graph_driver(paths, rec),
        "Mounts": mounts,
        "Config": rec.config,
        "NetworkSettings": {
            "Bridge": "",
            "SandboxID": "",
            "HairpinMode": False,
            "LinkLocalIPv6Address": "",
            "LinkLocalIPv6PrefixLen": 0,
            "Ports": _ports(rec),
            "SandboxKey": f"/proc/{rec.state.pid}/ns/net" if rec.state.pid else "",
            "SecondaryIPAddresses": None,
            "SecondaryIPv6Addresses": None,
            "EndpointID": "",
            "Gateway": "",
            "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0,
            "IPAddress": "",
            "IPPrefixLen": 0,
            "IPv6Gateway": "",
            "MacAddress": "",
            "Networks": {network: {"NetworkID": network}} if network != "host" else {"host": {}},
        },
    }
