"""The ``overunder`` command: argv in, exit code out.

Each verb lives in its own module under :mod:`overunder.cli.commands` and exposes
``register(subparsers)``; this module finds them, parses argv, runs the verb and turns
errors into one or two lines on stderr and an exit code (see ``docs/cli.md``):

* 0 success; 1 an operation failed (Docker's code for nearly every failure);
* 2 bad usage (unknown flag, missing argument);
* 125/126/127 from ``run``/``exec`` as Docker documents them; a container's own exit code
  passes through; 130 when interrupted by Ctrl-C.

Every command starts fast: only the module of the verb being run is imported (a module
registers exactly its own verb, which a test checks), and heavy imports happen inside the
verbs' handlers.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from overunder import __version__
from overunder.cli import commands
from overunder.cli.context import Context
from overunder.errors import OverunderError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in our style (one line, a hint, exit 2)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"Error: {message}\n")
        sys.stderr.write(f"Hint: see '{self.prog} --help'.\n")
        raise SystemExit(EXIT_USAGE)


_VALUE_OPTIONS = ("--root", "--run-root")


def _verb_of(argv: Sequence[str]) -> str | None:
    """The verb in ``argv`` (the first word that is not a global option or its value)."""
    args = iter(argv)
    for arg in args:
        if arg in _VALUE_OPTIONS:
            next(args, None)
        elif not arg.startswith("-"):
            return arg
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser; given ``argv`` whose verb is known, only that verb's module is imported
    (every command starts faster), otherwise all of them (help, unknown verbs)."""
    parser = _Parser(
        prog="overunder",
        description="Container layers made real and visible.",
        epilog="Run 'overunder VERB --help' for a verb's options. Docs: docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"overunder {__version__}")
    parser.add_argument(
        "-D", "--debug", action="store_true", help="show tracebacks and debug output"
    )
    parser.add_argument(
        "--root",
        metavar="DIR",
        default=os.environ.get("OVERUNDER_ROOT"),
        help="engine state directory (env OVERUNDER_ROOT; default /var/lib/overunder as root, "
        "$XDG_DATA_HOME/overunder otherwise)",
    )
    parser.add_argument(
        "--run-root",
        metavar="DIR",
        default=os.environ.get("OVERUNDER_RUN_ROOT"),
        help="volatile state directory (env OVERUNDER_RUN_ROOT; default /run/overunder as root, "
        "$XDG_RUNTIME_DIR/overunder otherwise)",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    names = sorted(m.name for m in pkgutil.iter_modules(commands.__path__))
    names = [n for n in names if not n.startswith("_")]
    verb = _verb_of(argv) if argv is not None else None
    # A module is named for its verb (`import_` for `import`).
    if verb is not None and verb.replace("-", "_") in {n.rstrip("_") for n in names}:
        names = [n for n in names if n.rstrip("_") == verb.replace("-", "_")]
    for name in names:
        module = importlib.import_module(f"{commands.__name__}.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns (and exits with) the exit code."""
    code = run(sys.argv[1:] if argv is None else list(argv))
    if argv is None:
        sys.exit(code)
    return code


def run(argv: list[str]) -> int:
    parser = build_parser(argv)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.verb is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    ctx = Context.from_args(args)
    try:
        code: int = args.func(args, ctx)
        return code
    except OverunderError as err:
        if args.debug:
            traceback.print_exc()
        ctx.error(err)
        return err.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`overunder images | head`); that is not our failure.
        _silence_stdout()
        return EXIT_OK
    except Exception as err:
        if args.debug:
            traceback.print_exc()
        sys.stderr.write(f"Error: internal error: {type(err).__name__}: {err}\n")
        sys.stderr.write(
            "Hint: this is a bug in overunder; rerun with --debug for the traceback.\n"
        )
        return EXIT_FAILURE


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    main()
