"""The import direction of docs/architecture.md, enforced (like crane's depcheck test).

Each package of overunder may import only the packages listed for it. A module that imports
one above it fails this test, naming the file, the line and the arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import overunder

PACKAGE_DIR = Path(overunder.__file__).parent

# Which overunder packages each package may import (itself always allowed).
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "atomic": set(),
    "semantics": {"errors"},  # pure: no files, so no atomic writes either
    "layerfs": {"atomic", "errors", "semantics"},
    "content": {"atomic", "errors"},
    "image": {"atomic", "errors", "content", "semantics", "layerfs"},
    "fuse": {"atomic", "errors", "semantics", "layerfs"},
    "mount": {"atomic", "errors", "semantics", "layerfs", "fuse"},
    "snapshots": {"atomic", "errors", "semantics", "layerfs", "mount"},
    "registry": {"atomic", "errors", "content", "image"},
    "runtime": {"atomic", "errors"},
    "explain": {"atomic", "errors", "semantics", "layerfs", "content", "image", "snapshots"},
    "engine": {
        "atomic",
        "errors",
        "semantics",
        "layerfs",
        "content",
        "image",
        "fuse",
        "mount",
        "snapshots",
        "registry",
        "runtime",
        "explain",
    },
    "tour": {
        "atomic",
        "errors",
        "semantics",
        "layerfs",
        "content",
        "image",
        "fuse",
        "mount",
        "snapshots",
        "registry",
        "runtime",
        "explain",
        "engine",
    },
}
FRONTS = {"cli", "__init__", "__main__"}  # may import anything


def _package_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE_DIR)
    return rel.parts[0].removesuffix(".py")


def _imported_packages(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the file's package
                base = list(path.relative_to(PACKAGE_DIR).parent.parts)
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = [*base, *(node.module.split(".") if node.module else [])]
                names = [".".join(["overunder", *target])]
            elif node.module:
                names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "overunder" and len(parts) > 1:
                found.append((node.lineno, parts[1]))
    return found


def test_every_package_is_classified() -> None:
    for child in PACKAGE_DIR.iterdir():
        if child.name.startswith((".", "_")) and child.name not in ("__init__.py", "__main__.py"):
            continue
        if child.suffix == ".py" or (child.is_dir() and (child / "__init__.py").exists()):
            name = child.name.removesuffix(".py")
            assert name in ALLOWED or name in FRONTS, (
                f"{child} is not placed in the layering: add it to ALLOWED in this test "
                "and to docs/architecture.md"
            )


def test_imports_point_down_only() -> None:
    violations = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        pkg = _package_of(path)
        if pkg in FRONTS:
            continue
        allowed = ALLOWED[pkg] | {pkg}
        for lineno, target in _imported_packages(path):
            if target not in allowed:
                rel = path.relative_to(PACKAGE_DIR.parent)
                violations.append(f"{rel}:{lineno}: {pkg} -> {target}")
    assert not violations, "imports against the layering:\n" + "\n".join(violations)


def test_errors_is_a_leaf() -> None:
    assert _imported_packages(PACKAGE_DIR / "errors.py") == []
