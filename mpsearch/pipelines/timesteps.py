"""Sampling at a chosen subset of timesteps, and the step groups the timestep search keeps one step of.

A plan that keeps N of a model's timesteps (TMPQ-DM, `mpsearch.planning.steps`) must sample at exactly those
timesteps. diffusers schedulers differ here (read from their `set_timesteps`, diffusers 0.42):

| scheduler | how |
|---|---|
| DDIM (`DDIMScheduler`) | no `timesteps=` argument, and its `step` always goes `T // num_inference_steps` back; `KeptStepsDDIMScheduler` (below) steps to the next kept timestep instead: DDIM's update (eq. 12 of the paper) holds for any decreasing sub-sequence, and on the uniform-stride schedules diffusers makes (leading, trailing when `T % steps == 0`) it equals diffusers' own DDIM |
| DDPM, Euler, Heun, DPM-Solver (multistep, singlestep), LCM, TCD, any scheduler whose `set_timesteps` takes `timesteps=` | native |
| PNDM, LMS, Euler ancestral, UniPC, flow matching and the rest | unsupported: `TimestepError` names the scheduler and suggests DDIM |

>>> with sampling_at(pipe, [999, 749, 374, 124]) as kwargs:   # doctest: +SKIP
...     images = pipe(prompts, **kwargs).images
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from diffusers import DDIMScheduler
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor

GROUPINGS = ("uniform", "quad")


class TimestepError(ValueError):
    """Timesteps a scheduler cannot sample at, or that are not a valid schedule."""


def check_timesteps(timesteps: Sequence[int], num_train_timesteps: int = 1000) -> list[int]:
    """`timesteps` as ints, checked: non-empty, strictly decreasing, within `[0, num_train_timesteps)`."""
    ts = [int(t) for t in timesteps]
    if not ts:
        raise TimestepError("no timesteps to sample at")
    if any(b >= a for a, b in zip(ts, ts[1:], strict=False)):
        raise TimestepError(f"timesteps must be strictly decreasing (the sampling order), got {ts}")
    if ts[0] >= num_train_timesteps or ts[-1] < 0:
        raise TimestepError(f"timesteps must lie in [0, {num_train_timesteps}), got {ts}")
    return ts


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


def native(scheduler: Any) -> bool:
    """Whether the scheduler's own `set_timesteps` takes `timesteps=` (custom schedules)."""
    return "timesteps" in inspect.signature(scheduler.set_timesteps).parameters


def kept_scheduler(scheduler: Any) -> Any:
    """A scheduler like `scheduler` (same config) that can sample at given timesteps: itself when
    `set_timesteps` takes `timesteps=`, a `KeptStepsDDIMScheduler` for DDIM; `TimestepError` otherwise."""
    if native(scheduler):
        return scheduler
    if type(scheduler) is DDIMScheduler:
        return KeptStepsDDIMScheduler.from_config(scheduler.config)
    name = type(scheduler).__name__
    raise TimestepError(
        f"{name} cannot sample at chosen timesteps (its set_timesteps has no timesteps= and its steps assume an "
        "evenly spaced schedule). Supported: DDIM, DDPM, Euler, Heun, DPM-Solver, LCM, TCD. Switch the pipeline, "
        "e.g. pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config), and profile it that way")


@contextlib.contextmanager
def sampling_at(pipe: Any, timesteps: Sequence[int]) -> Iterator[dict[str, list[int]]]:
    """Context: `pipe` can sample at `timesteps` (its scheduler swapped for `kept_scheduler` while inside);
    yields the keyword arguments for the pipeline call, `{"timesteps": [...]}`."""
    ts = check_timesteps(timesteps, pipe.scheduler.config.num_train_timesteps)
    original = pipe.scheduler
    pipe.scheduler = kept_scheduler(original)
    try:
        yield {"timesteps": ts}
    finally:
        pipe.scheduler = original


def schedule(scheduler: Any, steps: int) -> list[int]:
    """The scheduler's own timesteps for `steps` sampling steps (on a copy; `scheduler` is untouched)."""
    import copy

    s = copy.deepcopy(scheduler)
    s.set_timesteps(steps)
    return [int(t) for t in s.timesteps]


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
    pool = check_timesteps(pool, num_train_timesteps)
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
        idx = [i for i, t in enumerate(pool) if lo <= t < hi]
        if not idx:
            raise TimestepError(f"TMPQ-DM's quadratic group [{lo}, {hi}) holds none of the {P} pool timesteps "
                                f"{pool}: use a finer pool (more steps) or uniform grouping")
        out.append((idx[0], idx[-1] + 1))
    return out


def even_steps(groups: Sequence[tuple[int, int]]) -> tuple[int, ...]:
    """The first position of every group: with uniform groups, the evenly spaced schedule (for DDIM with
    trailing spacing and a pool of `k·n` steps, exactly the scheduler's own `n`-step schedule)."""
    return tuple(a for a, _ in groups)
