"""overunder: container layers made real and visible.

The supported Python API is what this module exports; everything else is internal.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
