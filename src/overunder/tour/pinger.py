"""The tutorial's ``reselbob/pinger`` image, rebuilt offline from the host's static busybox.

The original is a Node.js server answering JSON about the container it runs in. This one is
busybox ``httpd`` with a CGI program (a shell script, ``/www/cgi-bin/index.cgi``, which httpd
runs for ``/`` since there is no ``index.html``) answering the same kind of JSON: host name,
process ids, start time, memory use (``/proc/self/status``, ``/proc/meminfo``), network
interfaces (``/proc/net/dev``, addresses from ``ip``), the request's headers, URL and remote
address, and the current time.

``python3 -m overunder.tour.pinger OUT.tar`` writes the image's root filesystem as a tar for
``overunder import``; the image has ``/etc/localtime`` (UTC, a real TZif file) for the
tutorial's step 16 to delete, and a ``/root`` dir for the shell history of step 12.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from overunder.errors import NotFound

__all__ = ["CGI_SCRIPT", "IMPORT_CHANGES", "fetch", "write_rootfs_tar"]

PORT = 3000
IMPORT_CHANGES = (
    f'CMD ["httpd", "-f", "-v", "-p", "{PORT}", "-h", "/www"]',
    f"EXPOSE {PORT}",
    "ENV PATH=/bin",
)
"""``--change`` lines for ``overunder import`` (the command the container runs)."""

CGI_SCRIPT = r"""#!/bin/sh
# The pinger: JSON about the container this runs in (busybox httpd CGI).
q() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }
kb() { awk -v k="$1:" '$1 == k { printf "%.0f", $2 * 1024; exit }' "$2"; }
boot=$(awk '/^btime/ { print $2 }' /proc/stat)
ticks=$(awk '{ print $22 }' /proc/1/stat)
start=$((boot + ticks / 100))
echo "Content-Type: application/json"
echo
echo "{"
echo "    \"hostname\": $(q "$(hostname)"),"
echo "    \"startTime\": $(q "$(date -u -d "@$start" +%Y-%m-%dT%H:%M:%SZ)"),"
echo "    \"processId\": $$,"
echo "    \"serverProcessId\": $PPID,"
echo "    \"memoryUsage\": {"
echo "        \"rss\": $(kb VmRSS /proc/self/status),"
echo "        \"vmSize\": $(kb VmSize /proc/self/status),"
echo "        \"memTotal\": $(kb MemTotal /proc/meminfo),"
echo "        \"memAvailable\": $(kb MemAvailable /proc/meminfo)"
echo "    },"
echo "    \"networkInfo\": {"
first=1
for dev in $(awk -F: 'NR > 2 { gsub(/ /, "", $1); print $1 }' /proc/net/dev); do
    [ $first = 1 ] || echo ","
    first=0
    addr=$(ip -o -4 addr show dev "$dev" 2>/dev/null | awk '{ print $4; exit }')
    printf '        %s: {"address": %s}' "$(q "$dev")" "$(q "$addr")"
done
echo
echo "    },"
echo "    \"requestHeaders\": {"
env | grep '^HTTP_' | sort | awk -F= '{
    name = tolower(substr($1, 6)); gsub(/_/, "-", name)
    value = substr($0, length($1) + 2); gsub(/\\/, "\\\\", value); gsub(/"/, "\\\"", value)
    printf "%s        \"%s\": \"%s\"", (NR > 1 ? ",\n" : ""), name, value
}'
echo
echo "    },"
echo "    \"currentTime\": $(q "$(date -u +%Y-%m-%dT%H:%M:%SZ)"),"
echo "    \"requestUrl\": $(q "$REQUEST_URI"),"
echo "    \"remoteAddress\": $(q "$REMOTE_ADDR")"
echo "}"
"""

# A valid TZif (version 2) file for UTC, as /usr/share/zoneinfo/UTC holds it: used when the
# host has no zoneinfo to copy.
_TZIF_UTC = (
    b"TZif2"
    + b"\0" * 15
    + b"\0\0\0\0" * 3
    + b"\0\0\0\0"
    + b"\0\0\0\1"
    + b"\0\0\0\4"
    + b"\0\0\0\0\0\0UTC\0"
) * 2 + b"\nUTC0\n"


def _localtime() -> bytes:
    host = Path("/usr/share/zoneinfo/UTC")
    try:
        data = host.read_bytes()
    except OSError:
        return _TZIF_UTC
    return data if data.startswith(b"TZif") else _TZIF_UTC


def write_rootfs_tar(out: Path) -> None:
    """Write the pinger's root filesystem as a tar to ``out``."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    if not os.path.exists(busybox):
        raise NotFound(
            "the pinger image is built from busybox, which is not installed",
            hint="install busybox-static (apt-get install busybox-static)",
        )
    applets = subprocess.run(
        [busybox, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    mtime = 1568659677  # 2019-09-16, the tutorial's day
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:

        def add(name: str, *, data: bytes | None = None, mode: int = 0o644, link: str = "") -> None:
            ti = tarfile.TarInfo(name)
            ti.mode, ti.mtime, ti.uname, ti.gname = mode, mtime, "root", "root"
            if link:
                ti.type, ti.linkname = tarfile.SYMTYPE, link
                tf.addfile(ti)
            elif data is None:
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))

        for d in ("bin", "dev", "etc", "home", "proc", "root", "sys", "tmp", "var", "www"):
            add(d, mode=0o1777 if d == "tmp" else 0o700 if d == "root" else 0o755)
        with open(busybox, "rb") as f:
            add("bin/busybox", data=f.read(), mode=0o755)
        for applet in applets:
            if applet != "busybox":
                add(f"bin/{applet}", link="busybox", mode=0o777)
        add(
            "etc/passwd",
            data=b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
        )
        add("etc/group", data=b"root:x:0:\nnogroup:x:65534:\n")
        add("etc/localtime", data=_localtime())
        add("www/cgi-bin", mode=0o755)
        add("www/cgi-bin/index.cgi", data=CGI_SCRIPT.encode(), mode=0o755)


def fetch(url: str, *, attempts: int = 50) -> str:
    """GET ``url``, retrying while the server starts (connection refused or reset)."""
    import time
    import urllib.error
    import urllib.request

    last: Exception | None = None
    for _ in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                body: bytes = resp.read()
                return body.decode("utf-8", "replace")
        except (urllib.error.URLError, ConnectionError) as err:
            last = err
            time.sleep(0.2)
    raise ConnectionError(f"{url}: {last}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "fetch":
        sys.stdout.write(fetch(sys.argv[2]))
    elif len(sys.argv) == 2:
        write_rootfs_tar(Path(sys.argv[1]))
    else:
        sys.stderr.write("usage: python3 -m overunder.tour.pinger OUT.tar | fetch URL\n")
        raise SystemExit(2)
