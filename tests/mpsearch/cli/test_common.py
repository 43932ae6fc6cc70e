"""The error contract and the console width: one `error:` line and exit 2 for bad input, no wrapping and
no cut table cells when the output is not a terminal, whatever COLUMNS says or however long the paths."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mpsearch.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def narrow(monkeypatch):
    """A 40-column terminal setting: output that is not a terminal must ignore it."""
    monkeypatch.setenv("COLUMNS", "40")


def one_error_line(result) -> str:
    """The single `error:` line of a failed command (exit 2, nothing else printed)."""
    assert result.exit_code == 2, result.output
    lines = result.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_tables_print_full_layer_names():
    names = [l["name"] for l in json.loads(runner.invoke(app, ["inspect", "--model", "sd15", "--json"]).output)["layers"]]
    result = runner.invoke(app, ["inspect", "--model", "sd15"])
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip() for line in result.output.splitlines() if line.count("│") > 2}
    assert set(names) <= rows  # every name whole, on its own row (the longest is 56 characters)
    assert "…" not in result.output


def test_long_paths_stay_on_one_line(tmp_path):
    deep = tmp_path / ("d" * 120) / ("e" * 120)
    deep.mkdir(parents=True)
    (deep / "plan.json").write_text("{not json")
    line = one_error_line(runner.invoke(app, ["export", "--plan", str(deep / "plan.json"), "--out", str(deep / "o")]))
    assert f"{deep / 'plan.json'}:1: not valid JSON" in line
    assert not (deep / "o").exists()
    line = one_error_line(runner.invoke(app, ["distill", "--plan", str(deep / "nope.json"), "--out", str(deep / "o")]))
    assert str(deep / "nope.json") in line and "does not exist" in line


def test_usage_errors_are_one_line():
    assert "Missing option '--budget'" in one_error_line(runner.invoke(app, ["solve"]))
    assert "--protect-top" in one_error_line(runner.invoke(app, ["solve", "-b", "4bits", "--protect-top", "abc"]))
    assert "No such command 'nosuch'" in one_error_line(runner.invoke(app, ["nosuch"]))
    assert "--bogus" in one_error_line(runner.invoke(app, ["inspect", "--bogus"]))
    assert runner.invoke(app, []).exit_code in (0, 2)  # bare `mpsearch` prints the help


def test_messages_are_not_markup(tmp_path):
    """A path with rich markup in it is printed as it is, not styled or swallowed."""
    odd = tmp_path / "[bold]x[/]"
    line = one_error_line(runner.invoke(app, ["distill", "--plan", str(odd / "p.json"), "--out", str(tmp_path / "o")]))
    assert str(odd / "p.json") in line
