"""overunder: container layers made real and visible.

The supported Python API is what this module exports; everything else is internal and may
change. :class:`Engine` is the way in (see ``docs/api.md``); errors are the categories of
:mod:`overunder.errors`, the same the CLI prints.
"""

from __future__ import annotations

from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

if _TYPE_CHECKING:
    from overunder.engine.engine import Container as Container
    from overunder.engine.engine import Engine as Engine
    from overunder.engine.engine import ExecResult as ExecResult
    from overunder.engine.engine import Image as Image
    from overunder.errors import AlreadyExists as AlreadyExists
    from overunder.errors import FailedPrecondition as FailedPrecondition
    from overunder.errors import IntegrityError as IntegrityError
    from overunder.errors import InvalidArgument as InvalidArgument
    from overunder.errors import NotFound as NotFound
    from overunder.errors import OverunderError as OverunderError
    from overunder.errors import RegistryError as RegistryError
    from overunder.errors import Unsupported as Unsupported
    from overunder.semantics import Change as Change
    from overunder.semantics import ChangeKind as ChangeKind

# The names resolve on first use, so that `import overunder.something` (and every CLI start)
# does not pay for importing the whole engine.
_LAZY = {
    "Container": "overunder.engine.engine",
    "Engine": "overunder.engine.engine",
    "ExecResult": "overunder.engine.engine",
    "Image": "overunder.engine.engine",
    "AlreadyExists": "overunder.errors",
    "FailedPrecondition": "overunder.errors",
    "IntegrityError": "overunder.errors",
    "InvalidArgument": "overunder.errors",
    "NotFound": "overunder.errors",
    "OverunderError": "overunder.errors",
    "RegistryError": "overunder.errors",
    "Unsupported": "overunder.errors",
    "Change": "overunder.semantics",
    "ChangeKind": "overunder.semantics",
}


def __getattr__(name: str) -> _Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'overunder' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "Change",
    "ChangeKind",
    "Container",
    "Engine",
    "ExecResult",
    "FailedPrecondition",
    "Image",
    "IntegrityError",
    "InvalidArgument",
    "NotFound",
    "OverunderError",
    "RegistryError",
    "Unsupported",
    "__version__",
]
