"""Run a pipeline's own `__call__` and record what it does before denoising: how it sets up its scheduler
and what it passes to its denoiser at the first step.

Every family's conditioning, guidance style and schedule are read from the pipeline itself this way, so
mpsearch never re-implements a pipeline's prompt encoding, size conditioning, latent packing or
timestep shifting (Flux's resolution-dependent `mu`, SD3's static shift, Sana's flow DPM-Solver).

- `record(pipe, call, until="step")`: the bound arguments of every denoiser call of the first
  denoising step (one call with a CFG batch, two with separate cond/uncond calls, one without CFG) and
  the scheduler as the pipeline set it up; the pipeline stops at its first `scheduler.step`.
- `record(pipe, call, until="set_timesteps")`: the schedule only (the pipeline stops right after
  `set_timesteps`, before any denoiser call).

The pipeline's own scheduler is never touched: a copy runs, and is returned set up.
"""

from __future__ import annotations

import copy
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mpsearch.pipelines.base import adapter_for


class _Stop(Exception):
    """Raised inside the pipeline's `__call__` to stop it where the recording ends."""


@dataclass
class Recording:
    """What a pipeline did: `calls` (bound denoiser arguments, in call order), `schedule` (the keyword
    arguments of its `set_timesteps` call, JSON-able) and `scheduler` (the copy it set up)."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    schedule: dict[str, Any] = field(default_factory=dict)
    scheduler: Any = None


def plain(value: Any) -> Any:
    """`value` as JSON-able data: arrays and tensors as lists, numpy scalars as Python numbers."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def call_kwargs(pipe: Any, wanted: dict[str, Any]) -> dict[str, Any]:
    """`wanted` restricted to what the pipeline's `__call__` accepts, plus its family's call options."""
    accepted = inspect.signature(pipe.__call__).parameters
    options = {**wanted, **adapter_for(pipe).call_options()}
    return {k: v for k, v in options.items() if k in accepted}


def record(pipe: Any, call: dict[str, Any], *, until: str = "step") -> Recording:
    """Run `pipe(**call)` (arguments it does not accept dropped) and record it up to `until`
    ("step": the first scheduler step; "set_timesteps": right after the schedule is set)."""
    if until not in ("step", "set_timesteps"):
        raise ValueError(f"until must be 'step' or 'set_timesteps', got {until!r}")
    _, den = adapter_for(pipe).find_denoiser(pipe)
    sig = inspect.signature(den.forward)
    rec = Recording()
    sched = copy.deepcopy(pipe.scheduler)
    set_timesteps, step = sched.set_timesteps, sched.step

    @functools.wraps(set_timesteps)
    def recording_set_timesteps(*args, **kwargs):
        bound = inspect.signature(set_timesteps).bind(*args, **kwargs).arguments
        out = set_timesteps(*args, **kwargs)
        rec.schedule = {k: plain(v) for k, v in bound.items() if k != "device"}
        rec.scheduler = sched
        if until == "set_timesteps":
            raise _Stop
        return out

    @functools.wraps(step)
    def stopping_step(*args, **kwargs):
        raise _Stop

    def hook(module, args, kwargs):
        rec.calls.append(dict(sig.bind(*args, **kwargs).arguments))

    sched.set_timesteps, sched.step = recording_set_timesteps, stopping_step
    handle = den.register_forward_pre_hook(hook, with_kwargs=True)
    original, pipe.scheduler = pipe.scheduler, sched
    try:
        with torch.no_grad():
            pipe(**call_kwargs(pipe, call))
    except _Stop:
        pass
    finally:
        handle.remove()
        pipe.scheduler = original
        del sched.set_timesteps, sched.step  # the copy is a plain scheduler again
    return rec
