"""`mpsearch merge`: shards written by `mpsearch profile --shard i/n` joined into one profile."""

from typer.testing import CliRunner

from mpsearch.cli import app
from mpsearch.profiling.store import Profile
from tests.mpsearch.profiling.test_profiler import PROMPTS

runner = CliRunner()


def test_profile_shards_then_merge(tiny_pipe, tmp_path):
    """Two shards profiled from the command line merge into the whole profile; a bad --mode is refused."""
    model = tmp_path / "model"
    tiny_pipe.save_pretrained(model)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    common = ["--model", str(model), "--prompts", str(prompts), "--steps", "4", "--bits", "2,8", "--act-bits", "8,16",
              "--metrics", "sqnr", "--layers", "^conv_(in|out)$"]  # fmt: skip
    for i in range(2):
        r = runner.invoke(app, ["profile", *common, "--out", str(tmp_path / f"s{i}"), "--shard", f"{i}/2"])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert len(Profile.load(tmp_path / "m")) == 2 * 3 * 1
    r = runner.invoke(app, ["profile", *common, "--mode", "nope", "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "mode" in r.output
