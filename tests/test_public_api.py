"""The public Python API is exactly what ``overunder/__init__.py`` exports (style rule 12):
adding or removing a name is a decision, made here on purpose."""

from __future__ import annotations

import inspect

import overunder
from overunder import errors

EXPECTED = [
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


def test_all_is_pinned() -> None:
    assert overunder.__all__ == EXPECTED


def test_every_exported_name_exists_and_nothing_else_is_public() -> None:
    for name in overunder.__all__:
        assert hasattr(overunder, name), name
    public = {
        n
        for n, v in vars(overunder).items()
        if not n.startswith("_") and not inspect.ismodule(v) and n != "annotations"
    }
    assert public == set(EXPECTED) - {"__version__"}


def test_errors_are_the_cli_categories() -> None:
    for name in errors.__all__:
        assert getattr(overunder, name) is getattr(errors, name)


def test_engine_surface() -> None:
    methods = {
        n
        for n, _ in inspect.getmembers(overunder.Engine, inspect.isfunction)
        if not n.startswith("_")
    }
    assert {
        "pull",
        "push",
        "load",
        "import_",
        "images",
        "image",
        "tag",
        "rmi",
        "create",
        "run",
        "container",
        "containers",
        "exec",
        "diff",
        "cp",
        "commit",
        "mount",
        "umount",
        "rm",
        "layers",
        "explain",
        "cat",
    } == methods
    box = {n for n, _ in inspect.getmembers(overunder.Container, inspect.isfunction)}
    assert {"__enter__", "__exit__", "exec", "diff", "commit", "remove", "wait", "logs"} <= box


def test_engine_paths_follow_the_cli_rules(tmp_path: object) -> None:
    eng = overunder.Engine(root=str(tmp_path))
    assert str(eng.paths.root) == str(tmp_path)
    assert str(eng.paths.run_root) == f"{tmp_path}/run"
    assert overunder.Engine().paths.root.is_absolute()


def test_unknown_objects_raise_the_cli_errors(tmp_path: object) -> None:
    import pytest

    eng = overunder.Engine(root=str(tmp_path))
    with pytest.raises(overunder.NotFound, match="No such image"):
        eng.image("nosuch")
    with pytest.raises(overunder.NotFound, match="No such container"):
        eng.container("nosuch")
