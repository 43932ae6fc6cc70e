"""`mpsearch profile`: a saved pipeline of each family profiled from the command line; bad options are one
error line and write nothing."""

import pytest
from typer.testing import CliRunner

from mpsearch.cli import app
from mpsearch.profiling.store import Profile
from tests.mpsearch.profiling.test_profiler import FAMILY_LAYERS, PROMPTS

runner = CliRunner()


@pytest.mark.parametrize("args,why", [
    (["profile", "--bits", "1"], "candidate weight bit-width 1: plans and checkpoints hold only 2, 3, 4, 5, 6, 8, 16"),
    (["profile", "--bits", "4,7"], "candidate weight bit-width 7"),
    (["profile", "--act-bits", "2"], "candidate activation bit-width 2"),
    (["profile", "--layers", "["], "--layers '[' is not a regular expression"),
    (["profile", "--groups", "names"], "--groups 'names': expected rule or measured"),
    (["profile", "--group", "attn2=style"], "--group 'attn2=style': expected REGEX=content or REGEX=quality"),
    (["profile", "--group", "[=content"], "--group '[' is not a regular expression"),
    (["profile", "--image-widths", "some"], "--image-widths 'some': expected all or triage"),
])
def test_profile_refuses_bad_options_writing_nothing(tmp_path, args, why):
    """1-bit weights gave NaN measurements and left a meta.json; 7 bits no format stores; a bad regex was a traceback."""
    result = runner.invoke(app, [*args, *(["--out", str(tmp_path / "prof")] if args[0] == "profile" else [])])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [f"error: {result.stderr[7:].strip()}"] and why in result.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", list(FAMILY_LAYERS))
def test_profile_on_a_saved_pipeline(name, tmp_path):
    """SDXL and PixArt pipelines saved to a folder profile from the command line (SDXL with CFG rescale)."""
    from tests.conftest import TINY_PIPELINES

    TINY_PIPELINES[name]().save_pretrained(tmp_path / "model")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    rescale = ["--guidance-rescale", "0.5"] if name == "sdxl" else []
    r = runner.invoke(app, ["profile", "--model", str(tmp_path / "model"), "--prompts", str(prompts),
                            "--steps", "2", "--bits", "2", "--act-bits", "16", "--metrics", "sqnr,ssim", *rescale,
                            "--all-metrics", "--layers", FAMILY_LAYERS[name], "--out", str(tmp_path / "p")])
    assert r.exit_code == 0, r.output
    prof = Profile.load(tmp_path / "p")
    assert len(prof) == 4 * 1 * 1 * 2 and prof.meta["component"] == ("unet" if name == "sdxl" else "transformer")
    assert prof.meta["sampling"].get("guidance_rescale") == (0.5 if name == "sdxl" else None)


def test_profile_resolution_and_measured_groups_from_the_command_line(tmp_path):
    """`--resolution` reaches the reference and the inventory; `--groups measured` writes its pass and its
    groups; `--group` overrides them."""
    import json

    from tests.conftest import TINY_PIPELINES

    TINY_PIPELINES["sd"]().save_pretrained(tmp_path / "model")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(PROMPTS[0] + "\n")
    r = runner.invoke(app, ["profile", "--model", str(tmp_path / "model"), "--prompts", str(prompts), "--steps", "2",
                            "--resolution", "64", "--groups", "measured", "--group", "^conv_in$=content",
                            "--bits", "8", "--tensors", "weight", "--metrics", "sqnr,ssim", "--layers", "^conv_in$",
                            "--out", str(tmp_path / "p")])  # fmt: skip
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    inv = json.loads((tmp_path / "p" / "inventory.json").read_text())
    assert meta["sampling"]["resolution"] == 64 and inv["resolution"] == 64
    assert meta["groups"]["conv_in"] == "content" and meta["group_note"].startswith("measured: ")
    assert meta["group_note"].endswith("user overrides first")
    assert (tmp_path / "p" / "grouping" / "measurements.jsonl").is_file()
    assert "measured groups: " in r.output
