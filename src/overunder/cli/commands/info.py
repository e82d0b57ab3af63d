"""``overunder info``: the engine's configuration and counts (like ``docker info``)."""

from __future__ import annotations

import argparse
from typing import Any

from overunder.cli.context import Context


def register(sub: Any) -> None:
    p = sub.add_parser(
        "info",
        help="display engine-wide information",
        description="Root dir, storage driver and its backing filesystem, OCI runtime and its "
        "version, cgroup version, and how many containers and images there are.",
    )
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.container_info import engine_info

    info = engine_info(ctx.paths)
    if args.format == "json":
        ctx.json(info.to_dict())
        return 0
    lines = [
        "Server:",
        f" Containers: {info.containers}",
        f"  Running: {info.running}",
        f"  Paused: {info.paused}",
        f"  Stopped: {info.stopped}",
        f" Images: {info.images}",
        f" Server Version: overunder {info.version}",
        f" Storage Driver: {info.storage_driver}",
        f"  Backing Filesystem: {info.backing_filesystem}",
        "  Other drivers: fuse (overunder's FUSE overlay, --storage-driver fuse)",
        " Logging Driver: json-file",
        " Cgroup Driver: cgroupfs",
        f" Cgroup Version: {info.cgroup_version}",
        f" Cgroup Parent: {info.cgroup_parent}",
        f" Runtimes: {' '.join(info.runtimes) or '(none found)'}",
        f" Default Runtime: {info.runtime}",
        f" Runtime Version: {info.runtime_version}",
        f" Kernel Version: {info.kernel}",
        f" Operating System: {info.os_name}",
        " OSType: linux",
        f" Architecture: {info.arch}",
        f" CPUs: {info.cpus}",
        f" Total Memory: {info.memory / 1024**3:.3g}GiB",
        f" Root Dir: {info.root_dir}",
        f" Run Root Dir: {info.run_root}",
    ]
    ctx.out("\n".join(lines))
    return 0
