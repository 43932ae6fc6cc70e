"""MixDQ's published logs as an mpsearch profile: a tiny fixture in their format for the tiny pipeline;
the profile solves without weights; a malformed file is one error naming file and key, and nothing is
written."""

import json

import pytest
import yaml

from mpsearch.model import inventory
from mpsearch.planning.planner import solve
from mpsearch.profiling.importers import IMPORTERS, import_profile
from mpsearch.profiling.store import Profile, ProfileError

from .mixdq_logs import log_file, write_logs

GRIDS = dict(k_grid=[0.5, 0.7, 0.9], b_points=2, act_k_grid=[0.94, 1.0, 1.05], act_b_points=2)


@pytest.fixture()
def inv(tiny_pipe):
    return inventory(tiny_pipe)


def test_import_then_solve_without_weights(tmp_path, tiny_pipe, inv):
    src = tmp_path / "MixDQ" / "mixed_precision_scripts"  # the repository layout
    written = write_logs(src, inv)
    prof = import_profile("mixdq", tmp_path / "MixDQ", tmp_path / "p", model=tiny_pipe)
    n_content = sum(la.group == "content" for la in inv)
    assert len(prof.df) == 2 * 3 * (len(inv) + n_content) and set(prof.df.step_group) == {0}
    row = prof.df[(prof.df.layer == inv.names[0]) & (prof.df.tensor == "act") & (prof.df.metric == "sqnr")]
    db = written["act", "sqnr"][inv.names[0]]
    assert list(row.bits) == [2, 4, 8] and list(row.value) == pytest.approx(db)
    assert list(row.degradation) == pytest.approx([10 ** (-v / 10) for v in db], rel=1e-12)
    content = next(la.name for la in inv if la.group == "content")
    ssim = prof.df[(prof.df.layer == content) & (prof.df.tensor == "weight") & (prof.df.metric == "ssim")]
    assert list(ssim.degradation) == pytest.approx([1 - v for v in written["weight", "ssim"][content]])
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    assert {m["version"] for m in meta["metrics"].values()} == {"imported:mixdq"}
    assert meta["candidates"] == {"weight": [2, 4, 8], "act": [2, 4, 8]} and meta["fingerprint"] is None
    assert json.loads((tmp_path / "p" / "inventory.json").read_text()) == json.loads(json.dumps(inv.to_dict()))
    plan = solve(tmp_path / "p", "5bits", solver="mixdq", **GRIDS)  # a folder, no model: no weights read
    quality = {plan.layers[la.name].w_bits for la in inv if la.group == "quality"}
    assert quality <= {4, 8} and {b.w_bits for b in plan.layers.values()} <= {2, 4, 8}
    assert {b.a_bits for b in plan.layers.values()} <= {4, 8, 16} and plan.solver["mixdq"]["act"]["fp16"]
    assert plan.solver["mixdq"]["pick"].startswith("no images")
    assert solve(tmp_path / "p", "4bits").predicted["mean_w_bits"] <= 4  # the exact ILP reads it too
    assert "mixdq" in IMPORTERS.names()


def _nan(data, key):
    data[key][1] = float("nan")


def _unknown(data, key):
    data["model.nope.to_q"] = data.pop(key)


def _short(data, key):
    data[key] = data[key][:2]


def _text(data, key):
    data[key][0] = "high"


@pytest.mark.parametrize("edit,message", [
    (_nan, "key 'model.{layer}': sqnr at 4 bits nan is not a number"),
    (_unknown, "key 'model.nope.to_q': 'nope.to_q' is not a quantizable layer"),
    (_short, "key 'model.{layer}': expected a list of 3 values"),
    (_text, "key 'model.{layer}': sqnr at 2 bits 'high' is not a number"),
], ids=["nan", "unknown-layer", "short-list", "text"])  # fmt: skip
def test_a_malformed_log_names_file_and_key(tmp_path, tiny_pipe, inv, edit, message):
    write_logs(tmp_path / "src", inv)
    path = log_file(tmp_path / "src", "weight", "sqnr")
    data = yaml.safe_load(path.read_text())
    edit(data, f"model.{inv.names[0]}")
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError, match=f"^{path}: " + message.format(layer=inv.names[0]).replace("(", r"\(")):
        import_profile("mixdq", tmp_path / "src", tmp_path / "p", model=tiny_pipe)
    assert not (tmp_path / "p").exists() and [p.name for p in tmp_path.iterdir()] == ["src"]  # nothing written


def test_other_bad_inputs(tmp_path, tiny_pipe, inv):
    write_logs(tmp_path / "src", inv, acts=False)
    ssim = log_file(tmp_path / "src", "weight", "ssim")
    good = ssim.read_text()
    data = yaml.safe_load(good)
    key = next(iter(data))
    ssim.write_text(yaml.safe_dump({**data, key: [1.5, 0.9, 0.99]}))
    with pytest.raises(ProfileError, match=f"key '{key}': ssim 1.5 at 2 bits gives degradation -0.5"):
        import_profile("mixdq", tmp_path / "src", tmp_path / "p", model=tiny_pipe)
    ssim.write_text("model.a: [1, 2\n")
    with pytest.raises(ProfileError, match=rf"^{ssim}:\d+: not valid YAML"):
        import_profile("mixdq", tmp_path / "src", tmp_path / "p", model=tiny_pipe)
    ssim.write_text(good)
    ratio = tmp_path / "src" / "optimize" / "tensor_ratio" / "tiny_sd" / "weight_ratio_config.yaml"
    ratios = yaml.safe_load(ratio.read_text())
    ratios[f"model.{inv.names[1]}"] *= 2
    ratio.write_text(yaml.safe_dump(ratios))
    with pytest.raises(ProfileError, match=f"key 'model.{inv.names[1]}': ratio .* the logs are of another model"):
        import_profile("mixdq", tmp_path / "src", tmp_path / "p", model=tiny_pipe)
    ratio.unlink()  # the ratio configs are optional: only checked when present
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "keep.txt").write_text("x")
    with pytest.raises(ProfileError, match="already exists and is not an empty folder"):
        import_profile("mixdq", tmp_path / "src", tmp_path / "p", model=tiny_pipe)
    prof = import_profile("mixdq", tmp_path / "src", tmp_path / "q", model=tiny_pipe)
    assert isinstance(prof, Profile) and prof.meta["tensors"] == ["weight"] and prof.meta["candidates"]["act"] == []
    with pytest.raises(ProfileError, match="no bundled config 'tiny-sd'; pass --model"):
        import_profile("mixdq", tmp_path / "src", tmp_path / "r")
