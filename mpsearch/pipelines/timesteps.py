"""Sampling at a chosen subset of timesteps, and the step groups the timestep search keeps one step of.

A plan that keeps N of a model's timesteps (TMPQ-DM, `mpsearch.planning.steps`) must sample at exactly those
timesteps. diffusers schedulers differ here (read from their `set_timesteps`, diffusers 0.42):

| scheduler | how |
|---|---|
| DDIM (`DDIMScheduler`) | no `timesteps=` argument, and its `step` always goes `T // num_inference_steps` back; `KeptStepsDDIMScheduler` (below) steps to the next kept timestep instead: DDIM's update (eq. 12 of the paper) holds for any decreasing sub-sequence, and on the uniform-stride schedules diffusers makes (leading, trailing when `T % steps == 0`) it equals diffusers' own DDIM |
| DDPM, Euler, Heun, DPM-Solver (multistep, singlestep), LCM, TCD, any scheduler whose `set_timesteps` takes `timesteps=` | native: `timesteps=` to the pipeline, or, where its `__call__` has no such argument (HunyuanDiT), the scheduler pinned to them |
| flow matching: `FlowMatchEulerDiscreteScheduler` (SD3, Flux, AuraFlow, Lumina 2), `DPMSolverMultistepScheduler` with `use_flow_sigmas` (Sana) | pinned: a scheduler whose `set_timesteps` runs as the pipeline calls it (so Flux's resolution shift `mu` and Sana's flow shift are set as usual) and then keeps the given timesteps and their sigmas. Their `timesteps=` cannot do it: FlowMatch shifts given sigmas again, flow DPM-Solver rebuilds its sigmas from `num_inference_steps`. The sigma of a kept timestep is read from the pipeline's own schedule of the pool it was kept from (`pool=`, exact); without a pool, flow-match Euler takes `t / T` (within one float32 rounding of the scheduler's own) and flow DPM-Solver, whose timesteps are rounded, refuses |
| PNDM, LMS, Euler ancestral, UniPC, other flow schedulers and the rest | unsupported: `TimestepError` names the scheduler and suggests DDIM |

>>> with sampling_at(pipe, [999, 749, 374, 124]) as kwargs:   # doctest: +SKIP
...     images = pipe(prompts, **kwargs).images                  # kwargs: timesteps= or num_inference_steps=
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

from mpsearch.pipelines.capture import Recording, record

GROUPINGS = ("uniform", "quad")


class TimestepError(ValueError):
    """Timesteps a scheduler cannot sample at, or that are not a valid schedule."""


def is_flow(scheduler: Any) -> bool:
    """Whether `scheduler` samples flow matching (timesteps are `sigma · T`, sampling starts at `t = T`):
    the FlowMatch schedulers, and DPM-Solver with `use_flow_sigmas` (Sana)."""
    return type(scheduler).__name__.startswith("FlowMatch") or bool(getattr(scheduler.config, "use_flow_sigmas", False))


def _number(t: Any) -> int | float:
    v = float(t)
    return int(v) if v.is_integer() else v


def check_timesteps(timesteps: Sequence[int | float], num_train_timesteps: int = 1000, *,
                    flow: bool = False) -> list[int | float]:  # fmt: skip
    """`timesteps` as numbers (whole ones as ints), checked: non-empty, strictly decreasing, within
    `[0, num_train_timesteps)`, or `[0, num_train_timesteps]` for flow matching (whose first step is `t = T`)."""
    ts = [_number(t) for t in timesteps]
    if not ts:
        raise TimestepError("no timesteps to sample at")
    if any(b >= a for a, b in zip(ts, ts[1:], strict=False)):
        raise TimestepError(f"timesteps must be strictly decreasing (the sampling order), got {ts}")
    if ts[0] > num_train_timesteps or (ts[0] == num_train_timesteps and not flow) or ts[-1] < 0:
        bound = "]" if flow else ")"
        raise TimestepError(f"timesteps must lie in [0, {num_train_timesteps}{bound}, got {ts}")
    return ts


def step_indices(known: Sequence[int | float], values: Sequence[int | float]) -> list[int | None]:
    """The step of each timestep in `values` among `known` (the timesteps a denoiser gets at each step,
    as a pipeline passes them: integers, or fractions of `T` for Flux): the nearest, if it is closer than
    half the gap to its neighbours and than 0.5 % (half-precision pipelines round what they pass); else None."""
    k = np.asarray([float(v) for v in known], dtype=np.float64)
    if not len(k):
        return [None] * len(values)
    order = np.sort(k)
    gaps = np.diff(order)
    half_gap = float(gaps.min()) / 2 if len(gaps) else math.inf
    out: list[int | None] = []
    for v in values:
        d = np.abs(k - float(v))
        i = int(d.argmin())
        out.append(i if d[i] <= min(half_gap, 5e-3 * max(abs(k[i]), 1.0)) else None)
    return out


class KeptStepsDDIMScheduler(DDIMScheduler):
    """`DDIMScheduler` that also accepts `set_timesteps(timesteps=[...])`; each step then goes to the next
    given timestep (the last one to `final_alpha_cumprod`, as DDIM's own last step). Without `timesteps`
    it is DDIM unchanged."""

    _next: dict[int, int] | None = None

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      timesteps: Sequence[int] | None = None) -> None:  # fmt: skip
        if timesteps is None:
            self._next = None
            return super().set_timesteps(num_inference_steps, device)
        if num_inference_steps is not None:
            raise TimestepError("pass num_inference_steps or timesteps, not both")
        ts = check_timesteps(timesteps, self.config.num_train_timesteps)
        self.num_inference_steps = len(ts)
        self.timesteps = torch.tensor(ts, dtype=torch.int64, device=device)
        self._next = dict(zip(ts, [*ts[1:], -1], strict=True))

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator: torch.Generator | None = None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True):  # fmt: skip
        if self._next is None:
            return super().step(model_output, timestep, sample, eta, use_clipped_model_output, generator,
                                variance_noise, return_dict)  # fmt: skip
        # DDIMScheduler.step (diffusers 0.42) with the previous timestep taken from the kept list
        t = int(timestep)
        if t not in self._next:
            raise TimestepError(f"timestep {t} is not one of the kept timesteps {list(self._next)}")
        prev = self._next[t]
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod
        b_t = 1 - a_t
        kind = self.config.prediction_type
        if kind == "epsilon":
            x0, eps = (sample - b_t**0.5 * model_output) / a_t**0.5, model_output
        elif kind == "sample":
            x0 = model_output
            eps = (sample - a_t**0.5 * x0) / b_t**0.5
        elif kind == "v_prediction":
            x0 = a_t**0.5 * sample - b_t**0.5 * model_output
            eps = a_t**0.5 * model_output + b_t**0.5 * sample
        else:
            raise ValueError(f"prediction_type {kind!r} must be one of epsilon, sample, v_prediction")
        if self.config.thresholding:
            x0 = self._threshold_sample(x0)
        elif self.config.clip_sample:
            x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
        std = eta * self._get_variance(t, prev) ** 0.5
        if use_clipped_model_output:
            eps = (sample - a_t**0.5 * x0) / b_t**0.5
        prev_sample = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * eps
        if eta > 0:
            if variance_noise is not None and generator is not None:
                raise ValueError("pass generator or variance_noise, not both")
            if variance_noise is None:
                variance_noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                              dtype=model_output.dtype)  # fmt: skip
            prev_sample = prev_sample + std * variance_noise
        if not return_dict:
            return prev_sample, x0
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)


PINNABLE = ("FlowMatchEulerDiscreteScheduler", "DPMSolverMultistepScheduler")  # flow schedulers with sigma tables


def native(scheduler: Any) -> bool:
    """Whether the scheduler's own `set_timesteps` takes `timesteps=` (custom schedules) and honours them:
    not a flow-matching one (FlowMatch shifts the sigmas of given timesteps again)."""
    return "timesteps" in inspect.signature(scheduler.set_timesteps).parameters and not is_flow(scheduler)


def kept_scheduler(scheduler: Any) -> Any:
    """A scheduler like `scheduler` (same config) that can sample at given timesteps: itself when
    `set_timesteps` takes `timesteps=` or it is a flow scheduler `sampling_at` pins (see the table above), a
    `KeptStepsDDIMScheduler` for DDIM; `TimestepError` otherwise."""
    if native(scheduler) or (is_flow(scheduler) and type(scheduler).__name__ in PINNABLE):
        return scheduler
    if type(scheduler) is DDIMScheduler:
        return KeptStepsDDIMScheduler.from_config(scheduler.config)
    name = type(scheduler).__name__
    raise TimestepError(
        f"{name} cannot sample at chosen timesteps (its set_timesteps has no timesteps= and its steps assume an "
        "evenly spaced schedule). Supported: DDIM, DDPM, Euler, Heun, DPM-Solver (flow sigmas too), LCM, TCD, "
        "FlowMatchEuler. Switch the pipeline, e.g. pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config), "
        "and profile it that way")


def pinned_scheduler(scheduler: Any, timesteps: Sequence[int | float], sigmas: Sequence[float] | None = None) -> Any:
    """A scheduler like `scheduler` whose `set_timesteps(...)`, however the pipeline calls it, samples at
    `timesteps`: through `timesteps=` where the scheduler takes them (`kept_scheduler`), else (flow
    matching) by running the pipeline's own call and then keeping `timesteps` with `sigmas`. Without
    `sigmas`: those of the scheduler's own schedule with the fewest steps that holds every kept timestep
    (exact for schedules the pipeline leaves to the scheduler: SD3, AuraFlow, Sana), else (Flux, Lumina 2,
    whose pipelines pass their own sigmas) `t / T`, which a flow-match timestep is up to one float32 rounding."""
    base = kept_scheduler(scheduler)
    ts = list(timesteps)
    flow = not native(base) and not isinstance(base, KeptStepsDDIMScheduler)
    if sigmas is not None and len(sigmas) != len(ts):
        raise TimestepError(f"{len(ts)} timesteps but {len(sigmas)} sigmas")

    @functools.wraps(type(base).set_timesteps)  # its signature: pipelines check it for sigmas= / timesteps=
    def set_timesteps(self, *args, **kwargs) -> None:
        device = kwargs.get("device")
        if not flow:
            return type(base).set_timesteps(self, timesteps=ts, device=device)
        type(base).set_timesteps(self, *args, **kwargs)  # state the pipeline's own call sets (e.g. Flux's mu)
        sig = sigmas if sigmas is not None else _own_sigmas(self, ts, kwargs.get("mu"))
        self.timesteps = torch.tensor(ts, dtype=self.timesteps.dtype, device=self.timesteps.device)
        last = self.sigmas[-1:].to(torch.float32)
        self.sigmas = torch.cat([torch.tensor(sig, dtype=torch.float32, device=last.device), last])
        self.num_inference_steps = len(ts)
        self._step_index, self._begin_index = None, None

    cls = type(f"Pinned{type(base).__name__}", (type(base),), {"set_timesteps": set_timesteps})
    return cls.from_config(base.config)


def _own_sigmas(scheduler: Any, ts: list[int | float], mu: float | None) -> list[float]:
    """Sigmas of `ts` in the scheduler's own schedule with the fewest steps that holds them all; else `t / T`
    (flow-match Euler) or `TimestepError` (flow DPM-Solver, whose rounded timesteps do not give their sigma)."""
    import copy

    probe = copy.deepcopy(scheduler)
    cls = type(scheduler).__mro__[1]  # the scheduler's own class, under the pinned one
    extra = {"mu": mu} if mu is not None else {}
    for n in range(len(ts), scheduler.config.num_train_timesteps + 1):
        cls.set_timesteps(probe, num_inference_steps=n, **extra)
        table = {_number(t): float(s) for t, s in zip(probe.timesteps, probe.sigmas, strict=False)}
        if all(t in table for t in ts):
            return [table[t] for t in ts]
    if type(scheduler).__name__ != "PinnedFlowMatchEulerDiscreteScheduler":
        raise TimestepError(f"{cls.__name__}: no schedule of its own holds the timesteps {ts}; pass pool= (the "
                            "plan's pool) to read their sigmas")  # fmt: skip
    T = scheduler.config.num_train_timesteps
    return [float(np.float32(float(t) / T)) for t in ts]


def schedule_table(pipe: Any, steps: int, resolution: int | None = None) -> dict[int | float, float]:
    """`{timestep: sigma}` of the pipeline's own `steps`-step schedule at `resolution` (as its `__call__`
    sets up its scheduler: Flux's `mu` depends on the image size)."""
    rec = _record_schedule(pipe, steps, resolution)
    sigmas = getattr(rec.scheduler, "sigmas", None)
    if sigmas is None:
        raise TimestepError(f"{type(rec.scheduler).__name__} has no sigmas to keep timesteps by")
    return {_number(t): float(s) for t, s in zip(rec.scheduler.timesteps, sigmas, strict=False)}


def _record_schedule(pipe: Any, steps: int, resolution: int | None) -> Recording:
    call = {"prompt": "", "num_inference_steps": steps, "guidance_scale": 1.0, "output_type": "latent"}
    if resolution:
        call.update(height=resolution, width=resolution)
    rec = record(pipe, call, until="set_timesteps")
    if rec.scheduler is None:
        raise TimestepError(f"{type(pipe).__name__}.__call__ never set up its scheduler")
    return rec


@contextlib.contextmanager
def sampling_at(pipe: Any, timesteps: Sequence[int | float], *, pool: Sequence[int | float] | int | None = None,
                resolution: int | None = None) -> Iterator[dict[str, Any]]:  # fmt: skip
    """Context: `pipe` samples at `timesteps` (its scheduler swapped while inside); yields the keyword
    arguments for the pipeline call: `{"timesteps": [...]}` where its `__call__` and scheduler take them,
    else `{"num_inference_steps": n}` with the scheduler pinned (`pinned_scheduler`). `pool`: the schedule
    (or its number of steps) the timesteps were kept from, at `resolution`: flow schedulers read the
    exact sigmas there."""
    original = pipe.scheduler
    ts = check_timesteps(timesteps, original.config.num_train_timesteps, flow=is_flow(original))
    if native(original) or type(original) is DDIMScheduler:
        if "timesteps" in inspect.signature(pipe.__call__).parameters:
            pipe.scheduler = kept_scheduler(original)
            try:
                yield {"timesteps": ts}
            finally:
                pipe.scheduler = original
            return
    sigmas = None
    if is_flow(original) and pool is not None:
        table = schedule_table(pipe, pool if isinstance(pool, int) else len(pool), resolution)
        missing = [t for t in ts if t not in table]
        if missing:
            raise TimestepError(f"timesteps {missing} are not in the pipeline's {len(table)}-step schedule "
                                f"{list(table)} at {resolution or 'its default'} px")  # fmt: skip
        sigmas = [table[t] for t in ts]
    pipe.scheduler = pinned_scheduler(original, ts, sigmas)
    try:
        yield {"num_inference_steps": len(ts)}
    finally:
        pipe.scheduler = original


def schedule(model: Any, steps: int, resolution: int | None = None) -> list[int | float]:
    """The timesteps of a `steps`-step schedule: a pipeline's own (as its `__call__` sets up its scheduler,
    at `resolution`), or a bare scheduler's `set_timesteps(steps)` (on a copy; the scheduler is untouched)."""
    import copy

    if hasattr(model, "components"):
        return [_number(t) for t in _record_schedule(model, steps, resolution).scheduler.timesteps]
    s = copy.deepcopy(model)
    try:
        s.set_timesteps(steps)
    except ValueError as e:  # e.g. flow matching with dynamic shifting needs the pipeline's mu
        raise TimestepError(f"{type(model).__name__}: {e}; pass the pipeline, whose __call__ sets it up") from None
    return [_number(t) for t in s.timesteps]


def group_steps(pool: Sequence[int], n: int, method: str = "uniform",
                num_train_timesteps: int = 1000) -> list[tuple[int, int]]:  # fmt: skip
    """Split a pool of timesteps (in sampling order, decreasing) into `n` groups of consecutive positions,
    as half-open index ranges `[start, end)`; the search keeps one timestep per group.

    `uniform`: blocks of equal size (±1), so the first step of each block is the evenly spaced schedule.
    `quad`: TMPQ-DM's quadratic groups of the training timesteps, `s_i = ⌊(i·√(0.8·T)/(n−1))²⌋`, fine near
    t = 0; every group must hold a timestep of the pool (a coarse pool cannot: use a finer one).

    >>> group_steps([999, 874, 749, 624, 499, 374, 249, 124], 4)
    [(0, 2), (2, 4), (4, 6), (6, 8)]
    """
    pool = check_timesteps(pool, num_train_timesteps, flow=True)  # a flow pool starts at t = T
    P = len(pool)
    if not 1 <= n <= P:
        raise TimestepError(f"cannot keep {n} of {P} timesteps")
    if method == "uniform":
        edges = [math.floor(i * P / n) for i in range(n + 1)]
        return list(zip(edges[:-1], edges[1:], strict=False))
    if method != "quad":
        raise TimestepError(f"step grouping must be one of {GROUPINGS}, got {method!r}")
    T = num_train_timesteps
    if n == 1:
        return [(0, P)]
    cuts = [math.floor((i * math.sqrt(0.8 * T) / (n - 1)) ** 2) for i in range(1, n)]
    edges = [0, *cuts, T]  # ascending timestep ranges; group k = [edges[k], edges[k+1])
    out = []
    for lo, hi in reversed(list(zip(edges[:-1], edges[1:], strict=False))):  # sampling order: noisiest group first
        idx = [i for i, t in enumerate(pool) if lo <= t < hi or t == hi == T]  # flow pools hold t = T
        if not idx:
            raise TimestepError(f"TMPQ-DM's quadratic group [{lo}, {hi}) holds none of the {P} pool timesteps "
                                f"{pool}: use a finer pool (more steps) or uniform grouping")
        out.append((idx[0], idx[-1] + 1))
    return out


def even_steps(groups: Sequence[tuple[int, int]]) -> tuple[int, ...]:
    """The first position of every group: with uniform groups, the evenly spaced schedule (for DDIM with
    trailing spacing and a pool of `k·n` steps, exactly the scheduler's own `n`-step schedule)."""
    return tuple(a for a, _ in groups)
