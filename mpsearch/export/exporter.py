"""Apply a `Plan` to a pipeline: fake quantization in place (evaluation) or a packed low-bit checkpoint.

    fq = fake_quantize(pipe, plan)          # weights replaced by their quantized values; fq.restore()
    result = export(plan, "out/", model=pipe)   # out/<denoiser>/mpsearch_quantized.safetensors + maps
    qpipe = load_quantized("out/")          # a working pipeline with optimum-quanto low-bit modules

The simulation and the checkpoint agree bit for bit on the weights: both use
`mpsearch.profiling.quantizers.quantize_weight` with the format's quantizer config (symmetric, one fp16 scale per
output channel), and both keep every unquantized denoiser parameter (biases, norms, embeddings, 16-bit
layers) at fp16, the dtype the cost model charges (`WeightFormat.float_bytes`): the simulation rounds
them to fp16 and back. Cross-attention K/V layers of CLIP-conditioned models are BOS-aware (MixDQ): the
output row of the BOS token, identical for every prompt, is precomputed with full-precision weights,
stored in fp16 and substituted at run time, in the simulation and in the loaded checkpoint alike.

Checkpoint folder: the pipeline's other components as diffusers saves them, `model_index.json`,
`plan.json`, `export.json` (bytes) and, under the denoiser's folder, `config.json`,
`mpsearch_quantized.safetensors` (every denoiser parameter; by default one tensor per dtype with the
offsets in the map, see `export(layout=)`), `quantization_map.json` (per module: qtype, nominal/stored
bits, activation bits, shape, code offset) and `bos.safetensors`. `export` writes it all or nothing
(`mpsearch.export.atomic.staged`: a temporary sibling renamed into place), after checking the plan's budget.

Pruned units (`plan.pruned_units`, LAPTOP-Diff layer pruning) are removed for real: `fake_quantize`
replaces them by identity stand-ins (`mpsearch.profiling.pruning`), `export` writes none of their parameters or
buffers and lists them in `quantization_map.json`, and `load_denoiser` builds the denoiser from its
config, swaps the same units for stand-ins, then loads: the loaded model has fewer parameters.
"""

from __future__ import annotations

import json
import struct
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpsearch.export.atomic import check_target, staged
from mpsearch.export.storage import get_storage, zero_point
from mpsearch.model import Inventory, damaged_weights, find_denoiser, fingerprint, inventory, load_pipeline
from mpsearch.pipelines import denoiser_components
from mpsearch.planning.cost import (
    FLOAT_BITS,
    WeightFormat,
    fp16_bytes,
    get_format,
    layer_bytes,
    model_bytes,
    stored_mean_bits,
)
from mpsearch.planning.plan import Plan, PlanError
from mpsearch.profiling.quantizers import WeightQuantConfig, fake_quant_weight, quantize_weight
from mpsearch.profiling.session import bos_layers
from mpsearch.zoo import BUNDLED

SCHEMA = "mpsearch.quantized/1"
WEIGHTS_FILE = "mpsearch_quantized.safetensors"
QMAP_FILE = "quantization_map.json"
BOS_FILE = "bos.safetensors"
EXPORT_FILE = "export.json"  # written last: byte accounting of a finished export
FLOAT_DTYPE = torch.float16  # unquantized parameters and scales; `WeightFormat.float_bytes == 2`


class ExportError(ValueError):
    """A checkpoint cannot be written or read back (the message names the layer)."""


def weight_config(fmt: str | WeightFormat) -> WeightQuantConfig:
    """The weight quantizer a format stores: symmetric when it has no zero points, its group size."""
    f = get_format(fmt)
    return WeightQuantConfig(symmetric=f.zero_bytes == 0, group_size=f.group_size)


