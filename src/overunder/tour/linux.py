"""The tutorial's "At the Linux File System Level" walkthrough (steps 1-20), for real.

The steps follow the text of the tutorial, with ``overunder mount``/``overunder umount`` in
place of ``mount``/``umount`` and the project in a scratch dir instead of ``/home/over-under``.
Outputs are never canned: every command runs and its real output is shown (so ``tree`` shows
``working/work``, which the tutorial misprints as ``working/working``, and the whiteout's link
count is the kernel's 2, not the tutorial's 1; the FUSE overlay's is 1).

The same steps play twice in the default tour: on the kernel overlay (``linux``), then on
overunder's FUSE overlay (``linux-fuse``, :func:`fuse_linux_steps`), mounted with ``--trace``
so that each step is followed by the copy-ups and whiteouts the filesystem process logged
during it.
"""

from __future__ import annotations

import dataclasses
import shlex
import shutil
from collections.abc import Callable

from overunder.tour.framework import Aside, CommandResult, Step, TourEnv
from overunder.tour.fusetrace import TraceWatch

__all__ = ["FUSE_INTRO", "MOUNT_OPTIONS", "TRACE_FILE", "fuse_linux_steps", "linux_steps"]

MOUNT_OPTIONS = "lowerdir=./lower,upperdir=./upper,workdir=./working"
# Beside the project dir, not in it: tree would show it, and step 18's rm -rf would delete it.
TRACE_FILE = "fuse-trace.jsonl"

FUSE_INTRO = (
    "The same steps again, now mounted with -t fuse.overunder: the overlay is a userspace "
    "filesystem written in Python (overunder's FUSE overlay, a process serving /dev/fuse) "
    "instead of the kernel's overlayfs. It keeps the same on-disk format (files copied up "
    "into ./upper, char 0/0 whiteouts, overlay xattrs), so the outputs match the kernel "
    "pass but for one detail (step 18). "
    "Mounted with --trace, it logs every copy-up and whiteout: after each step, the events "
    "it logged during that step are shown."
)


def _tree(path: str) -> str:
    """``tree DIR``, or the same drawing in Python where tree(1) is not installed."""
    if shutil.which("tree"):
        return f"tree {path}"
    return f"python3 -m overunder.tour.treeview {path}"


def _show_mount(path: str) -> str:
    """findmnt(8) shows what holds a mount point; /proc/self/mounts where it is missing."""
    if shutil.which("findmnt"):
        return f"findmnt {shlex.quote(path)}"
    return f"grep {shlex.quote(' ' + path + ' ')} /proc/self/mounts"


def _drop_empty_fuse_log(env: TourEnv) -> tuple[str, ...]:
    """A cleanup line for the log ``overunder mount -t fuse.overunder`` keeps in its run dir
    for ./merged: removed when empty (nothing went wrong) and the mount is gone (no pid
    file), so a failure's log stays for reading."""
    from overunder.mount.fuse import pid_file_for

    pid = pid_file_for(env.project / "merged")
    log = shlex.quote(str(pid.with_suffix(".log")))
    return (f"[ -e {shlex.quote(str(pid))} ] || [ -s {log} ] || rm -f {log}",)


def fuse_linux_steps(env: TourEnv) -> list[Step]:
    """Steps 1-20 on overunder's FUSE overlay, with its trace shown after each step."""
    return linux_steps(env, mount_type="fuse.overunder", trace=True)


def _lower_change_seen(
    env: TourEnv, watch: TraceWatch | None
) -> Callable[[tuple[CommandResult, ...]], Aside | None]:
    """Step 12's notice on the FUSE overlay, written from what ``cat`` really showed (and the
    trace events of the step, should there be any)."""

    def observe(results: tuple[CommandResult, ...]) -> Aside:
        seen = _seen_notice(env, results)
        traced = watch.observe(results) if watch is not None else None
        if traced is None:
            return Aside(notice=seen)
        return dataclasses.replace(traced, notice=seen + "\n" + traced.notice)

    return observe


