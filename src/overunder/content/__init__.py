"""Content-addressed blobs (``blobs/sha256/<hex>``) with verify-on-commit ingest."""

from __future__ import annotations

from overunder.content.digest import digest_bytes, is_digest, validate_digest
from overunder.content.store import ContentStore, ContentWriter

__all__ = ["ContentStore", "ContentWriter", "digest_bytes", "is_digest", "validate_digest"]
