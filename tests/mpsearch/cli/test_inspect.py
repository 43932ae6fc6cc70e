"""`mpsearch inspect` on bundled configs (meta device, no weights): tables, JSON, group overrides, bad input."""

import json

import pytest
from typer.testing import CliRunner

from mpsearch.cli import app

runner = CliRunner()


def test_inspect_sdxl_turbo_offline():
    result = runner.invoke(app, ["inspect", "--model", "sdxl-turbo", "--limit", "3"])
    assert result.exit_code == 0, result.output
    assert "794 quantizable layers" in result.output
    assert "5,134,927,368 bytes" in result.output  # fp16 size of the SDXL UNet


def test_inspect_json_and_group_override():
    result = runner.invoke(app, ["inspect", "--model", "sd15", "--json", "--group", "conv_out=content"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.output)
    layers = {l["name"]: l for l in d["layers"]}
    assert len(layers) == 282 and layers["conv_out"]["group"] == "content"


def test_inspect_bad_input_is_a_clear_error():
    result = runner.invoke(app, ["inspect", "--model", "sd15", "--group", "nonsense"])
    assert result.exit_code == 2 and "REGEX=content" in result.output



@pytest.mark.parametrize("args,why", [
    (["inspect", "--model", "sd15", "--group", "(=content"], "--group '(' is not a regular expression"),
])
def test_inspect_refuses_bad_options_writing_nothing(tmp_path, args, why):
    """1-bit weights gave NaN measurements and left a meta.json; 7 bits no format stores; a bad regex was a traceback."""
    result = runner.invoke(app, [*args, *(["--out", str(tmp_path / "prof")] if args[0] == "profile" else [])])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [f"error: {result.stderr[7:].strip()}"] and why in result.stderr
    assert not any(tmp_path.iterdir())
