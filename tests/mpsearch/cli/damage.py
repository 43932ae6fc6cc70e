"""Damage for fuzzing the error contract through the command line (`test_solve.py`, `test_export.py`): bad
budgets, damaged profile folders and plan files, as hypothesis strategies, and `refused`, the contract
itself: exit code 2, exactly one `error:` line on stderr, never a traceback, and nothing written (no plan,
no checkpoint, no change to the input folder)."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from mpsearch.planning.budget import Budget, BudgetError
from mpsearch.planning.cost import ACT_BITS
from mpsearch.planning.plan import SCHEMA

DEMO = Path(__file__).resolve().parents[3] / "mpsearch" / "profiles" / "demo"
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
    "kept_timesteps": st.sampled_from([[], [1, 2], [-1], ["a"], "x", 5, [-1.5], [True]]),
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