def _check_pruned(plan: Plan, inv: Inventory, den: nn.Module | None) -> None:
    """Every pruned unit is prunable in this model and `pruned_fixed_params` is what removing them saves."""
    if den is None:
        return
    from mpsearch.profiling.pruning import find_units

    units = {u.name: u for u in find_units(den, inv)}
    for name in plan.pruned_units:
        if name not in units:
            raise PlanError(f"pruned unit {name!r} is not a prunable unit of {inv.model!r}")
    fixed = sum(units[n].fixed_params for n in plan.pruned_units)
    if fixed != plan.pruned_fixed_params:
        raise PlanError(f"pruned_fixed_params is {plan.pruned_fixed_params}, but removing {plan.pruned_units} "
                        f"removes {fixed} unquantized parameters")


def _in_pruned(plan: Plan, name: str) -> bool:
    return any(name.startswith(u + ".") for u in plan.pruned_units)


def check_plan(plan: Plan, inv: Inventory, den: nn.Module | None = None) -> Plan:
    """Refuse a plan made for another model, naming the first layer that does not match."""
    other = bool(plan.fingerprint) and plan.fingerprint != inv.fingerprint
    try:
        plan.validate(inv, check_fingerprint=False)  # unknown / missing layers first: they name the layer
    except PlanError as e:
        if not other:
            raise
        raise PlanError(f"plan was made for model {plan.model!r} (fingerprint {plan.fingerprint}), not for "
                        f"{inv.model!r} (fingerprint {inv.fingerprint}): {e}") from None
    if other:
        raise PlanError(
            f"plan was made for model {plan.model!r} (fingerprint {plan.fingerprint}), not for {inv.model!r} "
            f"(fingerprint {inv.fingerprint}): same layer names, different shapes or config"
        )
    if plan.pruned_units:
        _check_pruned(plan, inv, den)
    for i, o in enumerate(plan.step_overrides):
        for name, bits in o["layers"].items():
            if "w_bits" in bits:
                raise PlanError(f"step_overrides[{i}]: layer {name!r} changes w_bits per step; a checkpoint "
                                "holds one weight per layer (only a_bits may vary over steps)")
    return plan


def as_pipeline(model: Any, plan: Plan | None = None):
    """`model` as a pipeline (anything `load_pipeline` takes); None is the bundled model `plan` was made for
    ("demo-dit" for a plan from the DiT's profile), else the demo."""
    if model is None and plan is not None and plan.model in BUNDLED:
        model = plan.model
    return model if hasattr(model, "components") else load_pipeline(model)


def plan_of(plan: Plan | str | Path) -> Plan:
    return plan if isinstance(plan, Plan) else Plan.load(plan)


# --------------------------------------------------------------------------------------------------
# BOS-aware cross-attention K/V (MixDQ §1.3)


class _Captured(Exception):
    pass


def bos_rows(pipe: Any, names: list[str] | None = None) -> dict[str, torch.Tensor]:
    """The full-precision output row of the BOS token for each K/V layer, stored dtype (fp16).

    Runs the text encoder and one denoiser call on the empty prompt and stops as soon as every layer has
    seen its input; the row is `layer(x[0, 0])` with the layer's current (full-precision) weights.
    """
    _, den = find_denoiser(pipe)
    names = bos_layers(den, pipe) if names is None else names
    if not names:
        return {}
    rows: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(module, args, output):
            x = args[0][0, 0].detach().float()
            rows[name] = nn.functional.linear(x, module.weight.float(),
                                              None if module.bias is None else module.bias.float()).to(FLOAT_DTYPE)
            if len(rows) == len(names):
                raise _Captured
        return fn

    handles = [den.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)
        with torch.inference_mode():
            pipe(prompt="", num_inference_steps=1, output_type="latent", guidance_scale=1.0)
    except _Captured:
        pass
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in rows]
    if missing:
        raise ExportError(f"layer {missing[0]!r} saw no text input in a denoiser call; is it cross-attention?")
    return rows


def _bos_hook(row: torch.Tensor):
    def fn(module, args, output):
        out = output.clone()
        out[..., 0, :] = row.to(device=out.device, dtype=out.dtype)
        return out
    return fn


# --------------------------------------------------------------------------------------------------
# Fake quantization (simulation)


