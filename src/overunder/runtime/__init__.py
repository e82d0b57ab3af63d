"""Running processes on a container's tree: the OCI spec, the runtime binary (runc, crun),
the per-container shim (reaper, exit code, json-file logs, port proxy) and ``exec``.

This package knows nothing about images or mounts: it gets a rootfs directory and a bundle
directory and runs them. The engine builds the rootfs (``engine.containers``).
"""

from __future__ import annotations

from overunder.runtime.proxy import PortMapping, parse_publish
from overunder.runtime.runc import RuntimeBinary, StartError
from overunder.runtime.shim import (
    ExitInfo,
    ShimConfig,
    ShimHandle,
    read_exit,
    shim_alive,
    spawn_shim,
)
from overunder.runtime.spec import BindMount, ProcessSpec, Resources, SpecOptions, build_spec

__all__ = [
    "BindMount",
    "ExitInfo",
    "PortMapping",
    "ProcessSpec",
    "Resources",
    "RuntimeBinary",
    "ShimConfig",
    "ShimHandle",
    "SpecOptions",
    "StartError",
    "build_spec",
    "parse_publish",
    "read_exit",
    "shim_alive",
    "spawn_shim",
]
