"""Workflows over the stores, mounts and runtime; owns container records and locks."""