@dataclass
class FakeQuant:
    """Handle of a pipeline whose denoiser is fake-quantized in place; `restore()` undoes it."""

    pipe: Any
    plan: Plan
    originals: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    handles: list = field(default_factory=list, repr=False)
    session: Any = field(default=None, repr=False)
    removed: dict[str, nn.Module] = field(default_factory=dict, repr=False)  # pruned units, to put back

    def restore(self) -> None:
        from mpsearch.profiling.pruning import restore_units

        _, den = find_denoiser(self.pipe)
        params = dict(den.named_parameters())
        for name, data in self.originals.items():
            params[name].data = data
        for h in self.handles:
            h.remove()
        if self.session is not None:
            self.session.remove()
        restore_units(den, self.removed)
        self.originals, self.handles, self.session, self.removed = {}, [], None, {}

    def __enter__(self) -> FakeQuant:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def fake_quantize(
    pipe: Any,
    plan: Plan | str | Path,
    *,
    inv: Inventory | None = None,
    cfg: WeightQuantConfig | None = None,
    bos: bool = True,
    round_float: bool = True,
    calib: Any = None,
    progressive: bool = False,
) -> FakeQuant:
    """Replace the denoiser's weights by exactly what the plan's checkpoint would hold.

    Quantized layers get `fake_quant_weight` values at their nominal bits; every other parameter is
    rounded to fp16 (`round_float`), as the checkpoint stores it. BOS-aware K/V (`bos`) substitutes the
    full-precision BOS row. Activation bits (`a_bits < 16`, and per-step `step_overrides`, PCR's
    activation relaxing) run through the profiler's quantizers (`mpsearch.profiling.session.quantize_pipeline`:
    split shortcuts, BOS-aware, ranges calibrated on `calib`, a `mpsearch.profiling.calibration.Reference`, with
    full-precision weights as the profiler does; `progressive` = PCR per-step ranges). Per-step
    activation bits apply when sampling with the reference's number of steps.
    """
    plan = plan_of(plan)
    _, den = find_denoiser(pipe)
    inv = inv or inventory(pipe)
    check_plan(plan, inv, den)
    cfg = cfg or weight_config(plan.format)
    fq = FakeQuant(pipe, plan)
    if plan.pruned_units:
        from mpsearch.profiling.pruning import remove_units

        fq.removed = remove_units(den, plan.pruned_units)
    acts = activation_bits(plan)
    if acts:
        from mpsearch.profiling.session import Candidates, quantize_pipeline

        if calib is None:
            raise ValueError("the plan quantizes activations: pass calib= (mpsearch.profiling.calibration.reference(pipe, prompts))")
        fq.session = quantize_pipeline(pipe, Candidates(weight=(), act=tuple(sorted(acts))), calib=calib,
                                       progressive=progressive, weight_cfg=cfg)
        fq.session.apply({n: (None, b.a_bits) for n, b in plan.layers.items() if not b.pruned}, plan.step_overrides)
    rows = bos_rows(pipe, bos_targets(plan, den, pipe)) if bos else {}
    with torch.no_grad():
        for pname, p in den.named_parameters():
            module, _, kind = pname.rpartition(".")
            bits = plan.layers[module].w_bits if module in plan.layers and kind == "weight" else FLOAT_BITS
            if bits >= FLOAT_BITS and not round_float:
                continue
            fq.originals[pname] = p.data
            if bits < FLOAT_BITS:
                p.data = fake_quant_weight(p.data, bits, cfg)
            else:
                p.data = p.data.to(FLOAT_DTYPE).to(p.dtype)
    for name, row in rows.items():
        fq.handles.append(den.get_submodule(name).register_forward_hook(_bos_hook(row)))
    return fq


def activation_bits(plan: Plan) -> set[int]:
    """Activation widths below 16 that the plan uses anywhere (layers or step overrides)."""
    bits = {b.a_bits for b in plan.layers.values() if not b.pruned}
    bits |= {v["a_bits"] for o in plan.step_overrides for v in o["layers"].values() if "a_bits" in v}
    return {b for b in bits if b < FLOAT_BITS}


