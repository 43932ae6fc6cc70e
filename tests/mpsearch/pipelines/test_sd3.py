"""SD3 / SD3.5 end to end on tiny pipelines: CFG batch captured, flow-matching schedule replayed exactly,
content = the measured text stream (SD3.5's dual-attention `attn2` is image self-attention: quality), joint
blocks as pruning units, and every command."""

import pytest
import torch

from mpsearch.model import inventory
from mpsearch.pipelines import adapter_for
from mpsearch.profiling import calibration as cal
from tests.conftest import build_tiny_sd3_pipeline
from tests.mpsearch.pipelines import family_checks as fc

LAYERS = r"transformer_blocks\.0\.(attn\.(to_q|add_k_proj)|ff_context\.net\.2)|proj_out"


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_sd3_pipeline()


def test_replay_is_the_pipelines_own_trajectory(pipe):
    ref = cal.reference(pipe, [fc.PROMPT], steps=2, guidance=3.0)
    assert ref.call["guidance"] == "cfg_batch" and ref.rows_per_step == 2
    assert set(ref.cond) == {"encoder_hidden_states", "pooled_projections"} and not ref.shared
    own = fc._latents(pipe, ref.resolution, num_inference_steps=2, latents=cal.initial_noise(pipe, [0], ref.resolution))
    assert torch.equal(ref.latents[-1], own)
    assert ref.timesteps[0] == 1000  # flow matching starts at t = T (sigma 1)


def test_groups_follow_the_measured_text_stream():
    """The text stream (CLIP+T5 tokens) is content; SD3.5's second attention (`attn2`) takes image tokens
    and is quality, which MixDQ's name rule would have called content."""
    inv = inventory(build_tiny_sd3_pipeline(dual_attention=True))
    stream = {l.name: l.stream for l in inv}
    for name in ("context_embedder", "transformer_blocks.0.attn.add_k_proj", "transformer_blocks.0.ff_context.net.2"):
        assert stream[name] == "text" and inv[name].group == "content"
    for name in ("transformer_blocks.0.attn2.to_k", "transformer_blocks.0.attn.to_q", "transformer_blocks.0.ff.net.2"):
        assert stream[name] == "image" and inv[name].group == "quality"
    assert {l.group for l in inv if l.stream != "text"} == {"quality"}
    assert "joint attention" in inv.group_note and adapter_for(build_tiny_sd3_pipeline()).bos_layers(
        build_tiny_sd3_pipeline().transformer) == []


def test_every_command(pipe, tmp_path):
    fc.check_every_command(pipe, tmp_path, LAYERS, units=2, fresh=build_tiny_sd3_pipeline)
