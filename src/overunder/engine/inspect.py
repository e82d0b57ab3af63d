"""``inspect``: containers first (engineer G's ``engine.containers``), then images, like
Docker. Returns the objects found and the names that matched nothing."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

from overunder.engine.paths import EnginePaths
from overunder.errors import InvalidArgument, NotFound

__all__ = ["TYPES", "inspect_objects"]

TYPES = ("container", "image")


def _container(paths: EnginePaths, name: str) -> dict[str, Any] | None:
    try:
        cmod = importlib.import_module("overunder.engine.containers")
    except ImportError:
        return None
    find = getattr(cmod, "find_container", None)
    inspect = getattr(cmod, "inspect_container", None)
    if find is None or inspect is None:
        return None
    try:
        rec = find(paths, name)
    except (NotFound, InvalidArgument):
        return None
    result: dict[str, Any] = inspect(paths, rec)
    return result


def _image(paths: EnginePaths, name: str) -> dict[str, Any] | None:
    from overunder.engine.images import inspect_image, stores

    try:
        rec = stores(paths).images.resolve(name)
    except (NotFound, InvalidArgument):
        return None
    return inspect_image(paths, rec)


def inspect_objects(
    paths: EnginePaths, names: Sequence[str], *, type: str | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """(objects in argument order, names not found). ``type`` limits the lookup to
    ``container`` or ``image``."""
    if type is not None and type not in TYPES:
        raise InvalidArgument(
            f'"{type}" is not a valid value for --type', hint="use container or image"
        )
    found: list[dict[str, Any]] = []
    missing: list[str] = []
    for name in names:
        obj = None
        if type in (None, "container"):
            obj = _container(paths, name)
        if obj is None and type in (None, "image"):
            obj = _image(paths, name)
        if obj is None:
            missing.append(name)
        else:
            found.append(obj)
    return found, missing
