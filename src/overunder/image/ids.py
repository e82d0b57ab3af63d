"""Diff IDs and chain IDs (OCI image-spec config.md)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from overunder.content.digest import validate_digest

__all__ = ["chain_ids", "short_id"]


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))."""
    out: list[str] = []
    for diff_id in diff_ids:
        validate_digest(diff_id)
        if not out:
            out.append(diff_id)
        else:
            out.append("sha256:" + hashlib.sha256(f"{out[-1]} {diff_id}".encode()).hexdigest())
    return out


def short_id(digest: str) -> str:
    """The 12-hex form Docker prints (``sha256:`` dropped)."""
    return digest.removeprefix("sha256:")[:12]
