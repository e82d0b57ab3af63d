"""Image configs (``application/vnd.docker.container.image.v1+json`` / OCI config).

:class:`ImageConfig` wraps the parsed JSON and keeps every field, known or not, so that a
config read and written again loses nothing. Configs we create (``import``, a commit) are
written like dockerd writes them: top-level keys sorted (moby marshals the image through a
map), the container config in the Go struct's field order, compact JSON.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from overunder.content.digest import digest_bytes, validate_digest
from overunder.errors import InvalidArgument

__all__ = [
    "CONTAINER_CONFIG_KEYS",
    "ImageConfig",
    "go_arch",
    "new_container_config",
    "rfc3339nano",
    "serialize_config",
]

# moby api/types/container.Config field order (fields tagged omitempty are left out when empty).
CONTAINER_CONFIG_KEYS = (
    "Hostname",
    "Domainname",
    "User",
    "AttachStdin",
    "AttachStdout",
    "AttachStderr",
    "ExposedPorts",
    "Tty",
    "OpenStdin",
    "StdinOnce",
    "Env",
    "Cmd",
    "Healthcheck",
    "ArgsEscaped",
    "Image",
    "Volumes",
    "WorkingDir",
    "Entrypoint",
    "NetworkDisabled",
    "MacAddress",
    "OnBuild",
    "Labels",
    "StopSignal",
    "StopTimeout",
    "Shell",
)
_OMITEMPTY = frozenset(
    {
        "ExposedPorts",
        "Healthcheck",
        "ArgsEscaped",
        "NetworkDisabled",
        "MacAddress",
        "StopSignal",
        "StopTimeout",
        "Shell",
    }
)
_ZERO: dict[str, Any] = {
    "Hostname": "",
    "Domainname": "",
    "User": "",
    "AttachStdin": False,
    "AttachStdout": False,
    "AttachStderr": False,
    "Tty": False,
    "OpenStdin": False,
    "StdinOnce": False,
    "Env": None,
    "Cmd": None,
    "Image": "",
    "Volumes": None,
    "WorkingDir": "",
    "Entrypoint": None,
    "OnBuild": None,
    "Labels": None,
}

_GO_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "i386": "386",
    "i686": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def go_arch(machine: str | None = None) -> str:
    """This host's architecture in GOARCH spelling (``amd64``, ``arm64``)."""
    m = machine or os.uname().machine
    return _GO_ARCH.get(m, m)


def rfc3339nano(t: float | None = None, *, ns: int | None = None) -> str:
    """Go's RFC3339Nano in UTC (trailing zeros of the fraction dropped, as Go does)."""
    if ns is None:
        ns = time.time_ns() if t is None else int(t * 1e9)
    secs, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if frac:
        base += "." + f"{frac:09d}".rstrip("0")
    return base + "Z"


def parse_time(s: str | None) -> float:
    """Seconds since the epoch from an RFC 3339 string; 0.0 when absent or unreadable."""
    if not s:
        return 0.0
    from datetime import datetime

    text = s.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # Python takes at most 6 fraction digits.
    if "." in text:
        head, _, rest = text.partition(".")
        digits = ""
        i = 0
        while i < len(rest) and rest[i].isdigit():
            digits += rest[i]
            i += 1
        text = head + "." + (digits[:6].ljust(6, "0")) + rest[i:]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


def new_container_config(values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A container config with Docker's keys in Docker's order; ``values`` override."""
    src = dict(values or {})
    out: dict[str, Any] = {}
    for key in CONTAINER_CONFIG_KEYS:
        if key in src:
            v = src.pop(key)
            if key in _OMITEMPTY and not v:
                continue
            out[key] = v
        elif key in _ZERO:
            out[key] = _ZERO[key]
    out.update(src)  # unknown keys kept, after the known ones
    return out


def serialize_config(doc: Mapping[str, Any]) -> bytes:
    """Top-level keys sorted, nested objects in their given order, compact (dockerd's form)."""
    return json.dumps({k: doc[k] for k in sorted(doc)}, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """A parsed image config; ``raw`` holds every field as read."""

    raw: Mapping[str, Any]
    digest: str

    @classmethod
    def parse(cls, data: bytes, *, digest: str | None = None) -> ImageConfig:
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as err:
            raise InvalidArgument(f"image config is not valid JSON: {err}") from err
        if not isinstance(doc, dict):
            raise InvalidArgument("image config is not a JSON object")
        rootfs = doc.get("rootfs")
        if not isinstance(rootfs, dict) or not isinstance(rootfs.get("diff_ids"), list):
            raise InvalidArgument(
                "image config has no rootfs.diff_ids",
                hint="the image is malformed (or not a container image config)",
            )
        for d in rootfs["diff_ids"]:
            validate_digest(d)
        return cls(raw=doc, digest=digest or digest_bytes(data))

    @property
    def id(self) -> str:
        """The image id: the config's digest."""
        return self.digest

    @property
    def diff_ids(self) -> list[str]:
        return list(self.raw["rootfs"]["diff_ids"])

    @property
    def history(self) -> list[dict[str, Any]]:
        h = self.raw.get("history")
        return [dict(e) for e in h if isinstance(e, dict)] if isinstance(h, list) else []

    @property
    def config(self) -> dict[str, Any] | None:
        c = self.raw.get("config")
        return dict(c) if isinstance(c, dict) else None

    @property
    def created(self) -> str:
        return str(self.raw.get("created") or "")

    @property
    def created_time(self) -> float:
        return parse_time(self.created)

    @property
    def architecture(self) -> str:
        return str(self.raw.get("architecture") or "")

    @property
    def os(self) -> str:
        return str(self.raw.get("os") or "")

    @property
    def variant(self) -> str | None:
        v = self.raw.get("variant")
        return str(v) if v else None

    @property
    def author(self) -> str:
        return str(self.raw.get("author") or "")

    @property
    def comment(self) -> str:
        return str(self.raw.get("comment") or "")


def build_config(
    *,
    diff_ids: Sequence[str],
    history: Sequence[Mapping[str, Any]],
    config: Mapping[str, Any] | None,
    created: str,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """Bytes of a new image config, dockerd style (used by ``import`` and ``commit``)."""
    doc: dict[str, Any] = {
        "architecture": go_arch(),
        "config": new_container_config(config),
        "container_config": new_container_config(None),
        "created": created,
        "docker_version": "overunder",
        "history": [dict(h) for h in history],
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
    }
    doc.update(extra or {})
    return serialize_config(doc)
