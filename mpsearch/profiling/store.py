"""A profile on disk: `meta.json` + `measurements.jsonl`, append-only, resumable, shardable, mergeable.

Each line of `measurements.jsonl` is one measurement, written and flushed (fsync) as soon as it is made:

    {"layer": "conv_in", "tensor": "weight", "bits": 4, "metric": "sqnr", "step_group": 0,
     "value": 31.2, "degradation": 0.000758}

`value` is the metric's raw number (SQNR in dB, SSIM, fraction right; null when infinite) and
`degradation` is ≥ 0, lower is better (see `mpsearch.profiling.metrics`). A line cut short by a crash is detected
on the next open, dropped and measured again.

Schema `mpsearch.profile/2` (profiles measured with `image_widths="triage"`, see
`mpsearch.profiling.triage`) adds estimated rows, never made by a measurement and marked as such:

    {"layer": "...attn2.to_q", "tensor": "weight", "bits": 8, "metric": "ssim", "step_group": 0,
     "value": null, "degradation": 3.1e-08, "estimated": true, "from_bits": 6}

A `/1` profile (every row measured) holds none, and reads as before; a tool that knows only `/1` refuses a
`/2` profile rather than take its estimates for measurements.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
import os
from pathlib import Path
from typing import Any

import pandas as pd

from mpsearch.profiling.lock import FolderLock, check_unlocked

SCHEMA = "mpsearch.profile/1"  # every row measured
SCHEMA_ESTIMATES = "mpsearch.profile/2"  # may hold estimated rows (`"estimated": true`, `"from_bits"`)
SCHEMAS = (SCHEMA, SCHEMA_ESTIMATES)
COLUMNS = ["layer", "tensor", "bits", "metric", "step_group", "value", "degradation"]
MARKS = ["estimated", "from_bits"]  # Profile.df columns of estimated rows (False / <NA> for measurements)
KEY = ("layer", "tensor", "bits", "metric", "step_group")
# Settings a resumed or merged profile must share exactly; candidates, tensors and metrics may grow.
FIXED = ("fingerprint", "sampling", "quant", "mode", "step_groups", "all_metrics")


class ProfileError(ValueError):
    """A profile folder cannot be used as asked (other model, other settings, malformed file)."""


def _dumps(row: dict) -> str:
    row = dict(row)
    if row.get("value") is not None and not math.isfinite(row["value"]):
        row["value"] = None
    return json.dumps(row, separators=(",", ":"))


def _read_json(path: Path) -> Any:
    """A JSON file, or a `ProfileError` naming file:line of the first syntax error."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ProfileError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(f"{path}: cannot be read ({e})") from None


