"""Entry point of the shim process: ``python -m overunder.runtime.shim_main STATE_DIR FD``.

A module of its own so that ``-m`` does not run :mod:`overunder.runtime.shim` a second time
(the package's ``__init__`` has already imported it).
"""

from __future__ import annotations

import sys

from overunder.runtime.shim import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
