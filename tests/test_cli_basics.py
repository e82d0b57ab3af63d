"""CLI conventions every verb shares: --version, --help, usage errors, error rendering."""

from __future__ import annotations

import subprocess
import sys

import pytest

from overunder import __version__
from overunder.cli import main as cli_main
from overunder.errors import NotFound


def overunder(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "overunder", *args], capture_output=True, text=True, check=False
    )


def test_version() -> None:
    r = overunder("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"overunder {__version__}"


def test_help_lists_verbs() -> None:
    r = overunder("--help")
    assert r.returncode == 0
    assert "doctor" in r.stdout


def test_every_verb_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = cli_main.build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb")
    assert sub.choices
    for name in sub.choices:  # type: ignore[union-attr]
        assert cli_main.run([name, "--help"]) == 0, name
        out = capsys.readouterr().out
        assert out.startswith(f"usage: overunder {name}"), (name, out[:80])
        assert len(out.splitlines()) > 3, name  # a description or options, not just a usage line


def test_unknown_verb_is_a_usage_error() -> None:
    r = overunder("no-such-verb")
    assert r.returncode == 2
    assert r.stderr.startswith("Error: ")
    assert "Traceback" not in r.stderr


def test_error_rendering_has_no_traceback_unless_debug(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(args: object, ctx: object) -> int:
        raise NotFound("No such container: nosuch", hint="see 'overunder ps -a'")

    parser = cli_main.build_parser()
    monkeypatch.setattr(cli_main, "build_parser", lambda argv=None: parser)
    parser.set_defaults(func=boom, verb="x")
    assert cli_main.run([]) == 1
    err = capsys.readouterr().err
    assert err == "Error: No such container: nosuch\nHint: see 'overunder ps -a'\n"
    assert cli_main.run(["--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_a_known_verb_loads_only_its_module() -> None:
    code = (
        "import sys; from overunder.cli import main; main.build_parser(['--root', '/x', 'ps']); "
        "print(sorted(m for m in sys.modules if m.startswith('overunder.cli.commands.')))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "['overunder.cli.commands.ps']"


def test_each_verb_module_registers_exactly_its_own_verb() -> None:
    """The lazy loading in build_parser relies on it: `overunder X` imports only module X."""
    import argparse
    import importlib
    import pkgutil

    from overunder.cli import commands

    for info in pkgutil.iter_modules(commands.__path__):
        if info.name.startswith("_"):
            continue
        sub = argparse.ArgumentParser().add_subparsers(dest="verb")
        importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
        assert list(sub.choices) == [info.name.rstrip("_")], info.name