def _quantized(plan: Plan, name: str) -> bool:
    """Whether a layer is quantized at any step (weights, activations, or a per-step override)."""
    b = plan.layers.get(name)
    if b is not None and b.pruned:
        return False
    if b is not None and (b.w_bits < FLOAT_BITS or b.a_bits < FLOAT_BITS):
        return True
    return any(o["layers"].get(name, {}).get("a_bits", FLOAT_BITS) < FLOAT_BITS for o in plan.step_overrides)


def bos_targets(plan: Plan, den: nn.Module, pipe: Any) -> list[str]:
    """The BOS-aware K/V layers the plan quantizes: their BOS row stays full precision."""
    return [n for n in bos_layers(den, pipe) if _quantized(plan, n)]


# --------------------------------------------------------------------------------------------------
# Packed checkpoint


@dataclass
class ExportResult:
    """Byte accounting of one export (all in bytes)."""

    out: str
    format: str
    fp16_bytes: int  # every denoiser parameter at 16 bits: the reference size
    predicted_bytes: int  # cost.model_bytes of the plan
    tensor_bytes: int  # sum of the denoiser parameter tensors written (must equal predicted)
    header_bytes: int  # safetensors header (8-byte length + JSON)
    file_bytes: int  # size of mpsearch_quantized.safetensors
    buffer_bytes: int = 0  # denoiser buffers written alongside (not parameters; not in the cost model)
    bos_bytes: int = 0  # bos.safetensors file size
    budget: str | None = None
    budget_bytes: int | None = None
    layers: int = 0
    quantized_layers: int = 0
    pruned_units: int = 0

    @property
    def matches(self) -> bool:
        return self.tensor_bytes == self.predicted_bytes

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "mpsearch.export.exporter/1", **asdict(self), "matches_prediction": self.matches}


