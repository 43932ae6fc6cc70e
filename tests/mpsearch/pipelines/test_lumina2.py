"""Lumina 2 end to end: separate conditional and unconditional calls per step (read from the pipeline,
replayed as one batch), normalised guidance and the negated output as the pipeline does, the transformer
given 1 - t/1000, refiners measured as text / image streams (MixDQ's names mark nothing here), and every
command."""

import pytest
import torch

from mpsearch.model import DEFAULT_GROUP_RULES, classify, inventory
from mpsearch.profiling import calibration as cal
from tests.conftest import build_tiny_lumina2_pipeline
from tests.mpsearch.pipelines import family_checks as fc

LAYERS = r"(context_refiner\.0\.attn\.to_k|layers\.0\.feed_forward\.linear_1)$"


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_lumina2_pipeline()


def test_separate_calls_replayed_as_the_pipeline_combines_them(pipe):
    ref = cal.reference(pipe, [fc.PROMPT], steps=2, guidance=4.0)
    assert ref.call["guidance"] == "separate" and ref.rows_per_step == 2
    assert ref.call["timestep_map"] == {"divide": 1000, "flip": True}
    own = fc._latents(pipe, ref.resolution, num_inference_steps=2, guidance_scale=4.0,
                      latents=cal.initial_noise(pipe, [0], ref.resolution))
    # two calls of one row vs one batch of two: equal up to float32 rounding of the batched GEMMs
    torch.testing.assert_close(ref.latents[-1], own, rtol=1e-5, atol=1e-5)
    assert not torch.equal(ref.cond["encoder_hidden_states"][0], ref.cond["encoder_hidden_states"][1])


def test_groups_are_measured_where_names_say_nothing(pipe):
    inv = inventory(pipe)
    assert {classify(l.name, DEFAULT_GROUP_RULES) for l in inv} == {"quality"}  # MixDQ's rule: no content
    assert inv["context_refiner.0.attn.to_q"].group == "content" and inv["context_refiner.0.attn.to_q"].stream == "text"
    assert inv["noise_refiner.0.attn.to_q"].stream == "image" and inv["layers.0.attn.to_q"].stream == "joint"


def test_every_command(pipe, tmp_path):
    fc.check_every_command(pipe, tmp_path, LAYERS, units=2, fresh=build_tiny_lumina2_pipeline)
