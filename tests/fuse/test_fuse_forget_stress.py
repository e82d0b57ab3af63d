"""Node ids after FORGET: the kernel drops dentries and inodes (here forced through
``/proc/sys/vm/drop_caches``) while several threads list, lstat and readlink a big lower dir of
symlinks; every answer must stay the lower file's (a CI run once saw ENOENT from readlink
right after lstat of the same name succeeded)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from fuse_overlay_helpers import mounted_ours, remove_tree, world_dir

from conftest import require_fuse, require_root

pytestmark = [pytest.mark.root, pytest.mark.fuse]

_LINKS = 400
_SECONDS = 3.0


def test_readlink_stays_right_while_the_kernel_forgets() -> None:
    require_root()
    require_fuse()
    base = world_dir("ovu-fuse-forget-")
    try:
        l1, l2, u, w, m = (base / n for n in ("l1", "l2", "u", "w", "m"))
        for d in (l1 / "bin", l2 / "etc", u, w, m):
            d.mkdir(parents=True)
        for i in range(_LINKS):
            os.symlink(f"/bin/busybox-{i}", l1 / "bin" / f"tool{i}")
        (l2 / "etc" / "conf").write_text("c\n")
        errors: list[str] = []
        stop = time.monotonic() + _SECONDS
        with mounted_ours([l1, l2], u, w, m):
            (m / "etc" / "conf").write_text("changed\n")  # a copy-up in a merged tree

            def walker() -> None:
                while time.monotonic() < stop and not errors:
                    with os.scandir(m / "bin") as it:
                        for dent in it:
                            try:
                                dent.stat(follow_symlinks=False)
                                got = os.readlink(dent.path)
                            except OSError as err:
                                errors.append(f"{dent.path}: {err}")
                                return
                            want = f"/bin/busybox-{dent.name[4:]}"
                            if got != want:
                                errors.append(f"{dent.path}: {got!r} != {want!r}")
                                return

            def forgetter() -> None:
                while time.monotonic() < stop and not errors:
                    Path("/proc/sys/vm/drop_caches").write_text("2\n")
                    time.sleep(0.05)

            threads = [threading.Thread(target=walker) for _ in range(3)]
            threads.append(threading.Thread(target=forgetter))
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert errors == []
    finally:
        remove_tree(base)
