"""The tutorial's "At the Docker Level" walkthrough (steps 1-21), for real, with ``overunder``
in place of ``docker``.

Before step 1 the tour builds the tutorial's ``reselbob/pinger`` image offline
(:mod:`overunder.tour.pinger`: busybox httpd + a CGI shell script answering JSON about the
container) with ``overunder import``. When ``docker-registry`` is installed it is started on a
free 127.0.0.1 port (its own config and storage in the tour's dir), the image is pushed there
and step 1 pulls it back as ``127.0.0.1:PORT/reselbob/pinger``; otherwise the image is saved to
a tarball and step 1 loads it. Every later step runs the tutorial's command and shows its real
output; where the tutorial's command cannot run as typed (an interactive ``exec -it``), the
step says what it does instead.

**Where things live.** By default the Docker part uses a private engine store under the
tour's dir (``OVERUNDER_ROOT``/``OVERUNDER_RUN_ROOT`` set for its commands), and removes the
container, the registry and the store at the end, even after Ctrl-C or an error. With
``--keep`` the store is the normal one (``/var/lib/overunder`` as root, or
``OVERUNDER_ROOT``), so that ``overunder ps``, ``exec``, ``diff``... work on the ``pinger``
container afterwards; the tour prints how to remove it.
"""

from __future__ import annotations

import json
import shlex
import shutil
import socket
import sys
from pathlib import Path

from overunder.tour.framework import Step, TourEnv

__all__ = ["HOST_PORT", "docker_steps"]

HOST_PORT = 3001
CONTAINER_PORT = 3000
HELLO = "Greetings really cool class"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _registry_config(storage: Path, port: int) -> str:
    # docker-registry reads YAML; JSON is valid YAML, and needs no YAML writer here.
    return json.dumps(
        {
            "version": 0.1,
            "log": {"level": "error", "accesslog": {"disabled": True}},
            "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
            "http": {"addr": f"127.0.0.1:{port}"},
        },
        indent=2,
    )


