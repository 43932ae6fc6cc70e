"""Fake quantization: a plan applied to a pipeline in place, computing what its checkpoint would.

    fq = fake_quantize(pipe, plan)          # weights replaced by their quantized values; fq.restore()

The simulation and the checkpoint agree bit for bit on the weights: both use
`mpsearch.profiling.quantizers.quantize_weight` with the format's quantizer config
(`mpsearch.planning.quantizer.weight_config`: symmetric, one fp16 scale per output channel for `packed`
and `quanto`), and both keep every unquantized denoiser parameter (biases, norms, embeddings, 16-bit
layers) at fp16, the dtype the cost model charges (`WeightFormat.float_bytes`): the simulation rounds
them to fp16 and back. Cross-attention K/V layers of CLIP-conditioned models are BOS-aware (MixDQ §1.3):
the output row of the BOS token, identical for every prompt, is precomputed with full-precision weights,
stored in fp16 and substituted at run time, in the simulation and in the loaded checkpoint alike
(`bos_rows`, `bos_hook`). Pruned units (`plan.pruned_units`) are replaced by identity stand-ins.

`check_plan` (the plan fits this model) is shared by the simulation, the export and distillation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpsearch.model import Inventory, find_denoiser, inventory, load_pipeline
from mpsearch.planning.cost import FLOAT_BITS, get_format
from mpsearch.planning.plan import Plan, PlanError
from mpsearch.planning.quantizer import weight_config
from mpsearch.profiling.quantizers import WeightQuantConfig, fake_quant_weight
from mpsearch.profiling.session import bos_layers
from mpsearch.zoo import BUNDLED

FLOAT_DTYPE = torch.float16  # unquantized parameters, scales and BOS rows; `WeightFormat.float_bytes == 2`


class ExportError(ValueError):
    """A checkpoint cannot be written or read back (the message names the layer)."""


def as_pipeline(model: Any, plan: Plan | None = None):
    """`model` if it is a pipeline, else what `load_pipeline` makes of it; None is the bundled model `plan`
    was made for ("demo-dit" for a plan from the DiT's profile), else the demo."""
    if model is None and plan is not None and plan.model in BUNDLED:
        model = plan.model
    return model if hasattr(model, "components") else load_pipeline(model)


def plan_of(plan: Plan | str | Path) -> Plan:
    """A `Plan`, or the plan file at that path."""
    return plan if isinstance(plan, Plan) else Plan.load(plan)


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
    _check_widths(plan, inv)
    if plan.pruned_units:
        _check_pruned(plan, inv, den)
    for i, o in enumerate(plan.step_overrides):
        for name, bits in o["layers"].items():
            if "w_bits" in bits:
                raise PlanError(f"step_overrides[{i}]: layer {name!r} changes w_bits per step; a checkpoint "
                                "holds one weight per layer (only a_bits may vary over steps)")
    return plan


def _check_widths(plan: Plan, inv: Inventory) -> None:
    """Every layer's width exists in the plan's format for that layer (GGUF: Linear rows of whole
    blocks); a native format's own runtime cannot remove pruned units."""
    fmt = get_format(plan.format)
    for layer in inv.layers:
        bits = plan.layers[layer.name]
        if not bits.pruned and not fmt.stores(layer, bits.w_bits):
            raise PlanError(f"layer {layer.name!r}: format {fmt.name!r} cannot store {bits.w_bits}-bit weights "
                            f"({fmt.why_not(layer, bits.w_bits)}); re-solve the plan with --format {fmt.name}")
    if plan.pruned_units and fmt.native:
        raise PlanError(f"the plan prunes {len(plan.pruned_units)} units, which format {fmt.name!r} cannot "
                        "express (its own loader builds the full model): choose --format packed or quanto")


def in_pruned(plan: Plan, name: str) -> bool:
    """Whether parameter or module `name` lies inside one of the plan's pruned units."""
    return any(name.startswith(u + ".") for u in plan.pruned_units)


# ---- BOS-aware cross-attention K/V (MixDQ §1.3)


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


def bos_hook(row: torch.Tensor):
    """A forward hook that puts the stored BOS `row` in place of the layer's output for token 0."""
    def fn(module, args, output):
        out = output.clone()
        out[..., 0, :] = row.to(device=out.device, dtype=out.dtype)
        return out
    return fn


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


# ---- fake quantization


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

    Quantized layers get `fake_quant_weight` values at their nominal bits, with the format's quantizer
    (`mpsearch.planning.quantizer.weight_config`: gguf and sdnq round as their files do); every other
    parameter is rounded to fp16 (`round_float`), as the checkpoint stores it. BOS-aware K/V (`bos`)
    substitutes the full-precision BOS row, for the formats whose runtime does (`packed`, `quanto`). Activation bits (`a_bits < 16`, and per-step `step_overrides`, PCR's
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
    bos = bos and get_format(plan.format).keeps_bos_rows  # a native runtime cannot substitute BOS rows
    fq = FakeQuant(pipe, plan)
    if plan.pruned_units:
        from mpsearch.profiling.pruning import remove_units

        fq.removed = remove_units(den, plan.pruned_units)
    if activation_bits(plan):
        fq.session = _activation_session(pipe, plan, cfg, calib, progressive)
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
        fq.handles.append(den.get_submodule(name).register_forward_hook(bos_hook(row)))
    return fq


def _activation_session(pipe: Any, plan: Plan, cfg: WeightQuantConfig, calib: Any, progressive: bool):
    """The profiler's activation quantizers at the plan's a_bits (and per-step overrides)."""
    from mpsearch.profiling.session import Candidates, quantize_pipeline

    if calib is None:
        raise ValueError("the plan quantizes activations: pass calib= "
                         "(mpsearch.profiling.calibration.reference(pipe, prompts))")
    session = quantize_pipeline(pipe, Candidates(weight=(), act=tuple(sorted(activation_bits(plan)))),
                                calib=calib, progressive=progressive, weight_cfg=cfg)
    session.apply({n: (None, b.a_bits) for n, b in plan.layers.items() if not b.pruned}, plan.step_overrides)
    return session
