from __future__ import annotations

import pytest

from overunder.cli.commands._gotemplate import go_str, render, table_headers
from overunder.errors import InvalidArgument

OBJ = {
    "Id": "sha256:abc",
    "Config": {"Env": ["A=1", "B=2"], "Cmd": ["sh"], "Labels": {"k": "v"}, "User": ""},
    "GraphDriver": {"Data": {"UpperDir": "/x/fs"}},
    "Size": 12,
    "Empty": None,
    "Flag": True,
}


@pytest.mark.parametrize(
    ("fmt", "want"),
    [
        ("{{.GraphDriver.Data.UpperDir}}", "/x/fs"),
        ("{{json .Config.Cmd}}", '["sh"]'),
        ("{{.Config.Env}}", "[A=1 B=2]"),
        ("{{.Config.Labels}}", "map[k:v]"),
        ("{{.Empty}}", "<no value>"),
        ("{{.Config.Missing}}", "<no value>"),
        ("{{.Flag}} {{.Size}}", "true 12"),
        ('{{index .Config.Labels "k"}}', "v"),
        ("{{index .Config.Env 1}}", "B=2"),
        ('{{join .Config.Env ","}}', "A=1,B=2"),
        ("{{len .Config.Env}}", "2"),
        ("{{upper .Config.Cmd}}", "[SH]"),
        ("id={{ .Id }}\\t!", "id=sha256:abc\t!"),
        ("{{json .}}", None),
    ],
)
def test_render(fmt: str, want: str | None) -> None:
    out = render(fmt, OBJ)
    if want is not None:
        assert out == want
    else:
        assert out.startswith('{"Id":"sha256:abc"')


def test_errors_name_the_field() -> None:
    with pytest.raises(InvalidArgument, match="Nope"):
        render("{{.Nope}}", OBJ)
    with pytest.raises(InvalidArgument, match="unsupported"):
        render("{{range .Config.Env}}x{{end}}", OBJ)


def test_table_headers_and_go_str() -> None:
    assert table_headers("table {{.Repository}}\\t{{.ID}}", {"ID": "IMAGE ID"}) == (
        "REPOSITORY\tIMAGE ID"
    )
    assert table_headers("{{.ID}}", {}) is None
    assert go_str(1.0) == "1"
    assert go_str([{"a": None}]) == "[map[a:<no value>]]"