def safetensors_header_bytes(path: str | Path) -> int:
    """Bytes of a safetensors file before its first tensor: the 8-byte length plus the JSON header."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
    return 8 + n


def _check_budget(plan: Plan, inv: Inventory) -> int | None:
    """Refuse a plan over the budget it records, before anything is written; returns the budget in bytes
    (None for a budget of another kind). A bits budget counts stored bits (`cost.layer_wbits`: quanto
    keeps 3-bit weights in 4-bit containers); a MixDQ plan may exceed it by MixDQ's band. BitOPs budgets
    are the plan's compute, not the checkpoint's."""
    if not plan.budget:
        return None
    from mpsearch.planning.budget import Budget

    b = Budget.parse(plan.budget)
    fmt = get_format(plan.format)
    limit = b.resolve(inv, fmt)
    if b.resource == "bytes":
        used = model_bytes(inv, plan.w_bits(), fmt, plan.pruned_fixed_params)
        if used > limit:
            raise ExportError(f"the plan needs {used:,} bytes in format {fmt.name!r}, over its budget {plan.budget} "
                              f"= {int(limit):,} bytes; nothing written")
        return int(limit)
    if b.resource == "wbits":
        from solvers.mixdq import BAND

        used = stored_mean_bits(inv, plan.w_bits(), fmt)
        # MixDQ's procedure meets a bits target within its band (±0.02 bits), not under a ceiling
        slack = BAND if str(plan.solver.get("backend", "")).startswith("mixdq") else 0.0
        if used > (b.value + slack) * (1 + 1e-9):
            raise ExportError(f"the plan stores {used:.4f} bits per weight in format {fmt.name!r}, over its budget "
                              f"{plan.budget}; nothing written (re-solve it with --format {fmt.name})")
    return None


def quantized_state(den: nn.Module, plan: Plan, inv: Inventory, cfg: WeightQuantConfig | None = None):
    """`(tensors, qmap)`: every denoiser parameter as stored, and the per-module quantization map."""
    fmt = get_format(plan.format)
    cfg = cfg or weight_config(fmt)
    if cfg.group_size != fmt.group_size or cfg.symmetric != (fmt.zero_bytes == 0):
        raise ExportError(f"quantizer {cfg} does not match format {fmt.name!r} (group {fmt.group_size}, "
                          f"{fmt.zero_bytes} zero-point bytes)")
    storage = get_storage(fmt.name)
    tensors: dict[str, torch.Tensor] = {}
    qmap: dict[str, dict[str, Any]] = {}
    layers = {l.name for l in inv.layers}
    with torch.no_grad():
        for pname, p in den.named_parameters():
            if _in_pruned(plan, pname):
                continue
            module, _, kind = pname.rpartition(".")
            bits = plan.layers[module].w_bits if module in layers and kind == "weight" else FLOAT_BITS
            stored = fmt.stored_bits(bits)
            if stored >= FLOAT_BITS:
                tensors[pname] = p.detach().to(FLOAT_DTYPE).contiguous()
                continue
            q, scale, _ = quantize_weight(p.detach(), bits, cfg)
            for suffix, t in storage.encode(q, scale, stored).items():
                tensors[f"{pname}.{suffix}"] = t
    for layer in inv.layers:
        b = plan.layers[layer.name]
        if b.pruned:
            continue
        stored = fmt.stored_bits(b.w_bits)
        qmap[layer.name] = {
            "weights": storage.qtype(stored) if stored < FLOAT_BITS else "none",
            "activations": "none" if b.a_bits >= FLOAT_BITS else f"int{b.a_bits}",
            "w_bits": b.w_bits,
            "stored_bits": stored,
            "a_bits": b.a_bits,
            "kind": layer.kind,
            "shape": list(layer.weight_shape),
            "zero_point": storage.zero_point(stored) if stored < FLOAT_BITS else None,
            "bytes": layer_bytes(layer, b.w_bits, fmt),
        }
    return tensors, qmap


def export(
    plan: Plan | str | Path,
    out: str | Path,
    *,
    model: Any = None,
    cfg: WeightQuantConfig | None = None,
    bos: bool = True,
    components: bool = True,
    layout: str = "blobs",
    overwrite: bool = False,
) -> ExportResult:
    """Write the plan's packed checkpoint to the folder `out` and return its byte accounting.

    `model`: a pipeline, or anything `load_pipeline` accepts (None = demo). `components`: also save
    the pipeline's other components so that `load_quantized(out)` returns a whole pipeline.
    `layout`: "blobs" concatenates the tensors of each dtype into one safetensors tensor (offsets in
    quantization_map.json), so the file is the predicted bytes plus a header of a few hundred bytes;
    "tensors" writes one named tensor per parameter part (readable with any safetensors tool, but the
    header grows by ~130 bytes per tensor: several % of a small model).

    All or nothing (`mpsearch.export.atomic.staged`): the checkpoint is written to a temporary sibling of `out`
    and renamed into place at the end, so an error or a kill leaves `out` absent or as it was. An
    existing non-empty `out` is refused unless `overwrite`, which replaces a previous export (a folder
    with export.json) whole. Before anything is written: raises `PlanError` (naming the layer) for a plan
    made for another model, `ExportError` for a plan over its own budget, `FileExistsError` /
    `NotADirectoryError` for an `out` it may not write; `ExportError` when the bytes written differ from
    the cost model's prediction (then nothing is left either).
    """
    from safetensors.torch import save_file

    if layout not in ("blobs", "tensors"):
        raise ValueError(f"layout must be 'blobs' or 'tensors', not {layout!r}")
    plan = plan_of(plan)
    check_target(out, overwrite, _is_export)
    pipe = as_pipeline(model, plan)
    den_name, den = find_denoiser(pipe)
    inv = inventory(pipe)
    check_plan(plan, inv, den)
    fmt = get_format(plan.format)
    budget_bytes = _check_budget(plan, inv)

    tensors, qmap = quantized_state(den, plan, inv, cfg)
    params = {n for n, _ in den.named_parameters()}
    buffers = {f"__buffer__.{n}": t.detach().contiguous() for n, t in den.state_dict().items()
               if n not in params and not _in_pruned(plan, n)}
    predicted = model_bytes(inv, plan.w_bits(), fmt, plan.pruned_fixed_params)
    tensor_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    if tensor_bytes != predicted:
        raise ExportError(f"the checkpoint would hold {tensor_bytes:,} bytes of denoiser tensors but the cost model "
                          f"predicts {predicted:,} for format {fmt.name!r}; nothing written")
    rows = bos_rows(pipe, bos_targets(plan, den, pipe)) if bos else {}
    meta = {"schema": SCHEMA, "format": fmt.name, "fingerprint": inv.fingerprint, "component": den_name}
    with staged(out, overwrite=overwrite, is_ours=_is_export) as tmp:
        folder = tmp / den_name
        folder.mkdir()
        path = folder / WEIGHTS_FILE
        index = None
        if layout == "blobs":
            blobs, index = to_blobs({**tensors, **buffers})
            save_file(blobs, str(path), metadata={**meta, "layout": layout})
        else:
            save_file({**tensors, **buffers}, str(path), metadata={**meta, "layout": layout})
        bos_bytes = 0
        if rows:
            save_file({n: r.contiguous() for n, r in rows.items()}, str(folder / BOS_FILE), metadata={"schema": SCHEMA})
            bos_bytes = (folder / BOS_FILE).stat().st_size
        for name in rows:
            qmap[name]["bos"] = True

        (folder / QMAP_FILE).write_text(json.dumps({
            "schema": SCHEMA, "format": fmt.to_dict(), "fingerprint": inv.fingerprint, "model": inv.model,
            "component": den_name, "denoiser_class": type(den).__name__,
            "quantizer": asdict(cfg or weight_config(fmt)), "float_dtype": "float16", "bos_layers": sorted(rows),
            "layout": layout, "pruned_units": list(plan.pruned_units), "modules": qmap,
            **({"blobs": index} if index is not None else {}),
        }, indent=1))
        den.save_config(folder)
        plan.save(tmp / "plan.json")
        if components:
            _save_components(pipe, den_name, tmp)

        result = ExportResult(
            out=str(out), format=fmt.name, fp16_bytes=fp16_bytes(inv), predicted_bytes=predicted,
            tensor_bytes=tensor_bytes, header_bytes=safetensors_header_bytes(path), file_bytes=path.stat().st_size,
            buffer_bytes=sum(t.numel() * t.element_size() for t in buffers.values()), bos_bytes=bos_bytes,
            budget=plan.budget, budget_bytes=budget_bytes, layers=len(inv),
            quantized_layers=sum(1 for v in qmap.values() if v["weights"] != "none"),
            pruned_units=len(plan.pruned_units),
        )
        (tmp / EXPORT_FILE).write_text(json.dumps(result.to_dict(), indent=1))
    return result


def _is_export(folder: Path) -> bool:
    """Whether a folder holds a finished export (the only kind `overwrite` replaces)."""
    return (folder / EXPORT_FILE).is_file()


def to_blobs(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, list]]:
    """Concatenate tensors per dtype: `({"blob.<dtype>": 1-D tensor}, {name: [dtype, offset, shape]})`.

    The blobs hold exactly the tensors' bytes (no padding): byte equality with the cost model survives.
    """
    groups: dict[str, list[torch.Tensor]] = {}
    index: dict[str, list] = {}
    offsets: dict[str, int] = {}
    for name, t in tensors.items():
        dt = str(t.dtype).removeprefix("torch.")
        index[name] = [dt, offsets.get(dt, 0), list(t.shape)]
        offsets[dt] = offsets.get(dt, 0) + t.numel()
        groups.setdefault(dt, []).append(t.reshape(-1))
    return {f"blob.{dt}": torch.cat(ts) for dt, ts in groups.items()}, index


def from_blobs(blobs: dict[str, torch.Tensor], index: dict[str, list]) -> dict[str, torch.Tensor]:
    """Inverse of `to_blobs` (views into the blobs, no copies)."""
    out = {}
    for name, (dt, offset, shape) in index.items():
        n = 1
        for d in shape:
            n *= d
        out[name] = blobs[f"blob.{dt}"][offset : offset + n].reshape(shape)
    return out


def _save_components(pipe: Any, den_name: str, out: Path) -> None:
    for name, comp in pipe.components.items():
        if comp is None or name == den_name:
            continue
        if hasattr(comp, "save_pretrained"):
            comp.save_pretrained(out / name)
    pipe.save_config(out)


# --------------------------------------------------------------------------------------------------
# Loading


def _container(stored_bits: int):
    from optimum.quanto import qint2, qint4, qint8

    return qint2 if stored_bits <= 2 else qint4 if stored_bits <= 4 else qint8


def _quanto_module(module: nn.Module, q: torch.Tensor, scale: torch.Tensor, stored_bits: int, dtype) -> nn.Module:
    """An optimum-quanto QLinear / QConv2d holding `q` (signed codes) and per-channel `scale`."""
    from optimum.quanto.nn import quantize_module
    from optimum.quanto.tensor.weights import WeightQBitsTensor, WeightQBytesTensor

    qtype = _container(stored_bits)
    qmod = quantize_module(module, weights=qtype)  # built on the module's (meta) device, empty
    qmod.weight_group_size = None  # one scale per output channel, not quanto's default groups
    qmod = qmod.to_empty(device="cpu")
    qmod.input_scale = torch.ones((), dtype=dtype)
    qmod.output_scale = torch.ones((), dtype=dtype)
    scale = scale.to(dtype)
    size, stride = q.shape, torch.empty(q.shape, device="meta").stride()
    if qtype.bits == 8:
        w = WeightQBytesTensor(qtype, 0, size, stride, q.to(torch.int8), scale, None)
    else:
        zp = zero_point(qtype.bits)
        codes = (q.to(torch.int16) + zp).to(torch.uint8)
        shift = torch.full((), zp, dtype=torch.uint8)
        w = WeightQBitsTensor(qtype, 0, None, size, stride, codes, scale, shift.expand(scale.shape))
    qmod.weight = nn.Parameter(w, requires_grad=False)
    return qmod


def load_denoiser(folder: str | Path, *, dtype: torch.dtype = torch.float32, dequantize: bool = False) -> nn.Module:
    """Rebuild a quantized denoiser from its checkpoint folder (config.json + quantized safetensors)."""
    import diffusers
    from accelerate import init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from safetensors.torch import load_file

    folder = Path(folder)
    qinfo = json.loads((folder / QMAP_FILE).read_text())
    if qinfo.get("schema") != SCHEMA:
        raise ExportError(f"{folder / QMAP_FILE}: schema {qinfo.get('schema')!r}, expected {SCHEMA!r}")
    cfg = json.loads((folder / "config.json").read_text())
    cls = getattr(diffusers, cfg["_class_name"])
    with init_empty_weights(include_buffers=False):
        den = cls.from_config(cfg)
    if fingerprint(den) != qinfo["fingerprint"]:
        raise ExportError(f"{folder}: the denoiser built from config.json has fingerprint {fingerprint(den)}, "
                          f"the checkpoint was written for {qinfo['fingerprint']}")
    if qinfo.get("pruned_units"):
        from mpsearch.profiling.pruning import remove_units

        remove_units(den, qinfo["pruned_units"])
    tensors = load_file(str(folder / WEIGHTS_FILE))
    if qinfo.get("layout") == "blobs":
        tensors = from_blobs(tensors, qinfo["blobs"])
    storage = get_storage(qinfo["format"]["name"])
    modules = qinfo["modules"]
    for name, entry in modules.items():
        try:
            module = den.get_submodule(name)
        except AttributeError:
            raise ExportError(f"layer {name!r} of the checkpoint is not a module of {cfg['_class_name']}") from None
        if list(module.weight.shape) != entry["shape"]:
            raise ExportError(f"layer {name!r}: checkpoint shape {entry['shape']} != model shape "
                              f"{list(module.weight.shape)}")
        stored = entry["stored_bits"]
        if stored >= FLOAT_BITS:
            continue
        prefix = f"{name}.weight."
        parts = {k[len(prefix):]: tensors.pop(k) for k in [k for k in tensors if k.startswith(prefix)]}
        if not parts:
            raise ExportError(f"layer {name!r}: no quantized weight tensors in {WEIGHTS_FILE}")
        q, scale = storage.decode(parts, stored, tuple(entry["shape"]))
        if dequantize:
            w = (q.reshape(q.shape[0], -1).float() * scale.reshape(-1, 1)).reshape(q.shape)
            set_module_tensor_to_device(den, f"{name}.weight", "cpu", value=w.to(dtype))
        else:
            bias = module.bias
            qmod = _quanto_module(module, q, scale, stored, dtype)
            if bias is not None:
                qmod.bias = nn.Parameter(tensors.pop(f"{name}.bias").to(dtype), requires_grad=False)
            qmod.name = name
            den.set_submodule(name, qmod)
    for key, t in tensors.items():
        if key.startswith("__buffer__."):
            set_module_tensor_to_device(den, key[len("__buffer__."):], "cpu", value=t)
        else:
            set_module_tensor_to_device(den, key, "cpu", value=t.to(dtype))
    left = [n for n, p in den.named_parameters() if p.device.type == "meta"]
    if left:
        raise ExportError(f"parameter {left[0]!r} is missing from {folder / WEIGHTS_FILE}")
    if (folder / BOS_FILE).exists():
        for name, row in load_file(str(folder / BOS_FILE)).items():
            den.get_submodule(name).register_forward_hook(_bos_hook(row))
    den.eval().requires_grad_(False)
    den.mpsearch_quantization = qinfo
    if not dequantize:
        _outside_inference_mode(den)
    return den


def _outside_inference_mode(module: nn.Module) -> None:
    """optimum-quanto's autograd functions fail under `torch.inference_mode` (diffusers pipelines use it):
    run the module's forward under `no_grad` instead, which is what inference mode would save anyway."""
    forward = module.forward

    def wrapped(*args, **kwargs):
        with torch.inference_mode(False), torch.no_grad():
            return forward(*args, **kwargs)

    module.forward = wrapped


