"""Run a command in a throwaway container, show what it changed, then keep or discard it.

    sudo python docs/examples/sandbox.py busybox -- sh -c 'echo hi > /greeting; rm /etc/motd'
    sudo python docs/examples/sandbox.py busybox --keep busybox:greeted -- sh -c '...'

The container is created over IMAGE's layers, runs COMMAND to the end, and its changes (its
upper dir) are printed as ``docker diff`` lines. With ``--keep NAME:TAG`` they become a new
image (one more layer on top of IMAGE); without it they are discarded. Either way the
container is removed when the ``with`` block ends, even after an error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from overunder import Engine, OverunderError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image", help="image to run over (e.g. busybox)")
    ap.add_argument("command", nargs="+", help="command to run (after --)")
    ap.add_argument("--keep", metavar="NAME:TAG", help="commit the changes as this image")
    ap.add_argument("--root", help="engine store (default: the CLI's, OVERUNDER_ROOT)")
    args = ap.parse_args(argv)

    engine = Engine(root=args.root)
    try:
        with engine.run(args.image, args.command) as box:  # removed when the block ends
            code = box.wait()
            print(f"$ {shlex.join(args.command)}   (exit {code})")
            print(box.logs(), end="")
            changes = box.diff()
            print(f"--- {len(changes)} change(s) in {box.name}'s upper dir:")
            for change in changes:  # Change(kind=ChangeKind.ADD, path="/greeting") ...
                print(change)
            if args.keep:
                image = box.commit(args.keep, message=" ".join(args.command))
                print(f"kept as {args.keep} ({image.short_id})")
            else:
                print("discarded")
    except OverunderError as err:  # the same errors, messages and hints as the CLI
        print(f"Error: {err.message}", file=sys.stderr)
        if err.hint:
            print(f"Hint: {err.hint}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
