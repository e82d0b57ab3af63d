"""What every verb handler receives besides its parsed arguments."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from overunder.engine.paths import EnginePaths
from overunder.errors import OverunderError


@dataclass
class Context:
    paths: EnginePaths
    debug: bool = False
    stdout: TextIO = field(default_factory=lambda: sys.stdout)
    stderr: TextIO = field(default_factory=lambda: sys.stderr)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Context:
        return cls(paths=EnginePaths.resolve(args.root, args.run_root), debug=args.debug)

    def out(self, text: str = "", *, end: str = "\n") -> None:
        self.stdout.write(text + end)

    def json(self, value: Any) -> None:
        """Structured output: indented like ``docker inspect``."""
        self.stdout.write(json.dumps(value, indent=4) + "\n")

    def json_lines(self, values: list[Any]) -> None:
        """One compact JSON object per line, like ``docker ps --format json``."""
        for value in values:
            self.stdout.write(json.dumps(value, separators=(",", ":")) + "\n")

    def warn(self, text: str) -> None:
        self.stderr.write(f"Warning: {text}\n")

    def error(self, err: OverunderError) -> None:
        self.stderr.write(f"Error: {err.message}\n")
        if err.hint:
            self.stderr.write(f"Hint: {err.hint}\n")