def load_quantized(path: str | Path, *, device: str = "cpu", dtype: torch.dtype | None = None,
                   dequantize: bool = False):
    """Load a checkpoint written by `export` as a working diffusers pipeline.

    Quantized layers become optimum-quanto `QLinear` / `QConv2d` modules holding the integer codes
    (qint2 / qint4 / qint8 containers: 3-bit codes in qint4, 5/6-bit in qint8), dequantized on the fly;
    `dequantize=True` gives plain float modules instead. `dtype` defaults to float32 on CPU.
    """
    import diffusers

    path = Path(path)
    index = json.loads((path / "model_index.json").read_text())
    den_name = next((n for n in denoiser_components() if (path / n / QMAP_FILE).exists()), None)
    if den_name is None:
        raise ExportError(f"{path} holds no {QMAP_FILE} under a unet/ or transformer/ folder")
    dtype = dtype or (torch.float32 if device == "cpu" else torch.float16)
    with damaged_weights(path), warnings.catch_warnings():
        den = load_denoiser(path / den_name, dtype=dtype, dequantize=dequantize)
        cls = getattr(diffusers, index["_class_name"])
        warnings.simplefilter("ignore", FutureWarning)  # diffusers 0.42 renames torch_dtype to dtype; older ones lack dtype
        pipe = cls.from_pretrained(str(path), local_files_only=True, torch_dtype=dtype, **{den_name: den})
    pipe.set_progress_bar_config(disable=True)
    pipe.mpsearch_plan = Plan.load(path / "plan.json") if (path / "plan.json").exists() else None
    return pipe.to(device)
