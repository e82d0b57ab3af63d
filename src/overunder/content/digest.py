"""Digest strings: the only form accepted is ``sha256:`` + 64 lowercase hex.

A digest becomes a path component (``blobs/sha256/<hex>``), so it is validated before any use
(CVE-2024-3727: a crafted digest that walks out of the store).
"""

from __future__ import annotations

import hashlib
import re

from overunder.errors import InvalidArgument

__all__ = ["ALGORITHM", "digest_bytes", "digest_hex", "is_digest", "validate_digest"]

ALGORITHM = "sha256"
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


def is_digest(value: str) -> bool:
    """True when ``value`` is ``sha256:<64 lowercase hex>``."""
    return _DIGEST_RE.fullmatch(value) is not None


def validate_digest(value: str) -> str:
    """Return ``value`` unchanged, or raise InvalidArgument when it is not a sha256 digest."""
    if not isinstance(value, str) or not is_digest(value):
        raise InvalidArgument(
            f"invalid digest {value!r}",
            hint="a digest is 'sha256:' followed by 64 lowercase hex characters",
        )
    return value


def digest_hex(value: str) -> str:
    """The hex part of a validated digest."""
    return validate_digest(value).split(":", 1)[1]


def digest_bytes(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()