def docker_steps(env: TourEnv) -> list[Step]:
    """The Docker-level steps, run with ``env.mount_type``'s storage driver."""
    py = shlex.quote(sys.executable)
    work = env.base / "docker-level"
    wq = shlex.quote(str(work))
    engine_env: tuple[tuple[str, str], ...] = ()
    if not env.keep:
        engine_env = (
            ("OVERUNDER_ROOT", str(env.base / "engine")),
            ("OVERUNDER_RUN_ROOT", str(env.base / "engine-run")),
        )
    store_words = (
        f"a private engine store in {env.base}/engine (removed at the end)"
        if not env.keep
        else "the normal engine store (--keep: the container stays)"
    )
    fuse = env.mount_type == "fuse.overunder"
    driver_flag = " --storage-driver fuse" if fuse else ""
    driver_words = "overunder's FUSE overlay" if fuse else "the kernel's overlay"
    host_port = HOST_PORT
    port_note = ""
    if not _port_free(HOST_PORT):
        host_port = _free_port()
        port_note = (
            f" Port {HOST_PORT} is taken on this host, so the tour publishes on {host_port} "
            "instead."
        )
    registry = shutil.which("docker-registry")
    reg_port = _free_port() if registry else 0
    image = f"127.0.0.1:{reg_port}/reselbob/pinger" if registry else "reselbob/pinger"

    def step(
        number: str,
        title: str,
        commands: tuple[str, ...],
        notice: str,
        *,
        shown: tuple[str, ...] | None = None,
        undo: tuple[str, ...] = (),
        cwd: Path | None = None,
    ) -> Step:
        return Step(
            number,
            title,
            commands,
            notice,
            cwd=cwd or work,
            shown=shown,
            env=engine_env,
            undo=undo,
        )

    changes = " ".join(
        f"--change {shlex.quote(c)}"
        for c in (
            f'CMD ["httpd", "-f", "-v", "-p", "{CONTAINER_PORT}", "-h", "/www"]',
            f"EXPOSE {CONTAINER_PORT}",
        )
    )
    # --keep works in the normal store, where an earlier --keep may have left a "pinger".
    taken = (
        "if overunder inspect --type container pinger >/dev/null 2>&1; then echo 'a container "
        "named pinger already exists in this store (an earlier --keep?); remove it with: "
        "overunder rm -f pinger'; exit 1; fi; "
        if env.keep
        else ""
    )
    steps = [
        step(
            "0",
            "Build the pinger image (the tutorial pulls it from Docker Hub)",
            (
                f"{taken}mkdir {wq}",
                f"{py} -m overunder.tour.pinger pinger-rootfs.tar",
                f"overunder import {changes} pinger-rootfs.tar reselbob/pinger",
            ),
            "The tour works offline: the image is built from this host's busybox. Its one "
            "layer holds busybox, httpd's CGI program /www/cgi-bin/index.cgi (a shell script "
            "that answers with JSON about the container) and /etc/localtime. The Docker part "
            f"uses {store_words}.",
            shown=(
                f"mkdir {wq}",
                "python3 -m overunder.tour.pinger pinger-rootfs.tar",
                f"overunder import {changes} pinger-rootfs.tar reselbob/pinger",
            ),
            cwd=env.base,
        )
    ]
    if registry:
        reg_dir = work / "registry"
        cfg = _registry_config(reg_dir / "storage", reg_port)
        steps.append(
            step(
                "0",
                "Start a local registry and push the image to it",
                (
                    f"mkdir registry && cat > registry/config.yml <<'EOF'\n{cfg}\nEOF",
                    "docker-registry serve registry/config.yml > registry/log 2>&1 & "
                    "echo $! > registry/pid; "
                    f"for i in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/{reg_port}) "
                    "2>/dev/null && break; sleep 0.1; done; echo registry pid $(cat registry/pid)",
                    f"overunder tag reselbob/pinger {image}",
                    f"overunder push {image}",
                    f"overunder rmi -f $(overunder inspect -f '{{{{.Id}}}}' {image})",
                ),
                f"docker-registry (the Distribution registry) now listens on 127.0.0.1:{reg_port} "
                "with its storage in the tour's dir. The image went up layer by layer; then it was "
                "removed locally (all its names and its layer), so step 1 really downloads it.",
                shown=(
                    "mkdir registry && cat > registry/config.yml <<'EOF' … EOF",
                    "docker-registry serve registry/config.yml > registry/log 2>&1 &",
                    f"overunder tag reselbob/pinger {image}",
                    f"overunder push {image}",
                    f"overunder rmi -f $(overunder inspect -f '{{{{.Id}}}}' {image})",
                ),
                undo=(f"kill $(cat {wq}/registry/pid) 2>/dev/null || true",),
            )
        )
        steps.append(
            step(
                "1",
                "Pull the image from the registry",
                (f"overunder pull {image}",),
                "Downloaded, checked against its digests and unpacked into a layer dir. (The "
                "tutorial pulls reselbob/pinger from Docker Hub; this registry runs on this "
                "host.)",
            )
        )
    else:
        steps.append(
            step(
                "0",
                "Save the image to a tarball (no registry installed)",
                (
                    "overunder save -o pinger-image.tar reselbob/pinger",
                    "overunder rmi reselbob/pinger",
                ),
                "docker-registry is not installed, so instead of a pull, step 1 loads the "
                "image from this tarball (what 'docker save' writes).",
            )
        )
        steps.append(
            step(
                "1",
                "Load the image (instead of pulling it)",
                ("overunder load -i pinger-image.tar",),
                "The layers are unpacked into layer dirs, once each.",
            )
        )
    lower_of = (
        "\"$(overunder inspect -f '{{.GraphDriver.Data.LowerDir}}' pinger | tr : '\\n' "
        '| tail -n 1)"'
    )
    upper_of = "\"$(overunder inspect -f '{{.GraphDriver.Data.UpperDir}}' pinger)\""
    history = (
        f"\"printf '%s\\n' 'echo \\\"{HELLO}\\\" >> hello.txt' 'cat /hello.txt' exit "
        '>> /root/.ash_history"'
    )
    publish = f"{host_port}:{CONTAINER_PORT}"
    if shutil.which("runc") is None:
        # No OCI runtime: say so plainly instead of failing mid-way (or faking output).
        steps.append(
            step(
                "2-21",
                "Skipped: the container steps need an OCI runtime",
                (f"overunder inspect -f '{{{{.Config.Cmd}}}}' {image}",),
                "runc is not installed, so no container can run here: the steps from 'run -d "
                "-p 3001:3000 --name pinger' on were skipped. Install runc (apt-get install "
                "runc) and run the tour again; the image above is what it would run.",
            )
        )
        return steps
    steps += [
        step(
            "2",
            "Take a look at the configuration of the image",
            (f"overunder inspect {image}",),
            "Config.Cmd is what the container runs (httpd on port 3000); RootFS.Layers lists "
            "the layer digests; GraphDriver names the layer dir on this host.",
        ),
        step(
            "3",
            "Spin up a container from the image",
            (f"overunder run -d -p {publish} --name pinger{driver_flag} {image}",),
            f"The long hex string is the container's id. Its tree is mounted with {driver_words}: "
            "the image's layer (read-only) below, an empty upper dir of its own on top."
            + port_note,
            undo=() if env.keep else ("overunder rm -f pinger >/dev/null 2>&1 || true",),
        ),
        step(
            "4",
            "Ask the web server in the container about itself",
            (f"{py} -m overunder.tour.pinger fetch http://localhost:{host_port}/",),
            "The CGI program answered from inside the container: its own hostname (the "
            "container's short id), process ids, network interfaces and the request it got. "
            "(The tutorial uses curl; the tour fetches with Python's urllib, waiting for httpd "
            "to start.)",
            shown=(f"python3 -m overunder.tour.pinger fetch http://localhost:{host_port}/",),
        ),
        step(
            "5",
            "Look at the history of the container with diff",
            ("overunder diff pinger",),
            "Empty: nothing has changed in the container's filesystem yet (its upper dir is "
            "empty, apart from what overlay itself needs).",
        ),
        step(
            "6",
            "Create a file to use in a bit",
            ('echo "hi there" > hello.txt',),
            "A file on the host.",
        ),
        step(
            "7",
            "Copy the file into the container",
            ("overunder cp hello.txt pinger:/hello.txt",),
            "No output: copied into the container's merged view, so it lands in its upper dir.",
        ),
        step(
            "8",
            "Look at the history again",
            ("overunder diff pinger",),
            "A = added: /hello.txt exists in the container but in none of the image's layers.",
        ),
        step(
            "9-11",
            "Append to hello.txt from inside the container, and look at it",
            (
                f"overunder exec pinger sh -c 'echo \"{HELLO}\" >> /hello.txt'",
                "overunder exec pinger cat /hello.txt",
                f"overunder exec pinger sh -c {history}",
                "overunder exec pinger cat /root/.ash_history",
            ),
            "The tutorial types these in an interactive shell (exec -it pinger sh), which "
            "saves them to /root/.ash_history when it exits; the tour cannot type into a "
            "terminal, so the third command writes those history lines the way ash does.",
        ),
        step(
            "12",
            "Take another look at the history",
            ("overunder diff pinger",),
            "/root changed (C): .ash_history was added (A) inside it, so the directory was "
            "copied up into the upper dir. /hello.txt stays A although it was appended to: "
            "it is still new relative to the image.",
        ),
        step(
            "13",
            "Create a new file",
            ('echo "I am getting ready to go" > goodbye.txt',),
            "Another file on the host.",
        ),
        step(
            "14",
            "Copy it into the container's /etc",
            ("overunder cp goodbye.txt pinger:/etc/goodbye.txt",),
            "/etc comes from the image's read-only layer, yet the copy works: the overlay "
            "copies /etc up (the directory, not its files) and writes goodbye.txt there.",
        ),
        step(
            "15",
            "Take yet another look at the history",
            ("overunder diff pinger",),
            "C /etc and A /etc/goodbye.txt: the 'read-only' /etc changed, in the upper dir.",
        ),
        step(
            "16",
            "Delete a file that lives in the image's read-only layer",
            ("overunder exec pinger rm -rf /etc/localtime",),
            "No output: /etc/localtime is gone from the container's view.",
        ),
        step(
            "17",
            "Look at the history once more",
            ("overunder diff pinger",),
            "D = deleted: /etc/localtime. But has it really been deleted?",
        ),
        step(
            "18",
            "Inspect the container: where its layers are on the host",
            (f"overunder inspect -f '{{{{json .GraphDriver}}}}' pinger | {py} -m json.tool",),
            "LowerDir (top first, ':'-separated): the container's init layer, then the "
            "image's layer. UpperDir: the container's own changes. MergedDir: where the "
            "overlay is mounted, the container's /. WorkDir: the overlay's scratch space.",
            shown=("overunder inspect -f '{{json .GraphDriver}}' pinger | python3 -m json.tool",),
        ),
        step(
            "19",
            "List the image's layer (the last LowerDir) on the host, and read the deleted file",
            (f"ls {lower_of}", f"cat {lower_of}/etc/localtime"),
            "The image's filesystem without hello.txt and friends, and /etc/localtime is still "
            "here, bytes and all: the lower layer is never changed.",
        ),
        step(
            "20",
            "List the UpperDir",
            (f"ls {upper_of}",),
            "hello.txt, and the dirs that were copied up: etc and root.",
        ),
        step(
            "21",
            "List etc in the UpperDir",
            (f"ls -ls {upper_of}/etc",),
            "goodbye.txt, and localtime as a character device 0, 0 (c---------): a whiteout. "
            "It hides the lower /etc/localtime from the merged view; the file itself is "
            "untouched below. That is the Linux overlay filesystem at work: next part.",
        ),
        step(
            "+",
            "Ask overunder which layer hides /etc/localtime",
            ("overunder explain pinger /etc/localtime",),
            "overunder reads the layer dirs directly and says, top to bottom, what each one "
            "does to the path. 'overunder tree pinger /etc' and 'overunder layers pinger' "
            "show the rest.",
        ),
    ]
    if env.keep:
        removal = f"overunder rm -f pinger && overunder rmi {image}"
        steps.append(
            step(
                "+",
                "The container stays (--keep)",
                ("overunder ps --filter name=pinger 2>/dev/null || overunder ps",),
                f"Explore it: overunder exec -it pinger sh, overunder diff pinger, overunder "
                f"layers pinger. Remove it when done: {removal}",
            )
        )
    else:
        steps.append(
            step(
                "+",
                "Remove the container",
                ("overunder rm -f pinger",),
                "The container, its upper dir and its mount are gone; the private store goes "
                "with the tour's dir.",
            )
        )
    return steps