def read_meta(path: Path) -> dict:
    """`meta.json` of a profile folder, checked for the keys a profile's rows are checked against."""
    file = path / "meta.json"
    if not file.is_file():
        raise ProfileError(f"{path}: no meta.json (not a profile folder)")
    meta = _read_json(file)
    if not isinstance(meta, dict):
        raise ProfileError(f"{file}: not a JSON object")
    if meta.get("schema") not in SCHEMAS:
        raise ProfileError(f"{file}: schema {meta.get('schema')!r}, expected one of {', '.join(SCHEMAS)}")
    shapes = {"layers": list, "candidates": dict, "metrics": dict, "step_groups": list}
    for key, kind in shapes.items():
        if not isinstance(meta.get(key), kind):
            got = "missing" if key not in meta else f"a {type(meta[key]).__name__}"
            raise ProfileError(f"{file}: {key!r} is {got}, expected a JSON {'array' if kind is list else 'object'}")
    if not all(isinstance(n, str) for n in meta["layers"]):
        raise ProfileError(f"{file}: 'layers' must be a list of layer names")
    if not isinstance(meta.get("units") or {}, dict):
        raise ProfileError(f"{file}: 'units' is a {type(meta['units']).__name__}, expected a JSON object")
    return meta


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_row(row: Any, meta: dict | None, layers: set[str]) -> str | None:
    """What is wrong with one parsed measurement line (None when nothing): shape, types, a degradation
    that is finite and ≥ 0, and (given the profile's meta) a layer, bits, metric and step group it declares."""
    if not isinstance(row, dict):
        return f"not a JSON object: {json.dumps(row)[:80]}"
    for k in (*KEY, "degradation"):
        if k not in row:
            return f"missing {k!r}"
    layer, tensor, bits, metric, group, deg = (row[k] for k in (*KEY, "degradation"))
    if not isinstance(layer, str) or not isinstance(metric, str):
        return "'layer' and 'metric' must be strings"
    if tensor not in ("weight", "act", "unit"):
        return f"tensor {tensor!r}: expected 'weight', 'act' or 'unit'"
    if not _is_int(bits) or not _is_int(group) or group < 0:
        return f"'bits' and 'step_group' must be integers ≥ 0, got {bits!r} and {group!r}"
    if not isinstance(deg, (int, float)) or isinstance(deg, bool) or not math.isfinite(deg) or deg < 0:
        return f"degradation {deg!r}: must be a finite number ≥ 0"
    value = row.get("value")
    if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
        return f"value {value!r}: must be a number or null"
    problem = _check_marks(row, meta)
    if problem or meta is None:
        return problem
    if tensor == "unit":
        if layer not in (meta.get("units") or {}):
            return f"unit {layer!r} is not in meta.json's units"
    elif layer not in layers:
        return f"layer {layer!r} is not in meta.json's layers (rows and meta.json from different models?)"
    elif bits not in meta["candidates"].get(tensor, ()):
        return f"{tensor} bits {bits} are not among meta.json's candidates {meta['candidates'].get(tensor)}"
    if metric not in meta["metrics"]:
        return f"metric {metric!r} is not among meta.json's metrics {sorted(meta['metrics'])}"
    if group >= len(meta["step_groups"]):
        return f"step_group {group} but meta.json declares {len(meta['step_groups'])} step group(s)"
    return None


def _check_marks(row: dict, meta: dict | None) -> str | None:
    """What is wrong with an estimated row's marks (None when nothing or when the row is measured)."""
    if "estimated" not in row and "from_bits" not in row:
        return None
    if row.get("estimated") is not True or not _is_int(row.get("from_bits")):
        return 'an estimated row needs "estimated": true and an integer "from_bits"'
    if meta is not None and meta.get("schema") != SCHEMA_ESTIMATES:
        return f"an estimated row in a {meta.get('schema')} profile (only {SCHEMA_ESTIMATES} profiles hold them)"
    return None


def _complete_lines(data: bytes) -> tuple[list[tuple[int, bytes]], int]:
    """(line number, text) of the non-blank lines a crash has not torn, and the byte offset they end at.
    Torn: the text after the last newline, or a final line that is not JSON (a killed write)."""
    lines = data.split(b"\n")
    body = lines[:-1]
    numbered = [(i + 1, line) for i, line in enumerate(body) if line.strip()]
    end = len(data) - len(lines[-1])
    if not lines[-1] and numbered and numbered[-1][0] == len(body):
        try:
            json.loads(numbered[-1][1])
        except ValueError:
            numbered.pop()
            end -= len(body[-1]) + 1
    return numbered, end


def read_measurements(path: Path, *, repair: bool = False, meta: dict | None = None) -> list[dict]:
    """Rows of a measurements file, each checked (see `_check_row`; against `meta` when given).

    A torn last line (no newline, or not JSON) is what a killed profile run leaves: it is ignored (its
    measurement counts as never made, and a resumed run makes it again), and cut off the file when
    `repair`. Any other malformed line is an error naming file:line. Two lines for the same measurement
    must agree (identical copies, e.g. from an older tool writing twice, are read once)."""
    if not path.exists():
        return []
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ProfileError(f"{path}: cannot be read ({e.strerror})") from None
    numbered, end = _complete_lines(data)
    if repair and end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
    try:  # one parse of the whole file (C speed); line by line only to name a bad line
        parsed = json.loads(b"[" + b",".join(line for _, line in numbered) + b"]")
    except ValueError:
        parsed = []
    if len(parsed) != len(numbered):
        parsed = []
        for n, line in numbered:
            try:
                parsed.append(json.loads(line))
            except ValueError:
                raise ProfileError(f"{path}:{n}: not a JSON measurement: {line[:80]!r}") from None
    layers = set(meta["layers"]) if meta is not None else set()
    key_of = operator.itemgetter(*KEY)
    rows: dict[tuple, dict] = {}
    line_of: dict[tuple, int] = {}
    for (n, _), row in zip(numbered, parsed, strict=True):
        problem = _check_row(row, meta, layers)
        if problem:
            raise ProfileError(f"{path}:{n}: {problem}")
        k = key_of(row)
        if k not in rows:
            rows[k], line_of[k] = row, n
        elif (rows[k]["degradation"], rows[k].get("value")) != (row["degradation"], row.get("value")):
            raise ProfileError(f"{path}:{n}: measurement {k} disagrees with line {line_of[k]} "
                               f"(degradation {row['degradation']!r} vs {rows[k]['degradation']!r})")
    return list(rows.values())


