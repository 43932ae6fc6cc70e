"""Recover a pruned and/or quantized denoiser by feature distillation (LAPTOP-Diff §5).

    result = distill("plan.json", out="runs/recovered", steps=300)   # demo model, CPU, about a minute
    # then: mpsearch evaluate --plan plan.json --model runs/recovered

Student: the denoiser as the plan deploys it, with straight-through estimators (STE) so the float
weights can learn: its pruned units replaced by identity; every quantized layer's weight passed through
the plan's weight quantizer in the forward pass; every input activation the plan quantizes (`a_bits`,
per-step overrides) through the same activation quantizers `fake_quantize` uses (split shortcuts,
BOS-aware, ranges calibrated on the training trajectories with full-precision weights, as
`fake_quantize` calibrates them; recalibrated every `recalibrate` steps as the weights move); BOS rows
of quantized cross-attention K/V in full precision. Ranges are not learned: a deployed plan calibrates
its own (`fake_quantize(calib=...)`). Teacher: the full-precision denoiser. Loss on the teacher's own
sampling trajectories for `n_prompts` calibration prompts (noisy latents at every sampling step, both
classifier-free-guidance halves):

    L = ‖ε_s − ε_t‖² / ‖ε_t‖²  +  Σ_l ‖F_s^l − F_t^l‖² / ‖F_t^l‖²

over the outputs F^l of every down, mid and up block, or of a DiT's transformer blocks (LAPTOP-Diff's
normalised feature distillation: each term divided by the teacher feature's squared norm, so every block
counts alike; the output term is normalised the same way). The result is written as a whole pipeline
whose denoiser holds the fine-tuned float weights (pruned units keep their original weights, unused):
applying the plan to it (`fake_quantize`, `export`, `mpsearch evaluate --model DIR`) gives exactly the
trained student.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from mpsearch.model import find_denoiser, inventory
from mpsearch.pipelines import adapter_for
from mpsearch.planning.plan import Plan


class _SteQuant(nn.Module):
    """Weight parametrization: forward = the checkpoint's quantized weight, backward = identity (STE).
    `active = False` gives the float weight (activation ranges are calibrated with float weights)."""

    def __init__(self, bits: int, cfg):
        super().__init__()
        self.bits, self.cfg, self.active = bits, cfg, True

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        from mpsearch.profiling.quantizers import fake_quant_weight

        if not self.active:
            return w
        q = fake_quant_weight(w.detach(), self.bits, self.cfg)
        return w + (q - w).detach() if w.requires_grad and torch.is_grad_enabled() else q


class Student:
    """The plan applied to `pipe`'s denoiser in place, trainable (see module docstring); `close()` puts
    the original modules, forwards and parameter order back, keeping the trained float weights.

    >>> with Student(pipe, plan, calib) as den:   # den(**inputs) computes what fake_quantize(pipe, plan) does
    ...     loss = den(**calib.inputs(rows), return_dict=False)[0].pow(2).mean()
    """

    def __init__(self, pipe, plan: Plan, calib) -> None:
        from mpsearch.export.simulate import activation_bits, bos_targets
        from mpsearch.planning.quantizer import weight_config
        from mpsearch.profiling.pruning import remove_units
        from mpsearch.profiling.session import Candidates, quantize_pipeline

        _, den = find_denoiser(pipe)
        self.den, self.calib = den, calib
        self.removed, self.quantized, self.session, self.handles = {}, [], None, []
        self._order, self._ste = {}, {}
        cfg = weight_config(plan.format)
        try:
            self.removed = remove_units(den, plan.pruned_units)
            for name, b in plan.layers.items():
                if b.pruned or b.w_bits >= 16:
                    continue
                module = den.get_submodule(name)
                self._order[name] = list(module._parameters)
                self._ste[name] = _SteQuant(b.w_bits, cfg)
                parametrize.register_parametrization(module, "weight", self._ste[name])
                self.quantized.append(name)
            acts = activation_bits(plan)
            if acts:
                self.session = quantize_pipeline(pipe, Candidates(weight=(), act=tuple(sorted(acts))),
                                                 weight_cfg=cfg)
                self.calibrate()
                self.session.apply({n: (None, b.a_bits) for n, b in plan.layers.items() if not b.pruned},
                                   plan.step_overrides)
            self.handles = [den.get_submodule(n).register_forward_hook(_fp_bos_row)
                            for n in bos_targets(plan, den, pipe)]
        except BaseException:
            self.close()
            raise

    def calibrate(self) -> None:
        """Activation ranges from the calibration trajectories, with float weights (as `fake_quantize`)."""
        if self.session is None:
            return
        for ste in self._ste.values():
            ste.active = False
        try:
            self.session.calibrate(self.calib)
        finally:
            for ste in self._ste.values():
                ste.active = True

    def close(self) -> None:
        from mpsearch.profiling.pruning import restore_units

        for h in self.handles:
            h.remove()
        if self.session is not None:
            self.session.remove()
        for name in self.quantized:
            module = self.den.get_submodule(name)
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
            # parameter order is part of the model's fingerprint: put `weight` back before `bias`
            module._parameters = {k: module._parameters[k] for k in self._order[name]}
        restore_units(self.den, self.removed)
        self.handles, self.session, self.quantized, self.removed = [], None, [], {}

    def __enter__(self) -> nn.Module:
        return self.den

    def __exit__(self, *exc) -> None:
        self.close()


def _fp_bos_row(module, args, output):
    """MixDQ's BOS-aware K/V: the first text token's output with the float weight, stored at the
    checkpoint's float dtype (as `mpsearch.export.simulate.bos_rows`); differentiable (STE through the rounding)."""
    from mpsearch.export.simulate import FLOAT_DTYPE

    x = args[0]
    if x.dim() != 3 or x.shape[1] < 2:
        return output
    w = module.parametrizations.weight.original if parametrize.is_parametrized(module, "weight") else module.weight
    row = nn.functional.linear(x[:, 0], w, module.bias)
    out = output.clone()
    out[:, 0] = row + (row.to(FLOAT_DTYPE).to(row.dtype) - row).detach()
    return out


