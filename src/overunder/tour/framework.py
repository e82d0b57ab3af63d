"""A small framework for replaying a tutorial for real.

A :class:`Step` is what the tutorial shows a person: one or more commands as they would type
them (printed as ``$ cmd``), the real output of running them, and one or two lines saying what
to notice. Commands run in ``bash`` inside the tour's project directory, with ``overunder``
bound to this very installation. A :class:`Tour` runs a list of steps, reports each one through
callbacks (library code never prints), and always cleans up what it made, even after an error
or Ctrl-C: everything mounted under its directory is unmounted, then the directory is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overunder.errors import FailedPrecondition, InvalidArgument, OverunderError

__all__ = [
    "Aside",
    "CommandResult",
    "Step",
    "StepResult",
    "Tour",
    "TourEnv",
]


@dataclass(frozen=True)
class TourEnv:
    """Where a tour runs: ``base`` is the scratch dir it owns and removes at the end;
    ``project`` is the tutorial's project dir (``/home/over-under`` in the text) inside it."""

    base: Path
    project: Path
    mount_type: str = "overlay"  # the Docker part's storage driver (--driver); see linux_steps
    keep: bool = False  # --keep: leave the Docker part's container running (issue 8)


@dataclass(frozen=True)
class Step:
    """One tutorial step.

    ``commands`` are shell lines run in order in ``cwd`` (default: the project dir once it
    exists, else the base dir). ``expect_failure`` is the index of a command the tutorial
    shows failing (a refused ``rm -rf``): it must fail, and its error is the output.
    ``shown`` replaces a command's text on screen when the tutorial's own line cannot be run
    as is (``sudo su -``); the real command still runs and its output is shown.
    ``env`` adds variables to the commands' environment (the Docker part's private engine
    store). ``undo`` are shell lines that remove what the step makes (a container, a
    registry process): registered when the step starts, they run at cleanup in reverse order,
    failures ignored, however the tour ends.
    ``observe`` runs after the commands, with their results: what it returns (an
    :class:`Aside`: the FUSE overlay's trace events of the step, or a notice that depends on
    what really happened) is shown after the output.
    """

    number: str
    title: str
    commands: tuple[str, ...]
    notice: str
    expect_failure: int | None = None
    cwd: Path | None = None
    shown: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()
    undo: tuple[str, ...] = ()
    observe: Callable[[tuple[CommandResult, ...]], Aside | None] | None = None


