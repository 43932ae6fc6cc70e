"""Recording a pipeline's own `__call__` (`mpsearch/pipelines/capture.py`): the denoiser calls of its first
step, the schedule it set, and the pipeline left exactly as it was."""

import numpy as np
import pytest
import torch

from mpsearch.pipelines.capture import call_kwargs, plain, record
from tests.conftest import build_tiny_lumina2_pipeline, build_tiny_pipeline

CALL = dict(prompt=["a red circle"], guidance_scale=3.0, num_inference_steps=2, height=16, width=16)


def test_plain_makes_json_able_data():
    assert plain(torch.tensor([1, 2])) == [1, 2]
    got = plain(np.float32(0.5))
    assert got == 0.5 and type(got) is float
    assert plain((np.array([1.5]), torch.tensor(3), [np.int64(4)])) == [[1.5], 3, [4]]
    assert plain("trailing") == "trailing" and plain(None) is None


def test_call_kwargs_keep_what_the_pipeline_accepts(tiny_pipe):
    assert call_kwargs(tiny_pipe, {"prompt": "a", "max_sequence_length": 9, "bogus": 1}) == {"prompt": "a"}


def test_one_cfg_batch_call_and_the_schedule(tiny_pipe):
    """Guidance 3 with SD: one call on a batch of 2 (uncond, cond), at the first trailing DDIM timestep,
    on the latents given (DDIM's initial sigma is 1); the schedule as the pipeline asked for it."""
    latents = torch.randn(1, 4, 8, 8)
    rec = record(tiny_pipe, {**CALL, "latents": latents})
    assert len(rec.calls) == 1
    call = rec.calls[0]
    assert torch.equal(call["sample"], torch.cat([latents, latents]))
    assert rec.schedule == {"num_inference_steps": 2}
    assert rec.scheduler.timesteps.tolist() == [999, 499] and int(call["timestep"]) == 999
    uncond, cond = call["encoder_hidden_states"]
    assert not torch.equal(uncond, cond)  # the empty prompt's states, then the prompt's


def test_no_cfg_is_one_call_on_one_row(tiny_pipe):
    rec = record(tiny_pipe, {**CALL, "guidance_scale": 1.0})
    assert len(rec.calls) == 1 and rec.calls[0]["sample"].shape == (1, 4, 8, 8)


def test_separate_guidance_is_two_calls():
    """Lumina 2 calls its transformer twice per step (cond, then uncond), each on one row."""
    pipe = build_tiny_lumina2_pipeline()
    rec = record(pipe, {**CALL, "height": 64, "width": 64})
    assert [c["hidden_states"].shape[0] for c in rec.calls] == [1, 1]
    assert not torch.equal(rec.calls[0]["encoder_hidden_states"], rec.calls[1]["encoder_hidden_states"])


def test_until_set_timesteps_stops_before_the_denoiser(tiny_pipe):
    rec = record(tiny_pipe, CALL, until="set_timesteps")
    assert rec.calls == [] and rec.schedule == {"num_inference_steps": 2}
    assert rec.scheduler.timesteps.tolist() == [999, 499]
    with pytest.raises(ValueError, match="until must be 'step' or 'set_timesteps', got 'end'"):
        record(tiny_pipe, CALL, until="end")


def test_the_pipeline_is_left_as_it_was(tiny_pipe):
    """Its own scheduler is never set up (a copy is), the copy is a plain scheduler again, the hook is gone:
    the pipeline then samples exactly as a pipeline that was never recorded."""
    sched = tiny_pipe.scheduler
    rec = record(tiny_pipe, CALL)
    assert tiny_pipe.scheduler is sched and sched.num_inference_steps is None
    assert rec.scheduler is not sched
    assert "set_timesteps" not in vars(rec.scheduler) and "step" not in vars(rec.scheduler)
    assert not tiny_pipe.unet._forward_pre_hooks

    def latents(pipe):
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            return pipe(**CALL, output_type="latent", generator=gen).images

    assert torch.equal(latents(tiny_pipe), latents(build_tiny_pipeline()))
