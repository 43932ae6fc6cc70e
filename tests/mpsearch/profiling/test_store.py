"""Reading a profile folder: every malformed or mixed file is one error naming file:line, never a guess."""

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mpsearch.cli import app
from mpsearch.evaluation.demo import PROFILE
from mpsearch.planning.inputs import load_profile
from mpsearch.profiling.store import Profile, ProfileError, merge, read_measurements

runner = CliRunner()


@pytest.fixture
def demo(tmp_path) -> Path:
    """A writable copy of the shipped demo profile."""
    return Path(shutil.copytree(PROFILE, tmp_path / "demo"))


def _edit_line(path: Path, n: int, fn) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[n - 1] = fn(lines[n - 1])
    path.write_text("".join(lines))


def _set(key: str, raw: str):
    """Line editor: the JSON value of `key` replaced by the literal text `raw`."""
    def edit(line: str) -> str:
        row = json.loads(line)
        row[key] = "@@"
        return json.dumps(row).replace('"@@"', raw) + "\n"
    return edit


def _drop(key: str):
    return lambda line: json.dumps({k: v for k, v in json.loads(line).items() if k != key}) + "\n"


ROW_DAMAGE = {  # name: (line editor, what the error says)
    "garbage": (lambda line: "garbage{\n", "not a JSON measurement"),
    "nan": (_set("degradation", "NaN"), "degradation nan: must be a finite number ≥ 0"),
    "infinite": (_set("degradation", "Infinity"), "degradation inf"),
    "negative": (_set("degradation", "-0.25"), "degradation -0.25"),
    "string": (_set("degradation", '"0.1"'), "degradation '0.1'"),
    "string bits": (_set("bits", '"4"'), "'bits' and 'step_group' must be integers"),
    "missing key": (_drop("metric"), "missing 'metric'"),
    "array": (lambda line: "[1, 2]\n", "not a JSON object"),
    "unknown layer": (_set("layer", '"not_a_layer"'), "layer 'not_a_layer' is not in meta.json's layers"),
    "unknown bits": (_set("bits", "7"), "weight bits 7 are not among meta.json's candidates"),
    "unknown metric": (_set("metric", '"lpips"'), "metric 'lpips' is not among meta.json's metrics"),
    "unknown step group": (_set("step_group", "9"), "step_group 9 but meta.json declares 3 step group(s)"),
    "estimated in a /1 profile": (_set("estimated", "true, \"from_bits\": 6"),
                                  "an estimated row in a mpsearch.profile/1 profile"),
    "estimated without from_bits": (_set("estimated", "true"), "needs \"estimated\": true and an integer"),
}


@pytest.mark.parametrize("damage", list(ROW_DAMAGE))
def test_a_damaged_row_is_an_error_naming_file_and_line(demo, damage):
    edit, says = ROW_DAMAGE[damage]
    rows = demo / "measurements.jsonl"
    _edit_line(rows, 100, edit)
    with pytest.raises(ProfileError, match="measurements.jsonl:100: ") as e:
        Profile.load(demo)
    assert says in str(e.value)
    result = runner.invoke(app, ["solve", "-b", "3bits", "-p", str(demo), "-o", str(demo / "plan.json")])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [f"error: {e.value}"]
    assert not (demo / "plan.json").exists()


def test_duplicate_rows_must_agree(demo):
    rows = demo / "measurements.jsonl"
    line = rows.read_text().splitlines()[99]
    n = len(rows.read_text().splitlines())
    with rows.open("a") as f:
        f.write(line + "\n")  # an identical copy (a run that wrote a measurement twice) reads as one
    assert len(Profile.load(demo)) == n
    with rows.open("a") as f:
        f.write(_set("degradation", "0.5")(line))
    with pytest.raises(ProfileError, match=f"measurements.jsonl:{n + 2}: measurement .* disagrees with line 100"):
        Profile.load(demo)


def test_a_torn_last_line_is_an_unmade_measurement(demo):
    """A killed profile run leaves its last line without a newline; solve reads it as never measured
    (the option is not offered, and named), resume measures it again."""
    rows = demo / "measurements.jsonl"
    text = rows.read_text()
    first = json.loads(text.splitlines()[0])  # conv_in W2 sqnr, group 0
    assert (first["layer"], first["tensor"], first["bits"]) == ("conv_in", "weight", 2)
    rows.write_text("".join(text.splitlines(keepends=True)[1:]) + json.dumps(first)[:40])
    assert len(read_measurements(rows)) == len(text.splitlines()) - 1
    from mpsearch.planning.planner import solve

    plan = solve(demo, "3bits")
    assert plan.solver["unmeasured"] == ["conv_in W2"]
    read_measurements(rows, repair=True)
    assert rows.read_bytes().endswith(b"\n")


