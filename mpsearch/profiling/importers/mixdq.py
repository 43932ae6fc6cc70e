"""MixDQ's published sensitivity logs (A-suozhang/MixDQ, `mixed_precision_scripts/`) as an mpsearch profile.

    mpsearch import-profile mixdq MixDQ/ --out profiles/sdxl-turbo-mixdq      # --model sdxl-turbo inferred

Their layout (the repository root, its `mixed_precision_scripts/` folder, or a copy of that folder):

    sensitivity_log/<model>/{weight,act}/{sqnr,ssim}/<run>/sensitivity.yaml
        {"model.<layer>": [metric at 2 bits, at 4 bits, at 8 bits]}
    optimize/tensor_ratio/<model>/{weight,act}_ratio_config.yaml              (optional)
        {"model.<layer>": size ratio}

One measurement row per (layer, tensor, bits, metric), step group 0 (SDXL-turbo samples one step): SQNR
values in dB → degradation 10^(−dB/10), SSIM → 1 − SSIM, the raw number kept as `value`. Layer names
lose MixDQ's `model.` prefix and must be quantizable layers of the inventory of `model` (a bundled config
such as `sdxl-turbo` lists them on the meta device, no weights); each imported tensor must cover every layer.
The ratio configs, when present, are checked against the inventory (weight ratio ∝ parameters, activation
ratio ∝ input elements per call, `Layer.act_numel`): a mismatch means the logs are of another model.
The metrics are marked `version: "imported:mixdq"`; the profile has no weights fingerprint (the weights
MixDQ measured are not here). Any malformed file is one `ProfileError` naming the file and key.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from pathlib import Path
from typing import Any

import yaml

import mpsearch
from mpsearch.model import Inventory, bundled_configs, inventory
from mpsearch.profiling.importers.base import register_importer, write_profile
from mpsearch.profiling.store import SCHEMA, Profile, ProfileError

__all__ = ["BITS", "import_mixdq"]

BITS = (2, 4, 8)  # the widths each list of a sensitivity.yaml gives, in order
METRICS = {"sqnr": ("quality", "output"), "ssim": ("content", "image")}
PREFIX = "model."
VERSION = "imported:mixdq"
# MixDQ's SDXL-turbo sampling (quant_inference_mp.py: one step, guidance 0)
SAMPLING = {"sdxl_turbo": {"steps": 1, "guidance": 0.0}}


def _root(src: Path) -> Path:
    for root in (src / "mixed_precision_scripts", src):
        if (root / "sensitivity_log").is_dir():
            return root
    raise ProfileError(f"{src}: no sensitivity_log/ folder (expected MixDQ's mixed_precision_scripts/ layout)")


def _log_model(root: Path, name: str | None) -> str:
    found = sorted(p.name for p in (root / "sensitivity_log").iterdir() if p.is_dir())
    if name is not None:
        if name not in found:
            raise ProfileError(f"{root / 'sensitivity_log'}: no logs of {name!r} (found: {', '.join(found) or 'none'})")
        return name
    if len(found) != 1:
        raise ProfileError(f"{root / 'sensitivity_log'}: logs of {', '.join(found) or 'no model'}; name one with "
                           "--log-model")
    return found[0]


def _log_files(root: Path, name: str) -> dict[tuple[str, str], Path]:
    """(tensor, metric) → its sensitivity.yaml (one run each)."""
    files = {}
    for tensor in ("weight", "act"):
        for metric in METRICS:
            folder = root / "sensitivity_log" / name / tensor / metric
            runs = sorted(folder.glob("*/sensitivity.yaml")) if folder.is_dir() else []
            if len(runs) > 1:
                raise ProfileError(f"{folder}: several runs ({', '.join(p.parent.name for p in runs)}); keep one")
            if runs:
                files[tensor, metric] = runs[0]
    if not files:
        raise ProfileError(f"{root / 'sensitivity_log' / name}: no {{weight,act}}/{{sqnr,ssim}}/<run>/sensitivity.yaml")
    return files


def _read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping (safe loader: plain data only), or a `ProfileError` naming the file (and line)."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ProfileError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(f"{path}: cannot be read ({e})") from None
    if not isinstance(data, dict) or not data:
        raise ProfileError(f"{path}: expected a mapping of {PREFIX}<layer> to values, got {type(data).__name__}")
    return data


def _layer(path: Path, key: Any, inv: Inventory) -> str:
    if not isinstance(key, str) or not key.startswith(PREFIX):
        raise ProfileError(f"{path}: key {key!r} is not a MixDQ layer name ({PREFIX}<layer>)")
    name = key[len(PREFIX):]
    if name not in inv:
        raise ProfileError(f"{path}: key {key!r}: {name!r} is not a quantizable layer of {inv.model!r} "
                           "(the logs are of another model; pass the right --model)")
    return name


def _number(path: Path, key: str, value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ProfileError(f"{path}: key {key!r}: {what} {value!r} is not a number")
    return float(value)


def _rows(path: Path, tensor: str, metric: str, inv: Inventory) -> list[dict[str, Any]]:
    """The measurement rows of one sensitivity.yaml."""
    rows = []
    for key, values in _read_yaml(path).items():
        layer = _layer(path, key, inv)
        if not isinstance(values, list) or len(values) != len(BITS):
            raise ProfileError(f"{path}: key {key!r}: expected a list of {len(BITS)} values (at {BITS} bits), "
                               f"got {values!r}")
        for bits, raw in zip(BITS, values, strict=True):
            v = _number(path, key, raw, f"{metric} at {bits} bits")
            try:
                deg = 10.0 ** (-v / 10.0) if metric == "sqnr" else 1.0 - v
            except OverflowError:
                deg = math.inf
            if not (math.isfinite(deg) and deg >= 0):
                raise ProfileError(f"{path}: key {key!r}: {metric} {v!r} at {bits} bits gives degradation {deg!r}: "
                                   "it must be finite and ≥ 0")
            rows.append({"layer": layer, "tensor": tensor, "bits": bits, "metric": metric, "step_group": 0,
                         "value": v if math.isfinite(v) else None, "degradation": deg})
    return rows


def _check_ratios(root: Path, name: str, inv: Inventory) -> list[Path]:
    """Check the size-ratio configs against the inventory; returns the files checked."""
    checked = []
    folder = root / "optimize" / "tensor_ratio" / name
    for tensor, size in (("weight", lambda la: la.params), ("act", lambda la: la.act_numel)):
        path = folder / f"{tensor}_ratio_config.yaml"
        if not path.is_file() or (tensor == "act" and any(la.act_numel is None for la in inv)):
            continue
        data = {_layer(path, k, inv): _number(path, k, v, "ratio") for k, v in _read_yaml(path).items()}
        missing = [n for n in inv.names if n not in data]
        if missing:
            raise ProfileError(f"{path}: no ratio for layer {PREFIX}{missing[0]} ({len(missing)} missing)")
        ref = max(inv.names, key=lambda n: size(inv[n]))  # the biggest layer sets the unit
        unit = size(inv[ref]) / data[ref]
        for n in inv.names:
            if not math.isclose(data[n] * unit, size(inv[n]), rel_tol=1e-6):
                what = "parameters" if tensor == "weight" else "input elements per call"
                raise ProfileError(f"{path}: key '{PREFIX}{n}': ratio {data[n]:g} is {data[n] * unit:,.0f} {what} at "
                                   f"{unit:g} per unit, but {inv.model!r} has {size(inv[n]):,}: the logs are of "
                                   "another model (or resolution)")
        checked.append(path)
    return checked


def _covered(files: dict[tuple[str, str], Path], rows: list[dict[str, Any]], inv: Inventory) -> None:
    for tensor in sorted({t for t, _ in files}):
        have = {r["layer"] for r in rows if r["tensor"] == tensor}
        missing = [n for n in inv.names if n not in have]
        if missing:
            paths = ", ".join(str(p) for (t, _), p in files.items() if t == tensor)
            raise ProfileError(f"{paths}: no {tensor} measurement of layer {PREFIX}{missing[0]} "
                               f"({len(missing)} of {len(inv)} layers missing)")


def _meta(inv: Inventory, files: dict[tuple[str, str], Path], name: str, src: Path,
          checked: list[Path]) -> dict[str, Any]:  # fmt: skip
    tensors = [t for t in ("weight", "act") if any(t == ft for ft, _ in files)]
    metrics = sorted({m for _, m in files})
    sha = {str(p.relative_to(src)): hashlib.sha256(p.read_bytes()).hexdigest() for p in [*files.values(), *checked]}
    return {
        "schema": SCHEMA, "tool_version": mpsearch.__version__, "model": inv.model, "component": inv.component,
        "fingerprint": None, "inventory_fingerprint": inv.fingerprint, "layers": inv.names,
        "groups": {la.name: la.group for la in inv},
        "candidates": {t: list(BITS) if t in tensors else [] for t in ("weight", "act")}, "tensors": tensors,
        "metrics": {m: {"kind": METRICS[m][0], "stage": METRICS[m][1], "version": VERSION} for m in metrics},
        "mode": "imported", "all_metrics": False, "step_groups": [[0]],
        "sampling": dict(SAMPLING.get(name, {})) | {"resolution": inv.resolution} if name in SAMPLING else {},
        "quant": {}, "shard": None,
        "baseline": {m: {"value": None if m == "sqnr" else 1.0, "degradation": 0.0} for m in metrics},
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"importer": "mixdq", "dir": str(src), "log_model": name, "sha256": sha},
    }  # fmt: skip


@register_importer("mixdq")
def import_mixdq(src: str | Path, out: str | Path, *, model: Any = None, log_model: str | None = None) -> Profile:
    """Import MixDQ's sensitivity logs under `src` as the profile folder `out` (see the module docstring).

    `model`: the model the logs measured (a bundled config name, hub id, folder or pipeline; default: the
    log folder's name as a bundled config, `sdxl_turbo` → `sdxl-turbo`). `log_model`: which model folder of
    `sensitivity_log/` to read when there are several. Writes all or nothing."""
    src = Path(src)
    root = _root(src)
    name = _log_model(root, log_model)
    files = _log_files(root, name)
    if model is None:
        model = name.replace("_", "-")
        if model not in bundled_configs():
            raise ProfileError(f"{root / 'sensitivity_log' / name}: no bundled config {model!r}; pass --model")
    inv = model if isinstance(model, Inventory) else inventory(model)
    rows = [r for (tensor, metric), path in files.items() for r in _rows(path, tensor, metric, inv)]
    _covered(files, rows, inv)
    checked = _check_ratios(root, name, inv)
    order = {n: i for i, n in enumerate(inv.names)}
    rows.sort(key=lambda r: (order[r["layer"]], r["tensor"] != "weight", r["bits"], r["metric"]))
    return write_profile(Path(out), _meta(inv, files, name, root, checked), inv, rows)
