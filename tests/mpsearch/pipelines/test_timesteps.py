"""Sampling at kept timesteps equals the scheduler's own sampling there; step groups; clear errors."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, PNDMScheduler

from mpsearch.pipelines.generate import generate
from mpsearch.pipelines.timesteps import (
    KeptStepsDDIMScheduler,
    TimestepError,
    even_steps,
    group_steps,
    kept_scheduler,
    sampling_at,
    schedule,
)
from mpsearch.planning.plan import Plan

PROMPT = ["a red circle at the top left"]


def _sample(pipe, **kw):
    return pipe(PROMPT, generator=torch.Generator().manual_seed(0), output_type="pt", guidance_scale=2.0, **kw).images


@pytest.mark.parametrize("cls", [DDIMScheduler, EulerDiscreteScheduler, DDPMScheduler])
def test_kept_timesteps_equal_the_schedulers_own_schedule(tiny_pipe, cls):
    """Keeping every other step of the 8-step schedule is the scheduler's own 4-step sampling, exactly."""
    pipe = tiny_pipe
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    pool, own = schedule(pipe.scheduler, 8), schedule(pipe.scheduler, 4)
    assert pool[::2] == own == [999, 749, 499, 249]
    with sampling_at(pipe, pool[::2]) as kw:
        kept = _sample(pipe, **kw)
    assert type(pipe.scheduler) is cls  # restored
    assert torch.equal(kept, _sample(pipe, num_inference_steps=4))


def test_ddim_steps_to_the_next_kept_timestep():
    """Any decreasing subset: each step is DDIM's update (eq. 12) from t to the next kept timestep."""
    s = KeptStepsDDIMScheduler.from_config(DDIMScheduler(timestep_spacing="trailing", set_alpha_to_one=False,
                                                                   clip_sample=False).config)
    s.set_timesteps(timesteps=[999, 749, 374, 124])
    x, eps = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)).unbind(0)
    for t, prev in ((749, 374), (124, None)):
        a_t = s.alphas_cumprod[t]
        a_p = s.alphas_cumprod[prev] if prev is not None else s.final_alpha_cumprod
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        want = a_p.sqrt() * x0 + (1 - a_p).sqrt() * eps
        torch.testing.assert_close(s.step(eps, t, x, return_dict=False)[0], want)
    with pytest.raises(TimestepError, match="not one of the kept"):
        s.step(eps, 500, x)
    s.set_timesteps(4)  # plain DDIM again
    assert s.timesteps.tolist() == [999, 749, 499, 249] and s._next is None


def test_unsupported_scheduler_and_bad_timesteps_are_clear_errors(tiny_pipe):
    pndm = PNDMScheduler.from_config(tiny_pipe.scheduler.config)
    with pytest.raises(TimestepError, match="PNDMScheduler cannot sample at chosen timesteps.*DDIMScheduler.from_config"):
        kept_scheduler(pndm)
    assert type(kept_scheduler(EulerDiscreteScheduler())) is EulerDiscreteScheduler
    with pytest.raises(TimestepError, match="strictly decreasing"):
        with sampling_at(tiny_pipe, [249, 999]):
            pass
    with pytest.raises(TimestepError, match=r"\[0, 1000\)"):
        with sampling_at(tiny_pipe, [1000, 5]):
            pass


def test_step_groups():
    pool = [999, 874, 749, 624, 499, 374, 249, 124]
    groups = group_steps(pool, 4)
    assert groups == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert [pool[i] for i in even_steps(groups)] == [999, 749, 499, 249]
    assert group_steps(pool, 3) == [(0, 2), (2, 5), (5, 8)]
    # TMPQ-DM's quadratic groups over all 1000 timesteps, noisiest first: [800, 1000), [450, 800), ...
    fine = list(range(999, -1, -1))
    assert group_steps(fine, 5, "quad") == [(0, 200), (200, 550), (550, 800), (800, 950), (950, 1000)]
    with pytest.raises(TimestepError, match=r"quadratic group \[0, 88\) holds none"):
        group_steps(pool, 4, "quad")
    with pytest.raises(TimestepError, match="cannot keep 9 of 8"):
        group_steps(pool, 9)


def test_generate_samples_at_the_given_or_the_plans_timesteps(tiny_pipe):
    seen = []
    tiny_pipe.unet.register_forward_pre_hook(lambda m, args: seen.append(int(args[1].reshape(-1)[0])))
    generate(tiny_pipe, PROMPT, timesteps=[999, 624, 124], guidance=1.0)
    assert seen == [999, 624, 124]
    seen.clear()
    plan = Plan({}, kept_timesteps=[874, 374])
    tiny_pipe.mpsearch_plan = plan  # what load_quantized attaches
    generate(tiny_pipe, PROMPT, guidance=1.0)
    assert seen == [874, 374]
    seen.clear()
    generate(tiny_pipe, PROMPT, steps=2, guidance=1.0)  # explicit steps win
    assert seen == [999, 499]
    with pytest.raises(ValueError, match="steps or timesteps"):
        generate(tiny_pipe, PROMPT, steps=2, timesteps=[999])


def test_flow_schedules_start_at_T_and_unsupported_flow_schedulers_are_named():
    from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler

    from mpsearch.pipelines.timesteps import check_timesteps, is_flow

    assert check_timesteps([1000.0, 750.5, 2.0], flow=True) == [1000, 750.5, 2]
    with pytest.raises(TimestepError, match=r"\[0, 1000\]"):
        check_timesteps([1001, 5], flow=True)
    flow = FlowMatchEulerDiscreteScheduler(shift=3.0)
    assert is_flow(flow) and kept_scheduler(flow) is flow
    with pytest.raises(TimestepError, match="FlowMatchHeunDiscreteScheduler cannot sample at chosen timesteps"):
        kept_scheduler(FlowMatchHeunDiscreteScheduler())
    with pytest.raises(TimestepError, match="mu"):  # Flux's dynamic shift: only the pipeline sets it up
        schedule(FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True), 4)


def test_pinned_flow_scheduler_keeps_the_schedules_own_sigmas():
    """Kept timesteps of a static-shift schedule (SD3's) get exactly that schedule's sigmas, whatever the
    pipeline then asks `set_timesteps` for; a timestep of no own schedule falls back to t / T."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from mpsearch.pipelines.timesteps import pinned_scheduler

    own = FlowMatchEulerDiscreteScheduler(shift=3.0)
    own.set_timesteps(8)
    kept = [float(t) for t in own.timesteps[::3]]
    pinned = pinned_scheduler(own, kept)
    pinned.set_timesteps(num_inference_steps=3, device="cpu")
    assert pinned.timesteps.tolist() == kept
    assert torch.equal(pinned.sigmas, torch.cat([own.sigmas[:-1][::3], own.sigmas[-1:]]))
    odd = pinned_scheduler(own, [1000.0, 333.25])
    odd.set_timesteps(2)
    assert odd.sigmas.tolist() == [1.0, pytest.approx(0.33325), 0.0]


def test_steps_are_matched_by_value():
    from mpsearch.pipelines.timesteps import step_indices

    assert step_indices([999, 749, 499], [749, 999, 500, 13]) == [1, 0, 2, None]  # 500: within 0.5 % of 499
    assert step_indices([1.0, 0.75, 0.5], [0.7490234375, 1.0, 0.6]) == [1, 0, None]  # fp16-rounded t / 1000
