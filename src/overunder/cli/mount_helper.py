"""``mount.fuse.overunder``: the helper mount(8) runs for ``mount -t fuse.overunder``.

mount(8) (through ``mount.fuse3``) runs ``mount.fuse.overunder SRC MNT -o OPTIONS`` with PATH
removed; ``OPTIONS`` holds ``lowerdir=…,upperdir=…,workdir=…`` plus generic mount options
(``rw``, ``dev``, ``suid``, ``noatime`` …), which are ignored here as fuse-overlayfs ignores
them. The overlay process is started in the background and the helper exits once the mount
is live (status 0), or prints why not (status 32, mount(8)'s "mount failure").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from overunder.errors import OverunderError

_OVERLAY_KEYS = ("lowerdir", "upperdir", "workdir", "userxattr")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mount.fuse.overunder",
        description="Mount overunder's FUSE overlay (what mount -t fuse.overunder runs).",
        epilog="example: mount.fuse.overunder overlay /mnt -o lowerdir=/l1:/l2,upperdir=/u,"
        "workdir=/w",
    )
    p.add_argument("source", help="shown as the mount's source (e.g. overlay)")
    p.add_argument("mountpoint", type=Path)
    p.add_argument("-o", dest="options", action="append", default=[], help="mount options")
    p.add_argument("--trace", type=Path, help="write copy-up/whiteout events here (JSON lines)")
    p.add_argument("--debug", action="store_true", help="log every request")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    from overunder.mount.fuse import mount_fuse
    from overunder.mount.options import parse_overlay_options, split_options

    items: list[str] = []
    for group in args.options:
        items.extend(split_options(group))
    kept = [i for i in items if i.split("=", 1)[0] in _OVERLAY_KEYS]
    try:
        opts = parse_overlay_options(kept)
        mount_fuse(opts, args.mountpoint, trace=args.trace, debug=args.debug)
    except OverunderError as err:
        print(f"mount.fuse.overunder: {err.message}", file=sys.stderr)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)
        return 32
    return 0


if __name__ == "__main__":
    sys.exit(main())
