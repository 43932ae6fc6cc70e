"""PixArt-Σ end to end: PixArt-α's adapter with the Σ pipeline (300 T5 tokens, no size conditions),
learned sigma, DPM-Solver++, MixDQ's cross-attention rule, and every command."""

import pytest
import torch

from mpsearch.model import inventory
from mpsearch.pipelines import adapter_for
from mpsearch.profiling import calibration as cal
from tests.conftest import build_tiny_pixart_sigma_pipeline
from tests.mpsearch.pipelines import family_checks as fc

LAYERS = r"transformer_blocks\.0\.(attn2\.to_v|ff\.net\.2)$"


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pixart_sigma_pipeline()


def test_replay_learned_sigma_and_text_length(pipe):
    assert adapter_for(pipe).name == "pixart"
    ref = cal.reference(pipe, [fc.PROMPT], steps=2, guidance=3.0)
    assert ref.call["guidance"] == "cfg_batch" and ref.cond["encoder_hidden_states"].shape[1] == 300
    assert ref.outputs.shape[2] == 4  # the noise half of 8 output channels
    own = fc._latents(pipe, ref.resolution, num_inference_steps=2, latents=cal.initial_noise(pipe, [0], ref.resolution))
    assert torch.equal(ref.latents[-1], own)
    inv = inventory(pipe)
    assert inv.text_len == 300 and inv["transformer_blocks.0.attn2.to_k"].stream == "text"
    assert {l.group for l in inv if ".attn2." in l.name or ".ff." in l.name} == {"content"}


def test_every_command(pipe, tmp_path):
    fc.check_every_command(pipe, tmp_path, LAYERS, units=2, fresh=build_tiny_pixart_sigma_pipeline)
