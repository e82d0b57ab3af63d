"""``overunder ps``: list containers (Docker's columns, widths and texts)."""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from typing import Any

from overunder.cli.context import Context
from overunder.cli.render import ago, human_duration, table

HEADERS = ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "ps",
        help="list containers",
        description="List running containers (all with -a), newest first, in Docker's columns.",
    )
    p.add_argument("-a", "--all", action="store_true", help="show all containers")
    p.add_argument("-q", "--quiet", action="store_true", help="only display container ids")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate output")
    p.add_argument("--format", choices=["table", "json"], default="table")
    p.set_defaults(func=run)


def command_text(path: str, args: list[str]) -> str:
    """The daemon's form: arguments containing a space wrapped in single quotes."""
    parts = [f"'{a}'" if " " in a else a for a in args]
    return " ".join([path, *parts]) if parts else path


def go_quote(s: str) -> str:
    """Go's strconv.Quote for the printable text ps shows."""
    out = ['"']
    for ch in s:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def ellipsis(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def _ts(text: str) -> float:
    if not text or text.startswith("0001-"):
        return 0.0
    base, _, frac = text.rstrip("Z").partition(".")
    t = datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return t + (float("0." + frac) if frac else 0.0)


def status_text(rec: Any, now: float) -> str:
    st = rec.state
    if st.status == "running":
        return "Up " + human_duration(now - _ts(st.started_at))
    if st.status == "paused":
        return "Up " + human_duration(now - _ts(st.started_at)) + " (Paused)"
    if st.status == "exited":
        return f"Exited ({st.exit_code}) {ago(_ts(st.finished_at), now)}"
    if st.status == "restarting":
        return f"Restarting ({st.exit_code}) {ago(_ts(st.finished_at), now)}"
    if st.status == "created":
        return "Created"
    if st.status == "removing":
        return "Removal In Progress"
    return "Dead"


def ports_text(rec: Any) -> str:
    if rec.state.status not in ("running", "paused"):
        return ""
    return ", ".join(f"{p['HostIp']}:{p['HostPort']}->{p['ContainerPort']}/tcp" for p in rec.ports)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from overunder.engine.containers import list_containers

    recs = list_containers(ctx.paths, all_states=args.all)
    now = time.time()
    if args.quiet:
        for r in recs:
            ctx.out(r.id if args.no_trunc else r.short_id)
        return 0
    rows = []
    for r in recs:
        cmd = command_text(r.path, r.args)
        rows.append(
            {
                "Command": go_quote(cmd if args.no_trunc else ellipsis(cmd, 20)),
                "CreatedAt": datetime.fromtimestamp(r.created_ns / 1e9, tz=UTC).strftime(
                    "%Y-%m-%d %H:%M:%S +0000 UTC"
                ),
                "ID": r.id if args.no_trunc else r.short_id,
                "Image": r.image_name,
                "Labels": ",".join(f"{k}={v}" for k, v in (r.config.get("Labels") or {}).items()),
                "LocalVolumes": "0",
                "Mounts": "",
                "Names": r.name,
                "Networks": str(r.host_config.get("NetworkMode") or ""),
                "Ports": ports_text(r),
                "RunningFor": ago(r.created_ns / 1e9, now),
                "Size": "0B",
                "State": str(r.state.status),
                "Status": status_text(r, now),
            }
        )
    if args.format == "json":
        for row in rows:
            ctx.out(json.dumps(row, separators=(",", ":"), ensure_ascii=False))
        return 0
    cells = [
        [
            row["ID"],
            row["Image"],
            row["Command"],
            row["RunningFor"],
            row["Status"],
            row["Ports"],
            row["Names"],
        ]
        for row in rows
    ]
    ctx.out(table(HEADERS, cells))
    return 0
