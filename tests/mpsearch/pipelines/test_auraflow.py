"""AuraFlow end to end: joint and single blocks, UMT5 with register tokens (text stream, content), the
transformer given t / 1000, flow matching, and every command."""

import pytest
import torch

from mpsearch.model import inventory
from mpsearch.profiling import calibration as cal
from tests.conftest import build_tiny_auraflow_pipeline
from tests.mpsearch.pipelines import family_checks as fc

LAYERS = r"(joint_transformer_blocks\.0\.attn\.(to_k|add_k_proj)|single_transformer_blocks\.0\.ff\.linear_1)$"


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_auraflow_pipeline()


def test_replay_and_streams(pipe):
    ref = cal.reference(pipe, [fc.PROMPT], steps=2, guidance=3.0)
    assert ref.call["guidance"] == "cfg_batch" and ref.call["timestep_map"] == {"divide": 1000, "flip": False}
    own = fc._latents(pipe, ref.resolution, num_inference_steps=2, latents=cal.initial_noise(pipe, [0], ref.resolution))
    assert torch.equal(ref.latents[-1], own)
    inv = inventory(pipe)
    assert inv["joint_transformer_blocks.0.attn.add_k_proj"].stream == "text"  # text plus register tokens
    assert inv["single_transformer_blocks.0.attn.to_q"].stream == "joint"
    assert {l.name for l in inv if l.group == "content"} == {l.name for l in inv if l.stream == "text"}


def test_every_command(pipe, tmp_path):
    fc.check_every_command(pipe, tmp_path, LAYERS, units=4, fresh=build_tiny_auraflow_pipeline)
