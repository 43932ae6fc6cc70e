"""Layer pruning (LAPTOP-Diff): prunable units of a UNet or a DiT, replace-by-identity, one-shot unit scores.

A *unit* is a residual block whose removal leaves a valid network because its output is
`input + f(input)`: replacing it by the identity keeps every shape. In diffusers SD-style UNets
(`UNet2DConditionModel`: SD 1.5, SDXL, the demo, the test fixtures) these are

- `Transformer2DModel` blocks (`down_blocks.N.attentions.M`, `mid_block.attentions.M`,
  `up_blocks.N.attentions.M`), or, where one holds several `BasicTransformerBlock`s (SDXL), each of
  those blocks (`....transformer_blocks.K`) instead;
- `ResnetBlock2D`s whose input and output channels match and that have no `conv_shortcut` (down-block
  resnets after the first, the mid-block resnets). Up-block resnets take the concatenated skip
  connection, so they are never units.

In transformer denoisers (`PixArtTransformer2DModel`: PixArt-α/Σ, and any diffusers DiT that keeps its
`BasicTransformerBlock`s in a top-level `transformer_blocks` list) each block is a unit: a block is
`x + attn(x) + cross(x) + ff(x)` with its adaLN modulation inside, so the identity keeps every shape.
Patch embedding, caption projection, adaLN-single and the output head are never units.

Other DiTs name their block lists in their adapter (`PipelineAdapter.unit_lists`; kind "dit_block"): SD3's
`transformer_blocks` (joint blocks: both streams pass through unchanged), Flux's double-stream
`transformer_blocks` and single-stream `single_transformer_blocks`, Sana's linear-attention blocks,
AuraFlow's joint and single blocks, Lumina 2's `layers`, HunyuanDiT's `blocks` (a block that feeds a long
skip passes its input on instead; one that takes a skip drops it). Every one is `x + f(x)` per stream, so
its stand-in returns its inputs in the structure the block returns (`PrunedJointBlock` for two-stream ones).

A unit's score is LAPTOP-Diff's output loss: the degradation of the denoiser output (and of the images,
for the image metrics) with only that unit removed. The profiler stores it as a row with
`tensor="unit"`, `layer=<unit name>`, `bits=0` (`mpsearch.profile(..., prune=True)`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from mpsearch.model import find_denoiser, inventory
from mpsearch.pipelines import adapter_for
from mpsearch.pipelines.blocks import TOP_BLOCK

PRUNED_KEY = "pruned"  # the option key of a pruned layer in a `solvers.Problem`


@dataclass(frozen=True)
class Unit:
    """A removable block: its module name, kind, the inventory layers inside it and its other
    parameters (norms: stored unquantized, removed with it)."""

    name: str
    kind: str  # "transformer" | "transformer_block" | "resnet"
    layers: tuple[str, ...]
    fixed_params: int


def find_units(model, inv=None) -> list[Unit]:
    """The prunable units of a pipeline's or module's denoiser, in module order (see module docstring)."""
    _, den = find_denoiser(model)
    inv = inv or inventory(model if hasattr(model, "components") else den)
    adapter = adapter_for(model)
    units = []
    for name, module in den.named_modules():
        kind = adapter.unit_kind(name, module)
        if kind is None:
            continue
        if kind == "dit_block":
            if len(den.get_submodule(name.rsplit(".", 1)[0])) < 2:
                continue  # a lone block: removing it leaves nothing of the list
        elif kind == "transformer_block":
            if TOP_BLOCK.match(name):  # a DiT's own block list (PixArt)
                if len(den.transformer_blocks) < 2:
                    continue
            elif ".transformer_blocks." in name:
                parent_name = name.rsplit(".transformer_blocks.", 1)[0]
                parent = den.get_submodule(parent_name)
                if len(parent.transformer_blocks) < 2 or adapter.unit_kind(parent_name, parent) is None:
                    continue  # a lone block: its Transformer2DModel is the unit
            else:
                continue  # a block somewhere else (e.g. inside a text or image projection): not a unit
        elif kind == "transformer" and len(module.transformer_blocks) > 1:
            continue  # several blocks: each block is a unit
        layers = tuple(n for n in inv.names if n.startswith(name + "."))
        if not layers:
            continue
        own = sum(p.numel() for p in module.parameters())
        inside = sum(inv[n].params + inv[n].bias for n in layers)
        units.append(Unit(name, kind, layers, own - inside))
    return units


def remove_units(denoiser: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """Replace the named units by identity stand-ins in place; returns the removed modules by name.

    Raises `ValueError` naming a unit that is not prunable (see `find_units`)."""
    adapter = adapter_for(denoiser)
    removed = {}
    for name in names:
        try:
            module = denoiser.get_submodule(name)
        except AttributeError:
            raise ValueError(f"unit {name!r} is not a module of {type(denoiser).__name__}") from None
        if adapter.unit_kind(name, module) is None:
            raise ValueError(f"{name!r} ({type(module).__name__}) is not a prunable unit")
        removed[name] = module
        denoiser.set_submodule(name, adapter.stand_in(module))
    return removed


def restore_units(denoiser: nn.Module, removed: dict[str, nn.Module]) -> None:
    for name, module in removed.items():
        denoiser.set_submodule(name, module)


@contextmanager
def pruned(model, names: Sequence[str]) -> Iterator[nn.Module]:
    """Context: the denoiser with `names` removed (replaced by identity); put back on exit."""
    _, den = find_denoiser(model)
    removed = remove_units(den, names)
    try:
        yield den
    finally:
        restore_units(den, removed)


# --------------------------------------------------------------------------------------------------
# Scores (the profiler's `prune=True`)


def _images_without(pipe, ref, name: str, steps: set[int]) -> torch.Tensor:
    """Images sampled from the reference latents with `name` removed during `steps` only."""
    from mpsearch.profiling import calibration as cal

    start = min(steps) if cal.restartable(pipe) else 0
    sampler = cal.Sampler(pipe, ref)
    lat = ref.latents[start].to(pipe.device)
    _, den = find_denoiser(pipe)
    for i in range(start, ref.steps):
        removed = remove_units(den, [name]) if i in steps else {}
        try:
            lat = sampler.step(lat, i)
        finally:
            restore_units(den, removed)
    return cal.decode(pipe, lat).cpu()


@torch.no_grad()
def score_units(pipe, ref, groups: list[list[int]], units: Sequence[Unit], metrics, done=frozenset()) -> Iterator[list[dict]]:
    """Profile rows, one list per unit: every metric of `metrics` (`mpsearch.profiling.metrics.Metric`s), per
    step group, with only that unit removed during the group's steps. Skips keys in `done`."""
    from mpsearch.profiling.metrics import get_metric

    _, den = find_denoiser(pipe)
    for unit in units:
        rows = []
        for g, steps in enumerate(groups):
            todo = [m for m in metrics if (unit.name, "unit", 0, m.name, g) not in done]
            if not todo:
                continue
            sel = ref.rows_of(steps)
            fp = ref.outputs.flatten(0, 1)[sel]
            cands = {}
            if any(m.stage == "output" for m in todo):
                with pruned(den, [unit.name]):
                    cands["output"] = ref.forward(den, sel).cpu()
            if any(m.stage == "image" for m in todo):
                cands["image"] = _images_without(pipe, ref, unit.name, set(steps))
            for m in todo:
                base = fp if m.stage == "output" else ref.images
                value, deg = get_metric(m.name)(base, cands[m.stage], prompts=ref.prompts)
                rows.append({"layer": unit.name, "tensor": "unit", "bits": 0, "metric": m.name,
                             "step_group": g, "value": value, "degradation": deg})
        yield rows


def unit_meta(units: Sequence[Unit]) -> dict[str, dict]:
    """What a profile records about its units: `{name: {"kind", "fixed_params", "layers"}}`."""
    return {u.name: {"kind": u.kind, "fixed_params": u.fixed_params, "layers": len(u.layers)} for u in units}
