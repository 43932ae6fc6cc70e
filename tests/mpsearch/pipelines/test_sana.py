"""Sana end to end: linear attention and a convolutional feed-forward (depth-wise Conv2d layers quantized
like any other), Gemma text with a mask, a DC-AE, DPM-Solver++ on flow sigmas whose rounded timesteps get
their sigmas from the scheduler's own schedule when kept, and every command."""

import pytest
import torch

from mpsearch.model import inventory
from mpsearch.pipelines.timesteps import pinned_scheduler, schedule
from mpsearch.profiling import calibration as cal
from tests.conftest import build_tiny_sana_pipeline
from tests.mpsearch.pipelines import family_checks as fc

LAYERS = r"transformer_blocks\.0\.(attn2\.to_k|ff\.conv_depth)$"


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_sana_pipeline()


def test_replay_and_flow_dpm_solver(pipe):
    ref = cal.reference(pipe, [fc.PROMPT], steps=2, guidance=3.0)
    assert ref.call["guidance"] == "cfg_batch" and set(ref.cond) == {"encoder_hidden_states", "encoder_attention_mask"}
    own = fc._latents(pipe, ref.resolution, num_inference_steps=2, latents=cal.initial_noise(pipe, [0], ref.resolution))
    assert torch.equal(ref.latents[-1], own)
    pool = schedule(pipe, 6, ref.resolution)
    assert all(isinstance(t, int) for t in pool)  # flow sigmas, timesteps rounded to integers
    kept = pinned_scheduler(pipe.scheduler, pool[::3])
    kept.set_timesteps(2)
    own6 = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
    own6.set_timesteps(6)
    assert kept.timesteps.tolist() == pool[::3]
    assert torch.equal(kept.sigmas[:-1], own6.sigmas[:-1][::3])  # the pool's own sigmas, not t / T


def test_conv_feed_forward_is_quantizable(pipe):
    inv = inventory(pipe)
    depthwise = inv["transformer_blocks.0.ff.conv_depth"]
    assert depthwise.kind == "conv2d" and depthwise.in_channels == 1 and depthwise.stream == "image"
    assert inv["transformer_blocks.0.attn2.to_k"].stream == "text" and inv["transformer_blocks.0.attn2.to_k"].group == "content"


def test_every_command(pipe, tmp_path):
    fc.check_every_command(pipe, tmp_path, LAYERS, units=2, fresh=build_tiny_sana_pipeline)
