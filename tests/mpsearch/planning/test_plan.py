"""Plan files: round-trip, and every validation error names the layer, line and field."""

import json

import pytest

from mpsearch.model import inventory
from mpsearch.planning.cost import model_bytes
from mpsearch.planning.plan import SCHEMA, LayerBits, Plan, PlanError


@pytest.fixture(scope="module")
def inv():
    return inventory("sd15")


def test_roundtrip(tmp_path, inv):
    plan = Plan.uniform(inv, 4, 8, budget="4.5bits")
    plan.layers["conv_in"] = LayerBits(8, 16)
    plan.kept_timesteps = [999, 500, 1]
    plan.step_overrides = [{"steps": [0], "layers": {"conv_out": {"a_bits": 16}}}]
    plan.predict(inv)
    path = plan.save(tmp_path / "plan.json")
    back = Plan.load(path)
    assert back.to_dict() == plan.to_dict()
    back.validate(inv)
    assert back.predicted["bytes"] == model_bytes(inv, back.w_bits())
    # one layer per line
    assert sum('"w_bits"' in line for line in path.read_text().splitlines()) == len(inv)


def write(tmp_path, d):
    p = tmp_path / "p.json"
    p.write_text(json.dumps(d, indent=1))
    return p


def good(inv):
    return {"schema": SCHEMA, "layers": {n: {"w_bits": 4, "a_bits": 8} for n in inv.names}}


def test_not_json_names_the_line(tmp_path):
    p = tmp_path / "p.json"
    p.write_text('{\n "schema": "mpsearch.planning.plan/1",\n "layers": {,\n}')
    with pytest.raises(PlanError, match=r"p.json:3: not valid JSON"):
        Plan.load(p)


def test_wrong_schema(tmp_path, inv):
    d = good(inv) | {"schema": "other/9"}
    with pytest.raises(PlanError, match="schema: expected"):
        Plan.load(write(tmp_path, d))


def test_unsupported_bits_names_layer_line_and_field(tmp_path, inv):
    d = good(inv)
    d["layers"]["conv_out"]["w_bits"] = 7
    p = write(tmp_path, d)
    line = next(i for i, s in enumerate(p.read_text().splitlines(), 1) if '"conv_out"' in s)
    with pytest.raises(PlanError, match=rf"p.json:{line}: layers\['conv_out'\].w_bits: 7 is not one of"):
        Plan.load(p)
    d["layers"]["conv_out"] = {"w_bits": 4, "a_bits": 5}
    with pytest.raises(PlanError, match=r"a_bits: 5"):
        Plan.load(write(tmp_path, d))
    d["layers"]["conv_out"] = {"w_bits": 4, "bits": 5}
    with pytest.raises(PlanError, match=r"conv_out"):
        Plan.load(write(tmp_path, d))


def test_unknown_and_missing_layers(tmp_path, inv):
    d = good(inv)
    d["layers"]["not.a.layer"] = {"w_bits": 4, "a_bits": 8}
    with pytest.raises(PlanError, match="'not.a.layer' is not a quantizable layer of 'sd15'"):
        Plan.load(write(tmp_path, d)).validate(inv)
    d = good(inv)
    del d["layers"]["conv_in"]
    with pytest.raises(PlanError, match="'conv_in' of 'sd15' has no bits"):
        Plan.load(write(tmp_path, d)).validate(inv)


def test_plan_for_another_model_is_refused(inv):
    plan = Plan.uniform(inventory("sdxl-base"), 8)
    with pytest.raises(PlanError, match="made for model 'sdxl-base'"):
        plan.validate(inv)
    plan.fingerprint = ""
    with pytest.raises(PlanError, match="is not a quantizable layer of 'sd15'"):
        plan.validate(inv)


def test_format_cannot_store_bits(tmp_path, inv):
    d = good(inv) | {"format": "nope"}
    with pytest.raises(PlanError, match="format: unknown weight format 'nope'"):
        Plan.load(write(tmp_path, d))


def test_bad_step_overrides_and_timesteps(tmp_path, inv):
    with pytest.raises(PlanError, match="kept_timesteps"):
        Plan.load(write(tmp_path, good(inv) | {"kept_timesteps": ["a"]}))
    with pytest.raises(PlanError, match=r"step_overrides\[0\]"):
        Plan.load(write(tmp_path, good(inv) | {"step_overrides": [{"steps": 3}]}))
    d = good(inv) | {"step_overrides": [{"steps": [0], "layers": {"ghost": {"a_bits": 8}}}]}
    with pytest.raises(PlanError, match="ghost"):
        Plan.load(write(tmp_path, d)).validate(inv)


@pytest.mark.parametrize("field,value,why", [
    ("step_overrides", [{"steps": [0], "layers": {"conv_in": {"a_bits": "x"}}}],
     r"step_overrides\[0\].layers\['conv_in'\].a_bits: 'x' is not one of \[4, 6, 8, 16\]"),
    ("step_overrides", [{"steps": [0], "layers": {"conv_in": {"w_bits": 7}}}], r"step_overrides\[0\].layers\['conv_in'\].w_bits: 7 is not one"),
    ("step_overrides", [{"steps": [-1], "layers": {}}], r"step_overrides\[0\]: must be"),
    ("step_overrides", [{"steps": [0], "layers": {"conv_in": 8}}], r"step_overrides\[0\].layers\['conv_in'\]: must be"),
    ("step_overrides", {"steps": [0]}, "step_overrides: must be a list"),
    ("predicted", [1, 2], r"predicted: must be an object .* got \[1, 2\]"),
    ("predicted", {"bytes": "many"}, "predicted.bytes: must be a number"),
    ("predicted", {"loss": float("nan")}, "predicted.loss: must be a number"),
    ("predicted", {"bitops": -1}, "predicted.bitops: must be a number ≥ 0"),
    ("predicted", {"losses": {"quality": None}}, "predicted.losses: must be a number per group"),
    ("solver", "ilp", "solver: must be an object"),
    ("solver", 0, "solver: must be an object"),
    ("predicted", "", "predicted: must be an object"),
    ("pruned_units", False, "pruned_units: must be a list"),
    ("budget", 5, "budget: must be null or a budget"),
    ("budget", "lots", "budget: cannot read budget 'lots'"),
    ("model", ["sd15"], "model: must be a string"),
    ("format", 4, "format: must be a format name"),
])
def test_every_field_is_checked(tmp_path, inv, field, value, why):
    """A wrong type or value anywhere is a PlanError naming file, line and field (never a TypeError later)."""
    p = write(tmp_path, good(inv) | {field: value})
    line = next(i for i, s in enumerate(p.read_text().splitlines(), 1) if f'"{field}"' in s)
    with pytest.raises(PlanError, match=rf"p.json:{line}: {why}"):
        Plan.load(p)


def test_not_text_or_too_deep_is_a_plan_error(tmp_path):
    p = tmp_path / "p.json"
    p.write_bytes(b'{"schema": "\xff"}')
    with pytest.raises(PlanError, match="byte 12 is not UTF-8"):
        Plan.load(p)
    p.write_text("[" * 100_000)
    with pytest.raises(PlanError, match="nested too deeply"):
        Plan.load(p)


def test_save_replaces_the_file_whole(tmp_path, inv):
    """Saving goes through a temporary sibling renamed into place: no partial file, no leftovers."""
    path = Plan.uniform(inv, 4).save(tmp_path / "plan.json")
    Plan.uniform(inv, 8).save(path)
    assert Plan.load(path).layers["conv_in"].w_bits == 8
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        Plan.uniform(inv, 4).save(tmp_path / "d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "plan.json"] and not any((tmp_path / "d").iterdir())
