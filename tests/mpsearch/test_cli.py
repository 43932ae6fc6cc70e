"""The command line: verbs listed, version, inspect on a bundled config (meta device, no weights)."""

import json

from typer.testing import CliRunner

import mpsearch
from mpsearch.cli import app

runner = CliRunner()


def test_help_lists_verbs():
    out = runner.invoke(app, ["--help"]).output
    assert "inspect" in out


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and mpsearch.__version__ in result.output


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