def read_inventory(path: Path) -> Any:
    """`mpsearch.model.Inventory` from a profile's inventory.json; a damaged file is a `ProfileError`."""
    from mpsearch.model import Inventory, ModelError

    d = _read_json(path)
    try:
        return Inventory.from_dict(d)
    except (ModelError, KeyError, TypeError, AttributeError) as e:
        raise ProfileError(f"{path}: not a valid inventory ({type(e).__name__}: {e})") from None


def check_inventory(meta: dict, inv: Any, where: str) -> None:
    """Refuse an inventory (`mpsearch.model.Inventory`) that is not the one meta.json was measured on:
    model, inventory fingerprint (class, config, parameter shapes), layer names in order, and layer sizes
    that agree with their shapes."""
    if meta.get("model") is not None and meta["model"] != inv.model:
        raise ProfileError(f"{where}: inventory of model {inv.model!r} but meta.json was measured on "
                           f"{meta['model']!r}: the folder mixes two models")
    if meta.get("inventory_fingerprint") not in (None, inv.fingerprint):
        raise ProfileError(f"{where}: inventory fingerprint {inv.fingerprint} != meta.json's "
                           f"{meta['inventory_fingerprint']}: the folder mixes two models (or model versions)")
    if meta["layers"] != inv.names:
        diff = next((a, b) for a, b in itertools.zip_longest(meta["layers"], inv.names) if a != b)
        raise ProfileError(f"{where}: layers differ from meta.json's ({len(inv.names)} vs {len(meta['layers'])}; "
                           f"first difference {diff[1]!r} vs {diff[0]!r}): the folder mixes two models")
    if not _is_int(inv.fixed_params) or inv.fixed_params < 0:
        raise ProfileError(f"{where}: fixed_params {inv.fixed_params!r} is not a count of parameters ≥ 0")
    for layer in inv.layers:
        if layer.params != math.prod(layer.weight_shape) or min(layer.params, layer.bias, layer.macs) < 0:
            raise ProfileError(f"{where}: layer {layer.name!r} has {layer.params} params but weight shape "
                               f"{layer.weight_shape}: the inventory is damaged")


def check_compatible(old: dict, new: dict, where: str) -> None:
    """Refuse to mix measurements of another model or other settings, naming what differs."""
    if old.get("schema") not in SCHEMAS:
        raise ProfileError(f"{where}: schema {old.get('schema')!r}, expected one of {', '.join(SCHEMAS)}")
    image = old.get("image_widths", "all"), new.get("image_widths", "all")
    if image[0] != image[1] or old.get("schema") != new.get("schema"):
        raise ProfileError(f"{where} was measured with image_widths {json.dumps(image[0])[:120]}, now "
                           f"{json.dumps(image[1])[:120]}: resume it with --image-widths "
                           f"{image[0] if isinstance(image[0], str) else image[0]['rule']}, or choose another --out")
    if old.get("fingerprint") != new.get("fingerprint"):
        raise ProfileError(
            f"{where} was measured on another model or other weights (fingerprint {old.get('fingerprint')} "
            f"!= {new.get('fingerprint')}); choose another --out or delete that folder"
        )
    for key in FIXED[1:]:
        if old.get(key) != new.get(key):
            raise ProfileError(
                f"{where} was measured with other {key!r} settings: {json.dumps(old.get(key))[:200]} != "
                f"{json.dumps(new.get(key))[:200]}; choose another --out to measure with the new ones"
            )
    old_groups, new_groups = old.get("groups") or {}, new.get("groups") or {}
    differ = [n for n in new_groups if n in old_groups and old_groups[n] != new_groups[n]]
    if differ:
        raise ProfileError(f"{where} was measured with other content/quality groups ({len(differ)} layer(s) "
                           f"differ, first {differ[0]!r}: {old_groups[differ[0]]} != {new_groups[differ[0]]}); "
                           f"choose another --out to measure with the new ones")  # fmt: skip
    for name, m in new.get("metrics", {}).items():
        o = old.get("metrics", {}).get(name)
        if o is not None and o != m:
            raise ProfileError(f"{where}: metric {name!r} was measured as {o}, now {m} (changed version?)")


