"""Error categories shared by every part of overunder.

This is a leaf module: it MUST NOT import anything from the ``overunder`` package.

Each error carries a one-line ``message`` (what was wrong, naming the path, option or
object) and an optional ``hint`` (what to do about it). Code below the CLI raises these and
never prints; the CLI renders them and picks the exit code. Third-party and OS errors are
translated once, where they are caught, with ``raise ... from err``.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExists",
    "FailedPrecondition",
    "IntegrityError",
    "InvalidArgument",
    "NotFound",
    "OverunderError",
    "RegistryError",
    "Unsupported",
]


class OverunderError(Exception):
    """Base of every error overunder raises on purpose.

    ``exit_code`` is what the CLI exits with; Docker exits 1 for almost every failure, and so
    do we, unless a verb documents otherwise (``run`` uses 125/126/127 like Docker).
    """

    category = "error"
    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def to_dict(self) -> dict[str, str | None]:
        """The error as data, for ``--format json`` consumers."""
        return {"category": self.category, "message": self.message, "hint": self.hint}


class NotFound(OverunderError):
    """An object (path, image, container, blob, mount) does not exist."""

    category = "not-found"


class AlreadyExists(OverunderError):
    """Creating something whose name or key is already taken."""

    category = "already-exists"


class InvalidArgument(OverunderError):
    """The input is malformed: a bad option, reference, path or archive entry."""

    category = "invalid-argument"


class FailedPrecondition(OverunderError):
    """The input is well formed but the system is not in a state that allows the operation
    (a busy mount, a running container, a non-empty workdir)."""

    category = "failed-precondition"


class Unsupported(OverunderError):
    """This host or build cannot do what was asked (no overlay, no FUSE, no runtime)."""

    category = "unsupported"


class IntegrityError(OverunderError):
    """Content does not match its digest or declared size."""

    category = "integrity"


class RegistryError(OverunderError):
    """A registry refused or failed a request in a way that is not one of the above."""

    category = "registry"