@pytest.mark.parametrize("name", ["meta.json", "inventory.json"])
def test_broken_meta_or_inventory_json_names_file_and_line(demo, name):
    _edit_line(demo / name, 5, lambda line: line.rstrip("\n") + ",,\n")
    result = runner.invoke(app, ["solve", "-b", "3bits", "-p", str(demo), "-o", str(demo / "plan.json")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {demo / name}:5: not valid JSON (Expecting property "
                                                  "name enclosed in double quotes)"]


@pytest.mark.parametrize("change, says", [
    (lambda inv: inv.update(fingerprint="0123456789abcdef"), "inventory fingerprint 0123456789abcdef != meta.json's"),
    (lambda inv: inv.update(model="sd15"), "inventory of model 'sd15' but meta.json was measured on 'demo'"),
    (lambda inv: inv["layers"].pop(3), "layers differ from meta.json's (118 vs 119"),
    (lambda inv: inv["layers"][0].update(params=999), "layer 'conv_in' has 999 params but weight shape (64, 4, 3, 3)"),
    (lambda inv: inv.pop("layers"), "not a valid inventory (KeyError: 'layers')"),
])
def test_a_folder_assembled_from_two_models_is_refused(demo, change, says):
    inv = json.loads((demo / "inventory.json").read_text())
    change(inv)
    (demo / "inventory.json").write_text(json.dumps(inv))
    with pytest.raises(ProfileError, match="inventory.json: ") as e:
        load_profile(demo)
    assert says in str(e.value)
    result = runner.invoke(app, ["solve", "-b", "3bits", "-p", str(demo), "-o", str(demo / "plan.json")])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [f"error: {e.value}"]


@pytest.mark.parametrize("key", ["layers", "candidates", "step_groups"])
def test_meta_missing_a_key_is_refused(demo, key):
    meta = json.loads((demo / "meta.json").read_text())
    del meta[key]
    (demo / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ProfileError, match=f"meta.json: '{key}' is missing"):
        Profile.load(demo)


def test_merge_refuses_a_damaged_shard(demo, tmp_path):
    _edit_line(demo / "measurements.jsonl", 7, _set("degradation", "NaN"))
    result = runner.invoke(app, ["merge", str(demo), "-o", str(tmp_path / "merged")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [f"error: {demo / 'measurements.jsonl'}:7: degradation nan: must "
                                                  "be a finite number ≥ 0"]
    assert not (tmp_path / "merged" / "measurements.jsonl").exists()
    with pytest.raises(ProfileError, match="measurements.jsonl:7: "):
        merge(tmp_path / "merged2", [demo])


def test_the_shipped_demo_profile_loads_clean():
    prof = Profile.load(PROFILE)
    assert len(prof) == len((PROFILE / "measurements.jsonl").read_text().splitlines())
    df, meta, inv = load_profile(PROFILE)
    assert inv.names == meta["layers"] and inv.fingerprint == meta["inventory_fingerprint"]


def test_estimated_rows_of_a_v2_profile_load_marked_and_v1_tools_refuse_it(demo):
    """A `/2` profile (image triage) holds rows marked estimated: loaded with `estimated` and `from_bits`,
    kept by a merge; its schema is one a `/1`-only reader refuses."""
    meta = json.loads((demo / "meta.json").read_text())
    meta.update(schema="mpsearch.profile/2", image_widths={"rule": "triage"})
    (demo / "meta.json").write_text(json.dumps(meta))
    _edit_line(demo / "measurements.jsonl", 1, _set("estimated", 'true, "from_bits": 3'))
    prof = Profile.load(demo)
    assert prof.df.estimated.sum() == 1 and prof.df.loc[prof.df.estimated, "from_bits"].tolist() == [3]
    merged = merge(demo.parent / "merged", [demo])
    assert merged.df.estimated.sum() == 1
    assert '"estimated":true,"from_bits":3' in (demo.parent / "merged" / "measurements.jsonl").read_text()
    meta["schema"] = "mpsearch.profile/3"
    (demo / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ProfileError, match="schema 'mpsearch.profile/3', expected one of mpsearch.profile/1, "
                                           "mpsearch.profile/2"):
        Profile.load(demo)