@dataclass
class DistillResult:
    out: str | None
    steps: int
    seconds: float
    loss_first: float  # mean loss of the first 10 % of steps
    loss_last: float  # mean loss of the last 10 % of steps
    history: list[float] = field(default_factory=list, repr=False)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": "mpsearch.recovery.distill/1", **asdict(self)}


def _block_outputs(den: nn.Module) -> tuple[dict[str, torch.Tensor], list]:
    feats: dict[str, torch.Tensor] = {}
    adapter = adapter_for(den)

    def hook(name):
        def fn(module, args, output):
            feats[name] = adapter.block_feature(module, output)
        return fn

    blocks = adapter.feature_blocks(den)  # a UNet's down/mid/up blocks, a DiT's transformer blocks
    return feats, [b.register_forward_hook(hook(n)) for n, b in blocks if b is not None]


def _rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).sum() / b.pow(2).sum().clamp_min(1e-12)


def distill(
    plan: Plan | str | Path,
    *,
    model: Any = None,
    out: str | Path | None = None,
    steps: int = 300,
    batch: int = 32,
    lr: float = 2e-4,
    n_prompts: int = 32,
    seed: int = 0,
    sample_steps: int | None = None,
    guidance: float | None = None,
    recalibrate: int = 100,
    log=None,
):
    """Fine-tune the plan's student against the FP teacher, in place; returns `(pipeline, DistillResult)`.

    `model`: the model the plan was made for (pipeline or anything `load_pipeline` takes; None = demo).
    `recalibrate`: steps between activation-range recalibrations (plans that quantize activations; 0 =
    only at the start). The returned pipeline holds the fine-tuned float weights (apply the plan to use
    it); `out` also saves it there with `plan.json` and `distill.json`. Prompts are the demo's scene sampler (`seed + 1000`,
    other than the profiler's calibration prompts) or, for other models, the calibration fallbacks.
    """
    from mpsearch.export.simulate import activation_bits, as_pipeline, check_plan, plan_of
    from mpsearch.profiling import calibration as cal
    from mpsearch.zoo import bundled_name

    log = log or (lambda msg: None)
    plan = plan_of(plan)
    pipe = as_pipeline(model, plan)
    pipe.set_progress_bar_config(disable=True)
    _, den = find_denoiser(pipe)
    inv = inventory(pipe)
    check_plan(plan, inv, den)
    d_steps, d_guidance = cal.demo_settings(bundled_name(pipe) or "demo")
    sample_steps, guidance = sample_steps or d_steps, d_guidance if guidance is None else guidance
    prompts = cal.demo_prompts(n_prompts, seed + 1000)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    ref = cal.reference(pipe, prompts, seeds=[seed + 1000 + i for i in range(len(prompts))], steps=sample_steps,
                        guidance=guidance)
    log(f"teacher trajectories: {len(prompts)} prompts × {sample_steps} steps in {time.perf_counter() - t0:.1f} s")

    teacher = copy.deepcopy(den).eval().requires_grad_(False)
    student = Student(pipe, plan, ref)
    try:
        history = _train(den, teacher, student, ref, plan, steps=steps, batch=batch, lr=lr, seed=seed,
                         recalibrate=recalibrate)
    finally:
        n_quantized, calibrated = len(student.quantized), student.session is not None
        student.close()
        den.eval().requires_grad_(False)
    k = max(1, steps // 10)
    result = DistillResult(
        out=str(out) if out is not None else None, steps=steps, seconds=round(time.perf_counter() - t0, 1),
        loss_first=sum(history[:k]) / k, loss_last=sum(history[-k:]) / k, history=[round(v, 6) for v in history],
        settings={"batch": batch, "lr": lr, "n_prompts": n_prompts, "seed": seed, "sample_steps": sample_steps,
                  "guidance": guidance, "pruned_units": plan.pruned_units, "quantized_layers": n_quantized,
                  "activation_bits": sorted(activation_bits(plan)), "recalibrate": recalibrate if calibrated else None},
    )
    log(f"distilled {steps} steps in {result.seconds} s: loss {result.loss_first:.4f} → {result.loss_last:.4f}")
    if out is not None:
        out = Path(out)
        pipe.save_pretrained(out)
        plan.save(out / "plan.json")
        (out / "distill.json").write_text(json.dumps(result.to_dict(), indent=1))
    return pipe, result


def _train(den: torch.nn.Module, teacher: torch.nn.Module, student: Student, ref: Any, plan: Plan, *, steps: int,
           batch: int, lr: float, seed: int, recalibrate: int) -> list[float]:
    """AdamW on the student's float weights: relative error of the output and of every block's output
    against the teacher, on random rows of the teacher's trajectories. Returns the loss per step."""
    den.train().requires_grad_(True)
    params = [p for p in den.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    f_s, h_s = _block_outputs(den)
    f_t, h_t = _block_outputs(teacher)
    gen = torch.Generator().manual_seed(seed)
    history = []
    try:
        for it in range(steps):
            if it and recalibrate and it % recalibrate == 0:
                student.calibrate()
            if plan.step_overrides:  # per-step activation bits apply to a batch of one step
                step_i = int(torch.randint(0, ref.steps, (1,), generator=gen))
                rows = step_i * ref.rows_per_step + torch.randint(0, ref.rows_per_step, (batch,), generator=gen)
            else:
                rows = torch.randint(0, ref.n_rows, (batch,), generator=gen)
            kw = ref.inputs(rows)
            with torch.no_grad():
                y_t = teacher(**kw, return_dict=False)[0]
            y_s = den(**kw, return_dict=False)[0]
            loss = _rel(y_s, y_t) + sum(_rel(f_s[k], f_t[k]) for k in f_t if k in f_s)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            history.append(loss.item())
    finally:
        for h in h_s + h_t:
            h.remove()
    return history