def union_meta(old: dict, new: dict) -> dict:
    """`new`, with candidates, tensors, metrics and prunable units widened to include `old`'s."""
    out = dict(new)
    out["candidates"] = {
        k: sorted(set(old["candidates"].get(k, [])) | set(new["candidates"].get(k, []))) for k in ("weight", "act")
    }
    out["tensors"] = [t for t in ("weight", "act") if t in old.get("tensors", []) or t in new.get("tensors", [])]
    out["metrics"] = {**old.get("metrics", {}), **new.get("metrics", {})}
    out["baseline"] = {**old.get("baseline", {}), **new.get("baseline", {})}
    out["created"] = old.get("created", new.get("created"))
    units = {**(old.get("units") or {}), **(new.get("units") or {})}
    if units:  # a resume without --prune keeps the unit table of the scores already stored
        out["units"] = units
    return out


class Store:
    """Open (create or resume) a profile folder for appending measurements."""

    def __init__(self, root: str | Path, meta: dict):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.meta_path, self.path = self.root / "meta.json", self.root / "measurements.jsonl"
        if self.meta_path.exists():
            old = read_meta(self.root)
            check_compatible(old, meta, str(self.root))
            meta = union_meta(old, meta)
        self.meta = meta
        _write_json(self.meta_path, meta)
        rows = read_measurements(self.path, repair=True, meta=meta)
        self.done = {tuple(r[k] for k in KEY) for r in rows}
        self._f = open(self.path, "a")

    def append(self, rows: list[dict]) -> None:
        """Write rows (skipping any already stored) and force them to disk before returning."""
        new = [r for r in rows if tuple(r[k] for k in KEY) not in self.done]
        if not new:
            return
        self._f.write("".join(_dumps(r) + "\n" for r in new))
        self._f.flush()
        os.fsync(self._f.fileno())
        self.done.update(tuple(r[k] for k in KEY) for r in new)

    def close(self) -> None:
        self._f.close()

    def profile(self) -> Profile:
        """Everything stored so far."""
        return Profile.load(self.root)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def _sort(df: pd.DataFrame, layers: list[str]) -> pd.DataFrame:
    order = {n: i for i, n in enumerate(layers)}
    key = df["layer"].map(lambda n: order.get(n, len(order)))
    df = df.assign(_o=key, _t=df["tensor"].map({"weight": 0, "act": 1}))
    df = df.sort_values(["_o", "_t", "bits", "step_group", "metric"], kind="stable").drop(columns=["_o", "_t"])
    return df.reset_index(drop=True)


