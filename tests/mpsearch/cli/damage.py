"""Fuzzing the error contract through the command line: a bad budget, a damaged profile folder or a damaged
plan file is refused with exit code 2 and exactly one `error:` line on stderr, never a traceback, and
nothing is written (no plan, no checkpoint, no change to the input folder)."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mpsearch.cli import app
from mpsearch.planning.budget import Budget, BudgetError
from mpsearch.planning.cost import ACT_BITS, WEIGHT_BITS
from mpsearch.planning.plan import SCHEMA

runner = CliRunner()
DEMO = Path(__file__).resolve().parents[2] / "mpsearch" / "profiles" / "demo"
FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(result, folder: Path, before: dict[str, bytes]) -> str:
    """Assert the contract and return the error line."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert snapshot(folder) == before  # nothing written, nothing changed
    return lines[0]


# ---------------------------------------------------------------- budgets
NUMBERS = st.one_of(
    st.sampled_from(["0", "-1", "-0", "1e400", "1e-400", "9" * 400, "1e99999999999", "nan", "inf", "1e", ".", "0x10",
                     "1.2.3", "", "١", "1_0", "0.0001", "1e-9", "1e300"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
)
UNITS = st.sampled_from(["B", "kB", "MB", "GB", "GiB", "TiB", "XB", "bits", "bit", "b/w", "%", "%bitops", "Gbitops",
                         "Pbitops", "Ebitops", "", "bytes", " GB", "GB GB"])
BUDGETS = st.one_of(st.builds(lambda n, u: n + u, NUMBERS, UNITS), st.text(max_size=12))


@FUZZ
@given(text=BUDGETS)
def test_budget_parser(text):
    """An unreadable budget is refused before anything else; a readable one solves or is refused as
    infeasible (then stdout holds only the echoed budget), never a traceback."""
    assume("\x00" not in text and not text.startswith("-"))  # argv cannot hold NUL; '-…' reads as an option
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "plan.json"
        result = runner.invoke(app, ["solve", "--budget", text, "--profile", str(DEMO), "-o", str(out)])
        try:
            Budget.parse(text)
        except BudgetError:
            line = refused(result, Path(tmp), {})
            assert "budget" in line and result.stdout == ""
            return
        if result.exit_code == 0:
            assert out.is_file()
        else:
            refused(result, Path(tmp), {})
            assert result.stdout.startswith("budget: ") and len(result.stdout.splitlines()) == 1


# ---------------------------------------------------------------- profiles
ROWS = (DEMO / "measurements.jsonl").read_text().splitlines()
BAD_VALUES = st.sampled_from(["x", None, [1], {"a": 1}, True, float("nan"), float("inf"), -1.0])
ROW_FIELDS = {
    "degradation": BAD_VALUES,
    "value": st.sampled_from(["x", [1], {"a": 1}, True]),  # null or absent: a metric with no raw value
    "bits": st.sampled_from(["x", None, 1.5, [4], True]),
    "layer": st.sampled_from([5, None, "ghost.layer", ""]),
    "tensor": st.sampled_from(["bias", 5, None]),
    "step_group": st.sampled_from([-1, "x", None, 1.5, 10**6]),
    "metric": st.sampled_from([5, None, ""]),
}


# the keys `solve` reads from meta.json / inventory.json, and values each must refuse
JSON_KEYS = {
    "meta.json": {"schema": None, "layers": None, "candidates": None, "metrics": None, "step_groups": None,
                  "units": None, "model": [5, "x", [1], True], "inventory_fingerprint": [5, "x", [], True]},
    "inventory.json": {"schema": None, "model": None, "fingerprint": None, "layers": None,
                       "fixed_params": [None, "x", [], {}, [1], True, -1]},
}
WRONG = [None, 5, "x", [], {}, [1], True]


def damage_rows(data) -> tuple[str, int | None]:
    """(new measurements.jsonl text, the 1-based line that is wrong, or None for a disagreeing duplicate)."""
    rows = list(ROWS)
    i = data.draw(st.integers(0, len(rows) - 2), label="line - 1")  # a torn last line is an unfinished write
    kind = data.draw(st.sampled_from(["garbage", "truncate", "field", "drop", "duplicate"]), label="damage")
    if kind == "garbage":
        rows[i] = data.draw(st.text(min_size=1, max_size=30).filter(lambda s: s.strip() and len(s.splitlines()) == 1),
                            label="text")
    elif kind == "truncate":
        rows[i] = rows[i][: data.draw(st.integers(1, len(rows[i]) - 1), label="cut")]
    else:
        row = json.loads(rows[i])
        if kind == "field":
            key = data.draw(st.sampled_from(sorted(ROW_FIELDS)), label="key")
            row[key] = data.draw(ROW_FIELDS[key], label="value")
        elif kind == "drop":
            del row[data.draw(st.sampled_from(sorted(set(row) - {"value"})), label="key")]
        else:  # the same key measured twice with different results
            row["degradation"] = row["degradation"] * 2 + 1
            rows.insert(data.draw(st.integers(0, len(rows) - 1), label="at"), json.dumps(row))
            return "\n".join(rows) + "\n", None
        rows[i] = json.dumps(row)
    return "\n".join(rows) + "\n", i + 1


def damage_json(data, name: str) -> tuple[str, None]:
    """(new text of meta.json or inventory.json: cut short, or a key the solver reads set to a wrong value, None)."""
    text = (DEMO / name).read_text()
    if data.draw(st.booleans(), label="cut short"):
        return text[: data.draw(st.integers(0, len(text) - 3), label="cut")], None
    d = json.loads(text)
    key = data.draw(st.sampled_from(sorted(JSON_KEYS[name])), label="key")
    d[key] = data.draw(st.sampled_from(JSON_KEYS[name][key] or WRONG).filter(lambda v: v != d[key]), label="value")
    return json.dumps(d, indent=1), None


@pytest.fixture(scope="module")
def profile_copy(tmp_path_factory):
    """A pristine copy of the demo profile; each example damages a copy of it."""
    folder = tmp_path_factory.mktemp("fuzz") / "demo"
    shutil.copytree(DEMO, folder)
    return folder


@FUZZ
@given(data=st.data())
def test_profile_loader(profile_copy, data):
    """A damaged measurements.jsonl, meta.json or inventory.json: one line naming the file (and line)."""
    name = data.draw(st.sampled_from(["measurements.jsonl", "meta.json", "inventory.json"]), label="file")
    text, line = damage_rows(data) if name == "measurements.jsonl" else damage_json(data, name)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "demo"
        shutil.copytree(profile_copy, folder)
        (folder / name).write_text(text)
        before = snapshot(Path(tmp))
        result = runner.invoke(app, ["solve", "--budget", "4bits", "--profile", str(folder), "-o",
                                     str(Path(tmp) / "plan.json")])
        error = refused(result, Path(tmp), before)
        assert name in error
        if line is not None:
            assert f"{name}:{line}:" in error


# ---------------------------------------------------------------- plans
BAD_PLAN_FIELDS = {
    "schema": st.one_of(st.text(max_size=20), st.integers(), st.none()).filter(lambda v: v != SCHEMA),
    "layers": st.sampled_from([None, [], {}, "x", 5]),
    "predicted": st.one_of(st.lists(st.integers(), min_size=1), st.text(min_size=1), st.integers(), st.just(True),
                           st.dictionaries(st.sampled_from(["bytes", "loss", "bitops"]),
                                           st.sampled_from(["x", None, [1], float("nan"), float("inf")]), min_size=1)),
    "solver": st.one_of(st.lists(st.integers(), min_size=1), st.text(min_size=1), st.integers(), st.just(True)),
    "step_overrides": st.one_of(
        st.sampled_from([{}, "x", 5, [1], [{"steps": [0]}], [{"steps": [-1], "layers": {}}]]),
        st.builds(lambda bits: [{"steps": [0], "layers": {"conv_in": {"a_bits": bits}}}],
                  st.one_of(st.text(), st.integers().filter(lambda b: b not in ACT_BITS), st.none(), st.floats()))),
    "kept_timesteps": st.sampled_from([[], [1, 2], [-1], ["a"], "x", 5, [1.5]]),
    "pruned_units": st.sampled_from(["x", 5, [5], [""], True]),
    "pruned_fixed_params": st.sampled_from([-1, "x", 1.5, None, True]),
    "format": st.sampled_from(["nope", 5, None, ["packed"]]),
    "budget": st.one_of(st.text(max_size=10).filter(lambda t: _unreadable(t)), st.integers(), st.just([1])),
    "model": st.sampled_from([5, [1], {"a": 1}, True]),
    "fingerprint": st.sampled_from([5, [1], True]),
}


def _unreadable(text: str) -> bool:
    try:
        Budget.parse(text)
    except BudgetError:
        return True
    return False


@pytest.fixture(scope="module")
def good_plan(tmp_path_factory) -> dict:
    from mpsearch.planning.planner import solve

    return solve(DEMO, "3bits").to_dict()


@FUZZ
@given(data=st.data())
def test_plan_loader(good_plan, data):
    """A plan with any field of the wrong type or value, a layer's bits out of range, or cut short: export
    refuses it in one line naming the file and line, and writes no checkpoint."""
    d = json.loads(json.dumps(good_plan))
    kind = data.draw(st.sampled_from(["field", "layer", "truncate"]), label="kind")
    if kind == "field":
        key = data.draw(st.sampled_from(sorted(BAD_PLAN_FIELDS)), label="field")
        d[key] = data.draw(BAD_PLAN_FIELDS[key], label="value")
    elif kind == "layer":
        name = data.draw(st.sampled_from(sorted(d["layers"])), label="layer")
        attr, allowed = data.draw(st.sampled_from([("w_bits", WEIGHT_BITS), ("a_bits", ACT_BITS)]), label="attr")
        d["layers"][name] = {**d["layers"][name],
                             attr: data.draw(st.one_of(st.integers(), st.text(), st.none(), st.floats())
                                             .filter(lambda v: v not in allowed or isinstance(v, (bool, float))))}
    text = json.dumps(d, indent=1)
    if kind == "truncate":
        text = text[: data.draw(st.integers(0, len(text) - 2), label="cut")]
    with tempfile.TemporaryDirectory() as tmp:
        plan = Path(tmp) / "plan.json"
        plan.write_text(text)
        before = snapshot(Path(tmp))
        result = runner.invoke(app, ["export", "--plan", str(plan), "--out", str(Path(tmp) / "q")])
        assert f"error: {plan}:" in refused(result, Path(tmp), before)
