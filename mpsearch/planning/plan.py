"""The plan: per-layer weight/activation bits (and kept timesteps), as a readable, diffable JSON file.

    {"schema": "mpsearch.planning.plan/1", "model": "demo", "fingerprint": "…", "format": "packed",
     "budget": "4GB", "layers": {"conv_in": {"w_bits": 8, "a_bits": 16}, …},
     "step_overrides": [{"steps": [0, 1], "layers": {"conv_in": {"a_bits": 8}}}],
     "kept_timesteps": null, "pruned_units": [], "predicted": {"bytes": …, "loss": …}, "solver": {…}}

`kept_timesteps` (null = the model's own schedule): the timesteps a plan samples at, in sampling order,
when a timestep search (`mpsearch.planning.steps`) kept N of them; `mpsearch.pipelines.generate`, `evaluate` and
exported checkpoints sample at exactly those, and `predicted` adds `steps` and `bitops_run` (BitOPs of
one image: steps × BitOPs per denoiser call).

`Plan.load` checks the file and names the line and field of any problem; `Plan.validate(inventory)`
checks it against a model: unknown, missing or unsupported layers are errors that name the layer.

Pruned units (LAPTOP-Diff layer pruning, `mpsearch.profiling.pruning`): `pruned_units` names the removed blocks
(module names); every layer under one of them is written `{"pruned": true}` (in memory
`LayerBits(0, 0)`, `cost.PRUNED`: 0 bytes, 0 BitOPs) and no other layer may be. `pruned_fixed_params`
counts the unquantized parameters (norms) that left with those units, so `predicted.bytes` stays exact.
"""

from __future__ import annotations

import json
import math
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mpsearch.model import Inventory
from mpsearch.planning.cost import (
    ACT_BITS,
    FLOAT_BITS,
    PRUNED,
    WEIGHT_BITS,
    get_format,
    mean_bits,
    model_bitops,
    model_bytes,
)

SCHEMA = "mpsearch.planning.plan/1"


class PlanError(ValueError):
    """A plan file is malformed or does not fit the model; the message names the line and field."""


@dataclass
class LayerBits:
    w_bits: int = FLOAT_BITS
    a_bits: int = FLOAT_BITS

    @property
    def pruned(self) -> bool:
        return self.w_bits == PRUNED

    def to_dict(self) -> dict[str, Any]:
        return {"pruned": True} if self.pruned else {"w_bits": self.w_bits, "a_bits": self.a_bits}


def under(layer: str, units: list[str]) -> bool:
    """Whether `layer` lies inside one of the module names `units`."""
    return any(layer.startswith(u + ".") for u in units)


