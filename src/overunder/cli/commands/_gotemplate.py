"""A small subset of Go's text/template, enough for ``--format`` as the Docker docs and the
tutorial use it: ``{{.A.B}}``, ``{{json .A}}``, ``{{.}}``, ``{{index .A "k"}}``,
``{{join .A ","}}``, ``{{upper .A}}``, ``{{lower .A}}``, ``{{len .A}}``, the ``table`` prefix
and ``\\t``/``\\n`` escapes. Values print like Go's ``fmt`` (``map[k:v]``, ``[a b]``,
``<no value>``). Anything else (range, if, pipelines) raises InvalidArgument naming it.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

from overunder.errors import InvalidArgument

__all__ = ["go_str", "render", "table_headers"]

_ACTION = re.compile(r"{{-?\s*(.*?)\s*-?}}", re.S)


def go_str(v: Any) -> str:
    if v is None:
        return "<no value>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    if isinstance(v, list | tuple):
        return "[" + " ".join(go_str(x) for x in v) + "]"
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{go_str(v[k])}" for k in sorted(v)) + "]"
    return str(v)


def _path(obj: Any, expr: str) -> Any:
    if expr == ".":
        return obj
    if not expr.startswith("."):
        if expr.startswith('"') and expr.endswith('"'):
            return json.loads(expr)
        if expr.isdigit():
            return int(expr)
        raise InvalidArgument(
            f"template: unsupported expression {expr!r}",
            hint="use a field path like {{.GraphDriver.Data.UpperDir}}, {{json .Config}}, "
            "or --format json",
        )
    cur = obj
    for depth, part in enumerate(expr[1:].split(".")):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, dict) and depth > 0:
            # Below the top, objects come from JSON maps (configs): Go prints <no value>.
            return None
        elif isinstance(cur, dict):
            raise InvalidArgument(
                f"template: can't evaluate field {part} in {expr!r}",
                hint="field names are case-sensitive, as in 'docker inspect'",
            )
        else:
            return None
    return cur


def _eval(obj: Any, action: str) -> str:
    words = shlex.split(action, posix=False)
    if not words:
        return ""
    fn, args = words[0], words[1:]
    if fn.startswith(".") and not args:
        return go_str(_path(obj, fn))
    if fn == "json" and len(args) == 1:
        return json.dumps(_path(obj, args[0]), separators=(",", ":"))
    if fn == "index" and len(args) == 2:
        base = _path(obj, args[0])
        key = _path(obj, args[1])
        if isinstance(base, dict):
            return go_str(base.get(key))
        if isinstance(base, list) and isinstance(key, int) and 0 <= key < len(base):
            return go_str(base[key])
        return "<no value>"
    if fn == "join" and len(args) == 2:
        seq = _path(obj, args[0]) or []
        return str(_path(obj, args[1])).join(go_str(x) for x in seq)
    if fn in ("upper", "lower") and len(args) == 1:
        s = go_str(_path(obj, args[0]))
        return s.upper() if fn == "upper" else s.lower()
    if fn == "len" and len(args) == 1:
        return str(len(_path(obj, args[0]) or []))
    raise InvalidArgument(
        f"template: unsupported action {{{{{action}}}}}",
        hint='supported: {{.Field}}, {{json .Field}}, {{index .Map "key"}}, {{join .List ","}}',
    )


def _unescape(fmt: str) -> str:
    return fmt.replace("\\t", "\t").replace("\\n", "\n")


def render(fmt: str, obj: Any) -> str:
    """One object through the template (the ``table`` prefix is ignored here)."""
    text = _unescape(fmt.removeprefix("table").lstrip() if fmt.startswith("table") else fmt)
    return _ACTION.sub(lambda m: _eval(obj, m.group(1)), text)


def table_headers(fmt: str, names: dict[str, str]) -> str | None:
    """For a ``table …`` format, the header row (field -> header via ``names``)."""
    if not fmt.startswith("table"):
        return None
    text = _unescape(fmt[len("table") :].lstrip())

    def head(m: re.Match[str]) -> str:
        words = m.group(1).split()
        field = words[-1].lstrip(".") if words else ""
        return names.get(field, field.upper())

    return _ACTION.sub(head, text)
