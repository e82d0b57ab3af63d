"""The tutorial's "At the Linux File System Level" walkthrough (steps 1-20), for real.

The steps follow the text of the tutorial, with ``overunder mount``/``overunder umount`` in
place of ``mount``/``umount`` and the project in a scratch dir instead of ``/home/over-under``.
Outputs are never canned: every command runs and its real output is shown (so ``tree`` shows
``working/work``, which the tutorial misprints as ``working/working``, and the whiteout's link
count is the kernel's 2, not the tutorial's 1).
"""

from __future__ import annotations

import shlex
import shutil

from overunder.tour.framework import Step, TourEnv

__all__ = ["MOUNT_OPTIONS", "linux_steps"]

MOUNT_OPTIONS = "lowerdir=./lower,upperdir=./upper,workdir=./working"


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


def linux_steps(env: TourEnv) -> list[Step]:
    """Steps 1-20 of the Linux-level walkthrough, mounting with ``env.mount_type``."""
    project = shlex.quote(str(env.project))
    mtype = env.mount_type
    driver = "the kernel's overlay" if mtype == "overlay" else "overunder's FUSE overlay"
    return [
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
            (f"overunder mount -t {mtype} -o {MOUNT_OPTIONS} overlay ./merged",),
            f"No output, like mount(8): {driver} is now mounted on ./merged "
            "(overunder checked the options first, with the kernel's rules).",
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
            "it straight from the lower layer.",
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
            "lower1.txt of its own: the whiteout. (A '#…' file in working/work is the kernel's "
            "spare whiteout.)",
        ),
        Step(
            "18",
            "Take a look at the contents of ./upper",
            ("ls -lh ./upper",),
            "lower1.txt in upper is a character device 0, 0: a whiteout. It hides the lower "
            "file and is itself invisible in merged. (The kernel overlay shows link count 2: it "
            "links each whiteout to a spare one it keeps in working/work.)",
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
            "No output: unmounted. (Had a process still been using merged, overunder umount "
            "would refuse with 'target is busy' and name it.)",
            cwd=env.base,
        ),
        Step(
            "20",
            "Delete the directory",
            (f"rm -rf {project}", f"ls {shlex.quote(str(env.base))}"),
            "With nothing mounted, the project directory goes away cleanly.",
            cwd=env.base,
        ),
    ]