@dataclass(frozen=True)
class Aside:
    """What a step observed beyond its commands' output: ``lines`` under a ``heading`` (the
    trace events a FUSE overlay logged during the step), ``records`` the same as data (for
    --format json), and a ``notice`` shown after the step's own."""

    heading: str = ""
    lines: tuple[str, ...] = ()
    notice: str = ""
    records: tuple[dict[str, Any], ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {
            "Heading": self.heading,
            "Lines": list(self.lines),
            "Notice": self.notice,
            "Records": list(self.records),
        }


@dataclass(frozen=True)
class CommandResult:
    command: str
    output: str
    exit_code: int

    def to_dict(self) -> dict[str, object]:
        return {"Command": self.command, "Output": self.output, "ExitCode": self.exit_code}


@dataclass(frozen=True)
class StepResult:
    step: Step
    results: tuple[CommandResult, ...] = field(default_factory=tuple)
    aside: Aside | None = None

    @property
    def notice(self) -> str:
        """The step's notice, then what its observation adds."""
        extra = self.aside.notice if self.aside is not None else ""
        return "\n".join(n for n in (self.step.notice, extra) if n)

    def to_dict(self) -> dict[str, object]:
        doc: dict[str, object] = {
            "Step": self.step.number,
            "Title": self.step.title,
            "Commands": [r.to_dict() for r in self.results],
            "Notice": self.notice,
        }
        if self.aside is not None:
            doc["Observed"] = self.aside.to_dict()
        return doc


def _shell_prelude() -> str:
    """Make ``overunder`` in a step run this installation, whatever PATH says."""
    python = shlex.quote(sys.executable)
    return f'overunder() {{ {python} -m overunder "$@"; }}\n'


class Tour:
    """Runs steps in ``env``; ``on_step`` is called before each step (to print its header or
    pause), ``on_command`` after each command with its result, ``on_done`` after the step."""

    leftovers: list[str]

    def __init__(
        self,
        env: TourEnv,
        *,
        on_step: Callable[[Step], None] | None = None,
        on_command: Callable[[Step, CommandResult], None] | None = None,
        on_done: Callable[[StepResult], None] | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.env = env
        self.on_step = on_step
        self.on_command = on_command
        self.on_done = on_done
        self.timeout = timeout
        self.leftovers = []
        self._undo: list[tuple[str, tuple[tuple[str, str], ...]]] = []

    @staticmethod
    def make_env(directory: Path | None, *, mount_type: str = "overlay") -> TourEnv:
        """A fresh base dir: ``directory`` (created; it must not hold anything yet) or a new
        temp dir under /tmp. The project dir is ``<base>/over-under``."""
        if directory is None:
            base = Path(tempfile.mkdtemp(prefix="overunder-tour-"))
        else:
            base = Path(os.path.abspath(directory))
            if base.exists() and (not base.is_dir() or any(base.iterdir())):
                raise InvalidArgument(
                    f"--dir {base} exists and is not empty",
                    hint="give a new or empty directory: the tour removes it when it ends",
                )
            base.mkdir(parents=True, exist_ok=True)
        # mkdtemp gives 0700; the tutorial's project is an ordinary 0755 tree.
        base.chmod(0o755)
        return TourEnv(base=base, project=base / "over-under", mount_type=mount_type)

    def run(self, steps: Sequence[Step]) -> list[StepResult]:
        """Run every step; cleans up (unmount, remove the base dir) however it ends."""
        done: list[StepResult] = []
        try:
            for step in steps:
                if self.on_step is not None:
                    self.on_step(step)
                self._undo.extend((line, step.env) for line in step.undo)
                result = self._run_step(step)
                done.append(result)
                if self.on_done is not None:
                    self.on_done(result)
        finally:
            self.leftovers = self.cleanup()
        return done

    def _run_step(self, step: Step) -> StepResult:
        results: list[CommandResult] = []
        shown = step.shown or step.commands
        for i, (command, display) in enumerate(zip(step.commands, shown, strict=True)):
            cwd = step.cwd or (self.env.project if self.env.project.is_dir() else self.env.base)
            try:
                proc = subprocess.run(
                    ["bash", "-c", _shell_prelude() + command],
                    cwd=cwd,
                    env={**os.environ, **dict(step.env)} if step.env else None,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    errors="replace",
                    timeout=self.timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired as err:
                raise FailedPrecondition(
                    f"step {step.number}: '{display}' did not finish within {self.timeout:.0f}s",
                    hint="something on this host is hanging; 'overunder doctor' may say what",
                ) from err
            res = CommandResult(display, proc.stdout, proc.returncode)
            results.append(res)
            if self.on_command is not None:
                self.on_command(step, res)
            if step.expect_failure == i:
                if proc.returncode == 0:
                    raise FailedPrecondition(
                        f"step {step.number}: '{display}' was expected to fail but succeeded",
                        hint="the tour's assumption about this host does not hold; "
                        "please report it",
                    )
            elif proc.returncode != 0:
                raise FailedPrecondition(
                    f"step {step.number}: '{display}' failed (exit {proc.returncode}): "
                    + (proc.stdout.strip().splitlines() or ["no output"])[-1],
                    hint="run 'overunder doctor' to check this host; --debug for details",
                )
        done = tuple(results)
        return StepResult(step, done, step.observe(done) if step.observe is not None else None)

    def cleanup(self) -> list[str]:
        """Unmount everything under the base dir (deepest first; lazily if still busy), end
        the processes of its ``fuse.overunder`` mounts (a lazily detached FUSE mount would
        keep its process serving whoever still holds it), then remove the dir. Never raises:
        returns what could not be cleaned up (for a warning). A dir with a mount still below
        it is left alone, so removal never reaches through a mount into someone's layers."""
        from overunder.mount import unmount
        from overunder.mount.mountinfo import read_mountinfo

        problems = self._run_undo()
        base = os.path.realpath(self.env.base)
        fuse_pids = _fuse_processes_under(base)
        for _ in range(3):
            targets = sorted(
                {e.target for e in read_mountinfo() if e.target.startswith(base + "/")},
                key=len,
                reverse=True,
            )
            if not targets:
                break
            for target in targets:
                try:
                    unmount(Path(target))
                except OverunderError:
                    try:
                        unmount(Path(target), lazy=True)
                    except OverunderError:
                        continue
        problems += _end_processes(fuse_pids)
        left = [e.target for e in read_mountinfo() if e.target.startswith(base + "/")]
        if left:
            return (
                problems
                + [f"still mounted: {t}" for t in left]
                + [f"left in place: {self.env.base}"]
            )
        shutil.rmtree(self.env.base, ignore_errors=True)
        return problems + ([f"could not remove {self.env.base}"] if self.env.base.exists() else [])

    def _run_undo(self) -> list[str]:
        """Run the registered undo lines, newest first; what failed, for a warning."""
        problems: list[str] = []
        while self._undo:
            line, env = self._undo.pop()
            try:
                proc = subprocess.run(
                    ["bash", "-c", _shell_prelude() + line],
                    cwd=self.env.base if self.env.base.is_dir() else "/",
                    env={**os.environ, **dict(env)} if env else None,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    errors="replace",
                    timeout=60,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as err:
                problems.append(f"cleanup '{line}' failed: {err}")
                continue
            if proc.returncode != 0:
                last = (proc.stdout.strip().splitlines() or ["no output"])[-1]
                problems.append(f"cleanup '{line}' failed (exit {proc.returncode}): {last}")
        return problems


def _fuse_processes_under(base: str) -> dict[int, str]:
    """pid -> mountpoint of the ``fuse.overunder`` processes serving mounts under ``base``
    (from the pid files ``overunder mount`` keeps; a pid counts only while its command line
    is that mount's daemon, so a reused pid is never touched)."""
    from overunder.mount.mountinfo import read_mountinfo

    try:
        from overunder.mount.fuse import pid_file_for
    except ImportError:  # an installation without the FUSE overlay mounts none
        return {}

    found: dict[int, str] = {}
    for entry in read_mountinfo():
        if entry.fstype != "fuse.overunder" or not entry.target.startswith(base + "/"):
            continue
        try:
            pid = int(pid_file_for(Path(entry.target)).read_text().strip())
        except (OSError, ValueError):
            continue
        if _is_fuse_daemon(pid, entry.target):
            found[pid] = entry.target
    return found


def _is_fuse_daemon(pid: int, mountpoint: str) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return (
        state != "Z"
        and b"overunder.fuse.daemon" in cmdline
        and json.dumps(mountpoint).encode() in cmdline
    )


def _end_processes(pids: dict[int, str]) -> list[str]:
    """Wait for each FUSE process to leave after its unmount. One that stays still serves a
    lazily detached mount: SIGTERM (it unmounts), SIGTERM again (it leaves at once), then
    SIGKILL. What would not end, for a warning."""
    problems: list[str] = []
    for pid, mountpoint in pids.items():
        for sig in (None, signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 1.0
            while _is_fuse_daemon(pid, mountpoint) and time.monotonic() < deadline:
                time.sleep(0.02)
            if not _is_fuse_daemon(pid, mountpoint):
                break
        else:
            problems.append(f"fuse.overunder process {pid} ({mountpoint}) would not end")
    return problems