def _seen_notice(env: TourEnv, results: tuple[CommandResult, ...]) -> str:
    try:
        lower: str | None = (env.project / "lower" / "lower1.txt").read_text()
    except OSError:
        lower = None
    if results and results[0].output == lower:
        return (
            "merged shows the change here too. overunder's FUSE overlay never lets the kernel "
            "cache the size of a file that is still only in a lower layer, and drops its "
            "cached pages when it changed since the last open, so an edit made directly in "
            "lower shows through, as on the kernel overlay. (Not a promise: the overlayfs docs "
            "call changes to a lower layer under a mounted overlay undefined; a file newly "
            "created in lower stays unseen here until a remount, and no mount option changes "
            "that.)"
        )
    return (
        "merged still shows the old content: the FUSE overlay answered from what it had "
        "cached before the change. The overlayfs docs call changes to a lower layer under a "
        "mounted overlay undefined; unmount and mount again to see them."
    )


def linux_steps(env: TourEnv, *, mount_type: str = "overlay", trace: bool = False) -> list[Step]:
    """Steps 1-20 of the Linux-level walkthrough, mounting with ``mount_type``; ``trace``
    (FUSE only) mounts with ``--trace ../fuse-trace.jsonl`` and shows its events."""
    project = shlex.quote(str(env.project))
    mtype = mount_type
    fuse = mtype == "fuse.overunder"
    driver = "the kernel's overlay" if not fuse else "overunder's FUSE overlay"
    trace_flag = f" --trace ../{TRACE_FILE}" if fuse and trace else ""
    watch = (
        TraceWatch(env.base / TRACE_FILE, shown_as=f"../{TRACE_FILE}") if fuse and trace else None
    )
    steps = [
        Step(
            "1",
            "Set the user to super user",
            ("id -un",),
            "The tutorial starts with 'sudo su -': mounting an overlay takes root. "
            "This tour already runs as root, so it only checks.",
            shown=("id -un    # instead of: sudo su -",),
        ),
        Step(
            "2",
            "Make a directory for the demonstration project",
            (f"mkdir {project}",),
            f"The tutorial uses /home/over-under; the tour works in {env.base}, "
            "and removes it at the end.",
            cwd=env.base,
        ),
        Step(
            "3",
            "Navigate to the demonstration project directory",
            (f"cd {project}",),
            "Every later step runs from here, so ./lower, ./upper ... are relative to it.",
        ),
        Step(
            "4",
            "Make the sub-directories the overlay needs",
            ("mkdir ./{lower,upper,working,merged}",),
            "lower: the read-only layer; upper: where writes land; working: the overlay's "
            "scratch space; merged: where the combined tree appears.",
        ),
        Step(
            "5",
            "Take a look at the directory structure",
            (_tree(project),),
            "Four empty directories; nothing is mounted yet.",
        ),
        Step(
            "6",
            "Write a line of content into a file in the lower directory",
            ('echo "I am lower 1" > lower/lower1.txt',),
            "A file that exists only in the lower layer.",
        ),
        Step(
            "7",
            "Write a line of content into a file in the upper directory",
            ('echo "I am upper 1" > upper/upper1.txt',),
            "A file that exists only in the upper layer.",
        ),
        Step(
            "8",
            "Execute the overlay",
            (f"overunder mount -t {mtype} -o {MOUNT_OPTIONS}{trace_flag} overlay ./merged",),
            f"No output, like mount(8): {driver} is now mounted on ./merged "
            "(overunder checked the options first, with the kernel's rules)."
            + (" A fuse.overunder process now answers every access to ./merged." if fuse else ""),
            undo=_drop_empty_fuse_log(env) if fuse else (),
        ),
        Step(
            "9",
            "Take a look at the results as a tree",
            (_tree(project),),
            "merged shows both files: lower and upper read as one tree. The overlay made "
            "working/work for itself (the tutorial prints it as working/working).",
        ),
        Step(
            "10",
            "Add another line of text to the file lower/lower1.txt",
            ('echo "I am another line in lower 1" >> lower/lower1.txt',),
            "Changing the lower layer directly, underneath the mounted overlay.",
        ),
        Step(
            "11",
            "Take a look at the contents of lower/lower1.txt",
            ("cat lower/lower1.txt",),
            "Two lines, as expected.",
        ),
        Step(
            "12",
            "Take a look at the contents of merged/lower1.txt",
            ("cat merged/lower1.txt",),
            "merged shows the change too: the file has not been copied up, so merged reads "
            "it straight from the lower layer."
            if not fuse
            else "The file has not been copied up: merged reads it from the lower layer.",
        ),
        Step(
            "13",
            "Add another line of text to lower1.txt through merged",
            ('echo "I am yet another amazing, incredible line in lower 1" >> merged/lower1.txt',),
            "Writing through merged: the overlay first copies lower1.txt up into ./upper, "
            "then appends there.",
        ),
        Step(
            "14",
            "Read the contents of merged/lower1.txt",
            ("cat merged/lower1.txt",),
            "Three lines: merged now shows the copied-up file from ./upper.",
        ),
        Step(
            "15",
            "Read the contents of the file in the read-only directory, lower/lower1.txt",
            ("cat lower/lower1.txt",),
            "Still two lines: writes through merged never reach the lower layer.",
        ),
        Step(
            "16",
            "Delete the file lower1.txt in ./merged",
            ("rm ./merged/lower1.txt",),
            "The lower file cannot be deleted (lower is read-only), so the overlay hides it.",
        ),
        Step(
            "17",
            "Take a look at the tree after deleting the file",
            (_tree(project),),
            "merged/lower1.txt is gone, lower/lower1.txt remains, and upper holds a "
            "lower1.txt of its own: the whiteout."
            + (
                " (A '#…' file in working/work is the kernel's spare whiteout.)"
                if not fuse
                else " (No '#…' spare in working/work: the FUSE overlay keeps none.)"
            ),
        ),
        Step(
            "18",
            "Take a look at the contents of ./upper",
            ("ls -lh ./upper",),
            "lower1.txt in upper is a character device 0, 0: a whiteout. It hides the lower "
            "file and is itself invisible in merged."
            + (
                " (The kernel overlay shows link count 2: it links each whiteout to a spare "
                "one it keeps in working/work.)"
                if not fuse
                else " (Link count 1, as in the tutorial: the FUSE overlay makes each whiteout "
                "with mknod, where the kernel links a spare one.)"
            ),
        ),
        Step(
            "18",
            "Try to remove the entire project directory",
            (f"rm -rf {project}", _show_mount(str(env.project / "merged"))),
            "Refused: rm deleted what it could (even through merged), but merged has a "
            "filesystem mounted on it, listed above, and a mount point cannot be removed.",
            expect_failure=0,
            cwd=env.base,
        ),
        Step(
            "19",
            "Unmount the merged directory",
            (f"overunder umount {shlex.quote(str(env.project / 'merged'))}",),
            "No output: unmounted"
            + (", and the fuse.overunder process has ended" if fuse else "")
            + ". (Had a process still been using merged, overunder umount would refuse with "
            "'target is busy' and name it.)",
            cwd=env.base,
        ),
        Step(
            "20",
            "Delete the directory",
            (f"rm -rf {project}", f"ls {shlex.quote(str(env.base))}"),
            "With nothing mounted, the project directory goes away cleanly."
            + (f" ({TRACE_FILE} is the trace; the tour removes it too.)" if watch else ""),
            cwd=env.base,
        ),
    ]
    if not fuse:
        return steps
    # Steps share one watch, so each shows only the events logged since the previous one.
    return [
        dataclasses.replace(step, observe=_lower_change_seen(env, watch))
        if step.number == "12"
        else dataclasses.replace(step, observe=watch.observe)
        if watch is not None
        else step
        for step in steps
    ]
