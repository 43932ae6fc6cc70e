"""LCM / TCD UNets end to end: the guidance embedding (`timestep_cond`) instead of a CFG batch, read from
the pipeline at any guidance (mpsearch used to assume a CFG batch for guidance > 1 and failed), LCM's
stochastic steps replayed with per-prompt noise, and every command."""

import pytest
import torch
from diffusers import TCDScheduler

from mpsearch.pipelines import adapter_for
from mpsearch.profiling import calibration as cal
from tests.conftest import build_tiny_lcm_pipeline
from tests.mpsearch.pipelines import family_checks as fc

LAYERS = r"^(down_blocks\.0\.attentions\.0\.transformer_blocks\.0\.attn2\.to_k|conv_out)$"


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_lcm_pipeline()


def test_guidance_embedding_not_a_cfg_batch(pipe):
    assert adapter_for(pipe).name == "lcm"
    ref = cal.reference(pipe, [fc.PROMPT], steps=2, guidance=8.5)
    assert ref.call["guidance"] == "single" and ref.rows_per_step == 1
    assert ref.cond["timestep_cond"].shape == (1, 16)  # the embedding of w = guidance - 1
    other = cal.reference(pipe, [fc.PROMPT], steps=2, guidance=2.0)
    assert not torch.equal(other.cond["timestep_cond"], ref.cond["timestep_cond"])
    _, den = cal.find_denoiser(pipe)
    with torch.no_grad():  # the replayed call is the pipeline's own first call
        first = den(**ref.inputs(ref.rows_of([0])), return_dict=False)[0]
    assert torch.equal(first, ref.outputs[0])


def test_tcd_scheduler_is_sampled_too(pipe):
    pipe.scheduler, lcm = TCDScheduler.from_config(pipe.scheduler.config), pipe.scheduler
    try:
        ref = cal.reference(pipe, [fc.PROMPT], steps=2, guidance=8.5)
        again = cal.denoise(pipe, ref, ref.latents[1].clone(), start=1)  # resumed mid-way: the same noise
        assert torch.equal(again, ref.latents[-1])
    finally:
        pipe.scheduler = lcm


def test_every_command(pipe, tmp_path):
    fc.check_every_command(pipe, tmp_path, LAYERS, units=7, fresh=build_tiny_lcm_pipeline)  # as SD's UNet: 4 Transformer2D, 3 resnets