@dataclass
class Plan:
    layers: dict[str, LayerBits]
    model: str = ""
    fingerprint: str = ""
    format: str = "packed"
    budget: str | None = None
    step_overrides: list[dict[str, Any]] = field(default_factory=list)
    kept_timesteps: list[int | float] | None = None  # flow-matching schedules: fractional
    pruned_units: list[str] = field(default_factory=list)
    pruned_fixed_params: int = 0
    predicted: dict[str, Any] = field(default_factory=dict)
    solver: dict[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------- construction
    @classmethod
    def uniform(cls, inv: Inventory, w_bits: int, a_bits: int = FLOAT_BITS, fmt: str = "packed", **kw) -> Plan:
        plan = cls({l.name: LayerBits(w_bits, a_bits) for l in inv.layers}, model=inv.model,
                   fingerprint=inv.fingerprint, format=fmt, **kw)
        plan.predict(inv)
        return plan

    def w_bits(self) -> dict[str, int]:
        return {n: b.w_bits for n, b in self.layers.items()}

    def predict(self, inv: Inventory) -> dict[str, Any]:
        """Fill `predicted` with bytes (cost model), mean weight bits and BitOPs; keeps a solver's loss."""
        wb = self.w_bits()
        self.predicted = {
            **{k: v for k, v in self.predicted.items() if k in ("loss", "losses")},
            "bytes": model_bytes(inv, wb, self.format, self.pruned_fixed_params),
            "mean_w_bits": round(mean_bits(inv, wb), 4),
            "bitops": model_bitops(inv, {n: (b.w_bits, b.a_bits) for n, b in self.layers.items()}),
        }
        if self.kept_timesteps:  # BitOPs of one image: every kept step runs the same bits
            self.predicted["steps"] = len(self.kept_timesteps)
            self.predicted["bitops_run"] = self.predicted["bitops"] * len(self.kept_timesteps)
        return self.predicted

    # ---------------------------------------------------------------- files
    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "model": self.model,
            "fingerprint": self.fingerprint,
            "format": self.format,
            "budget": self.budget,
            "predicted": self.predicted,
            "solver": self.solver,
            "kept_timesteps": self.kept_timesteps,
            "pruned_units": self.pruned_units,
            "pruned_fixed_params": self.pruned_fixed_params,
            "step_overrides": self.step_overrides,
            "layers": {n: b.to_dict() for n, b in self.layers.items()},
        }

    def save(self, path: str | Path) -> Path:
        """Write the plan, one layer per line (readable and diffable). The file is written to a temporary
        sibling and renamed into place: a reader (or a killed writer) never sees half a plan."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        d = self.to_dict()
        layers = d.pop("layers")
        body = json.dumps(d, indent=1)[:-2]
        rows = ",\n".join(f"  {json.dumps(n)}: {json.dumps(b)}" for n, b in layers.items())
        tmp = path.with_name(f".{path.name[:200]}.{uuid.uuid4().hex[:12]}.tmp")  # created as plain files are (umask)
        try:
            tmp.write_text(body + ',\n "layers": {\n' + rows + "\n }\n}\n")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        try:
            text = path.read_text()
            d = json.loads(text)
        except UnicodeDecodeError as e:
            raise PlanError(f"{path}: not a plan: byte {e.start} is not UTF-8 text") from None
        except json.JSONDecodeError as e:
            raise PlanError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
        except RecursionError:
            raise PlanError(f"{path}: not a plan: JSON nested too deeply") from None
        return cls.from_dict(d, text=text, source=str(path))

    @classmethod
    def from_dict(cls, d: Any, *, text: str = "", source: str = "<plan>") -> Plan:
        r = _PlanReader(text, source)
        if not isinstance(d, dict):
            raise r.fail("<top>", "a plan is a JSON object")
        r.header(d)  # one fixed order of checks: the error reported does not depend on dict order
        raw = r.layer_table(d)
        units = r.pruned_units(d)
        layers = r.layers(raw, units)
        fmt, kept, overrides = r.format(d), r.kept_timesteps(d), r.step_overrides(d)
        predicted, solver = r.predicted_and_solver(d)
        return cls(
            layers=layers,
            model=d.get("model", ""),
            fingerprint=d.get("fingerprint", ""),
            format=fmt,
            budget=d.get("budget"),
            step_overrides=overrides,
            kept_timesteps=kept,
            pruned_units=list(units),
            pruned_fixed_params=_count(d.get("pruned_fixed_params", 0), r.fail),
            predicted=predicted,
            solver=solver,
        )

    # ---------------------------------------------------------------- against a model
    def validate(self, inv: Inventory, *, check_fingerprint: bool = True) -> Plan:
        """Raise `PlanError` naming the layer when the plan does not fit `inv`; return self."""
        if check_fingerprint and self.fingerprint and self.fingerprint != inv.fingerprint:
            raise PlanError(
                f"plan was made for model {self.model!r} (fingerprint {self.fingerprint}), not for "
                f"{inv.model!r} (fingerprint {inv.fingerprint})"
            )
        unknown = [n for n in self.layers if n not in inv]
        if unknown:
            raise PlanError(f"layer {unknown[0]!r} is not a quantizable layer of {inv.model!r}"
                            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
        missing = [n for n in inv.names if n not in self.layers]
        if missing:
            raise PlanError(f"layer {missing[0]!r} of {inv.model!r} has no bits in the plan"
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        fmt = get_format(self.format)
        for unit in self.pruned_units:
            if not any(under(n, [unit]) for n in inv.names):
                raise PlanError(f"pruned unit {unit!r} holds no quantizable layer of {inv.model!r}")
        for name, b in self.layers.items():
            if b.pruned != under(name, self.pruned_units):
                raise PlanError(f"layer {name!r}: pruned must be exactly the layers of pruned_units")
            if b.pruned:
                continue
            try:
                fmt.stored_bits(b.w_bits)
            except ValueError as e:
                raise PlanError(f"layer {name!r}: {e}") from None
        for i, o in enumerate(self.step_overrides):
            for name in o["layers"]:
                if name not in inv:
                    raise PlanError(f"step_overrides[{i}]: layer {name!r} is not a quantizable layer of {inv.model!r}")
        return self


def _or(d: dict, key: str, empty: Any) -> Any:
    """d[key], or `empty` when it is missing or null (other falsy values, such as 0 or "", stay wrong)."""
    value = d.get(key)
    return empty if value is None else value


def _is_timestep(value: Any) -> bool:
    """A timestep: a number ≥ 0 (flow-matching schedules have fractional ones), not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite JSON number (not a boolean, not NaN or Infinity)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _count(value: Any, fail) -> int:
    if not _is_int(value) or value < 0:
        raise fail("pruned_fixed_params", f"{value!r} is not a count of parameters ≥ 0")
    return value