class Profile:
    """A measured profile: `.df` (long table, columns `layer, tensor, bits, metric, step_group, value,
    degradation, estimated, from_bits`), `.meta` (fingerprint, candidates, metrics and kinds, step groups, sampling settings).

    `tensor` is 'weight' | 'act' (the layer's input activation); `step_group` indexes
    `meta["step_groups"]` (lists of sampling-step indices); `value` is the raw metric (SQNR dB, MSE,
    SSIM, fraction right); `degradation` ≥ 0, lower is better, 0 for full precision (SQNR → noise power
    10^(-SQNR/10), MSE → MSE, SSIM → 1 - SSIM, adherence → fraction lost vs FP, fisher → estimated noise
    power). `estimated` is True on a row no measurement made (`mpsearch.profiling.triage`; its `value` is
    NaN, `from_bits` the measured width it was scaled from). 16-bit rows are not stored (degradation 0). With several step groups, the degradation of a
    layer quantized at every step is approximated by the sum over groups (additivity).

    >>> p = Profile.load("profiles/demo")
    >>> p.table("sqnr", "weight")            # layers × bits, degradation summed over step groups
    """

    def __init__(self, meta: dict, df: pd.DataFrame, path: Path | None = None):
        self.meta, self.path = meta, path
        self.df = _sort(df.reindex(columns=COLUMNS + MARKS), meta.get("layers", []))
        self.df["estimated"] = self.df["estimated"].astype("boolean").fillna(False).astype(bool)
        self.df["from_bits"] = self.df["from_bits"].astype("Int64")
        self.df["bits"] = self.df["bits"].astype(int)
        self.df["step_group"] = self.df["step_group"].astype(int)
        self.df["value"] = self.df["value"].astype(float)
        self.df["degradation"] = self.df["degradation"].astype(float)

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        """Read and check a profile folder; every malformed file is a `ProfileError` naming file:line."""
        path = Path(path)
        meta = read_meta(path)
        rows = read_measurements(path / "measurements.jsonl", meta=meta)
        return cls(meta, pd.DataFrame(rows, columns=COLUMNS + MARKS), path)

    @property
    def metrics(self) -> dict[str, dict]:
        return self.meta.get("metrics", {})

    @property
    def step_groups(self) -> list[list[int]]:
        return self.meta.get("step_groups", [[]])

    def table(self, metric: str, tensor: str = "weight", step_group: int | None = None) -> pd.DataFrame:
        """Degradation as layers × bits for one metric and tensor; one step group, or summed over them
        (the degradation of quantizing the layer at every step, under additivity)."""
        df = self.df[(self.df.metric == metric) & (self.df.tensor == tensor)]
        if step_group is not None:
            df = df[df.step_group == step_group]
        t = df.pivot_table(index="layer", columns="bits", values="degradation", aggfunc="sum", sort=False)
        return t

    def to_csv(self, path: str | Path) -> Path:
        path = Path(path)
        self.df.to_csv(path, index=False)
        return path

    def __len__(self) -> int:
        return len(self.df)

    def __repr__(self) -> str:
        return f"Profile({self.meta.get('model')!r}, {len(self.df)} measurements, metrics {list(self.metrics)})"


def _record(r: dict) -> dict:
    """A `Profile.df` record as a measurements.jsonl row (marks only on estimated rows)."""
    row = {k: (int(r[k]) if k in ("bits", "step_group") else r[k]) for k in COLUMNS}
    if r.get("estimated"):
        row.update(estimated=True, from_bits=int(r["from_bits"]))
    return row


def merge(out: str | Path, shards: list[str | Path]) -> Profile:
    """Join shard folders (same model and settings) into one profile at `out`. Duplicate measurements
    must agree exactly; missing units are reported by `Profile` consumers, not invented."""
    if not shards:
        raise ProfileError("merge: no shard folders given")
    metas, rows = [], {}
    for s in shards:
        p = Path(s)
        check_unlocked(p, "shard")  # a shard still being measured would merge incomplete
        m = read_meta(p)
        if metas:
            check_compatible(metas[0], m, str(p))
        metas.append(m)
        if (p / "inventory.json").is_file():
            check_inventory(m, read_inventory(p / "inventory.json"), str(p / "inventory.json"))
        for r in read_measurements(p / "measurements.jsonl", meta=m):
            k = tuple(r[c] for c in KEY)
            if k in rows and (rows[k]["degradation"] != r["degradation"]):
                raise ProfileError(f"{p}: measurement {k} disagrees with another shard")
            rows[k] = r
    meta = metas[0]
    for m in metas[1:]:
        meta = union_meta(meta, m)
    meta = {**meta, "shard": None, "merged_from": [str(s) for s in shards]}
    out = Path(out)
    with FolderLock(out, "merge"):  # one writer per profile folder (creates it)
        if (out / "measurements.jsonl").exists():
            raise ProfileError(f"{out} already holds measurements; merge into a new folder")
        prof = Profile(meta, pd.DataFrame(list(rows.values()), columns=COLUMNS + MARKS))
        _write_json(out / "meta.json", meta)
        with open(out / "measurements.jsonl", "w") as f:
            for r in prof.df.to_dict("records"):
                f.write(_dumps(_record(r)) + "\n")
        inventories = [Path(s) / "inventory.json" for s in shards if (Path(s) / "inventory.json").is_file()]
        if inventories:  # so the merged profile solves without the model, as its shards do
            (out / "inventory.json").write_bytes(inventories[0].read_bytes())
    prof.path = out
    return prof