def _line_of(text: str, key: str) -> int:
    """1-based line of the first occurrence of `"key"` in the file text (1 when unknown)."""
    m = re.search(re.escape(json.dumps(key)) if key and not key.startswith("<") else r"\A", text)
    return text.count("\n", 0, m.start()) + 1 if m else 1


class _PlanReader:
    """Checks of `Plan.from_dict`, one per field; each failure is a `PlanError` naming file:line: field."""

    def __init__(self, text: str, source: str) -> None:
        self.text, self.source = text, source

    def fail(self, fieldname: str, msg: str, key: str | None = None) -> PlanError:
        return PlanError(f"{self.source}:{_line_of(self.text, key or fieldname)}: {fieldname}: {msg}")

    def header(self, d: dict) -> None:
        if d.get("schema") != SCHEMA:
            raise self.fail("schema", f"expected {SCHEMA!r}, got {d.get('schema')!r}")
        for key in ("model", "fingerprint"):
            if not isinstance(d.get(key, ""), str):
                raise self.fail(key, f"must be a string, got {d[key]!r}")
        budget = d.get("budget")
        if budget is not None:
            from mpsearch.planning.budget import Budget  # budget imports the cost model, as this module does

            if not isinstance(budget, str):
                raise self.fail("budget", f"must be null or a budget such as \"4bits\", got {budget!r}")
            try:
                Budget.parse(budget)
            except ValueError as e:
                raise self.fail("budget", str(e)) from None

    def layer_table(self, d: dict) -> dict:
        raw = d.get("layers")
        if not isinstance(raw, dict) or not raw:
            raise self.fail("layers", "must be a non-empty object {layer name: {w_bits, a_bits}}")
        return raw

    def pruned_units(self, d: dict) -> list:
        pruned_units = _or(d, "pruned_units", [])
        if not (isinstance(pruned_units, list) and all(isinstance(u, str) and u for u in pruned_units)):
            raise self.fail("pruned_units", "must be a list of module names")
        return pruned_units

    def layers(self, raw: dict, pruned_units: list[str]) -> dict[str, LayerBits]:
        layers = {}
        for name, bits in raw.items():
            if bits == {"pruned": True}:
                if not under(name, pruned_units):
                    raise self.fail(f"layers[{name!r}]", "is pruned but lies in no unit of pruned_units", name)
                layers[name] = LayerBits(PRUNED, PRUNED)
                continue
            if under(name, pruned_units):
                raise self.fail(f"layers[{name!r}]", "lies in a pruned unit: write {\"pruned\": true}", name)
            if not isinstance(bits, dict) or set(bits) - {"w_bits", "a_bits"}:
                raise self.fail(f"layers[{name!r}]", "must be {\"w_bits\": int, \"a_bits\": int}", name)
            lb = LayerBits(bits.get("w_bits", FLOAT_BITS), bits.get("a_bits", FLOAT_BITS))
            for attr, allowed in (("w_bits", WEIGHT_BITS), ("a_bits", ACT_BITS)):
                value = getattr(lb, attr)
                if not isinstance(value, int) or isinstance(value, bool) or value not in allowed:
                    raise self.fail(f"layers[{name!r}].{attr}", f"{value!r} is not one of {list(allowed)}", name)
            layers[name] = lb
        return layers

    def format(self, d: dict) -> str:
        fmt = d.get("format", "packed")
        try:
            if not isinstance(fmt, str):
                raise ValueError(f"must be a format name, got {fmt!r}")
            get_format(fmt)
        except ValueError as e:
            raise self.fail("format", str(e)) from None
        return fmt

    def kept_timesteps(self, d: dict) -> list[int | float] | None:
        kept = d.get("kept_timesteps")
        if kept is not None and not (isinstance(kept, list) and kept and all(_is_timestep(t) for t in kept)
                                     and all(b < a for a, b in zip(kept, kept[1:], strict=False))):
            raise self.fail("kept_timesteps", "must be null or a non-empty, strictly decreasing list of timesteps "
                            "(the sampling order; flow-matching ones may be fractional)")
        return kept

    def step_overrides(self, d: dict) -> list:
        overrides = _or(d, "step_overrides", [])
        if not isinstance(overrides, list):
            raise self.fail("step_overrides", "must be a list of {\"steps\": [int], \"layers\": {...}}")
        for i, o in enumerate(overrides):
            if not isinstance(o, dict) or set(o) != {"steps", "layers"} or not isinstance(o["layers"], dict) \
                    or not (isinstance(o["steps"], list) and o["steps"] and all(_is_int(t) and t >= 0 for t in o["steps"])):
                raise self.fail(f"step_overrides[{i}]", "must be {\"steps\": [step index ≥ 0, …], \"layers\": "
                                "{name: {\"a_bits\"|\"w_bits\": int}}}", "step_overrides")
            for name, bits in o["layers"].items():
                where = f"step_overrides[{i}].layers[{name!r}]"
                if not isinstance(bits, dict) or not bits or set(bits) - {"w_bits", "a_bits"}:
                    raise self.fail(where, "must be {\"a_bits\"|\"w_bits\": int}", "step_overrides")
                for attr, allowed in (("w_bits", WEIGHT_BITS), ("a_bits", ACT_BITS)):
                    if attr in bits and not (_is_int(bits[attr]) and bits[attr] in allowed):
                        raise self.fail(f"{where}.{attr}", f"{bits[attr]!r} is not one of {list(allowed)}",
                                        "step_overrides")
        return overrides

    def predicted_and_solver(self, d: dict) -> tuple[dict, dict]:
        predicted, solver = _or(d, "predicted", {}), _or(d, "solver", {})
        if not isinstance(solver, dict):
            raise self.fail("solver", f"must be an object, got {solver!r}")
        if not isinstance(predicted, dict):
            raise self.fail("predicted", f"must be an object {{bytes, loss, …}}, got {predicted!r}")
        for key, value in predicted.items():  # sizes and counts ≥ 0; losses (a solver's objective) any number
            values = value.values() if key == "losses" and isinstance(value, dict) else [value]
            floor = -math.inf if key in ("loss", "losses") else 0
            if not all(_is_number(v) and v >= floor for v in values):
                raise self.fail(f"predicted.{key}", f"must be a {'number' if floor else 'number ≥ 0'}"
                                f"{' per group' if key == 'losses' else ''}, got {value!r}", "predicted")
        return dict(predicted), dict(solver)
