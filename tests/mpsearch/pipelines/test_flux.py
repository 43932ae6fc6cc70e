"""Flux.1 end to end on tiny pipelines: embedded guidance (one call per step, no CFG batch) read from the
pipeline, position ids shared by every row, packed latents, flow matching with a resolution shift, double-
and single-stream blocks as pruning units, and every command."""

import pytest
import torch

from mpsearch.model import inventory
from mpsearch.profiling import calibration as cal
from mpsearch.profiling.session import QuantSession
from tests.conftest import build_tiny_flux_pipeline
from tests.mpsearch.pipelines import family_checks as fc

LAYERS = r"(transformer_blocks\.0\.attn\.(to_q|add_v_proj)|single_transformer_blocks\.1\.proj_mlp)$"


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_flux_pipeline()


def test_embedded_guidance_shared_ids_and_packed_latents(pipe):
    prompts = (fc.PROMPT, "a blue square in the center")
    ref = cal.reference(pipe, list(prompts), steps=2, guidance=3.5)
    assert ref.call["guidance"] == "single" and ref.rows_per_step == 2  # no CFG batch at guidance 3.5
    assert torch.equal(ref.cond["guidance"], torch.full((2,), 3.5))  # embedded: one value per row
    assert set(ref.shared) == {"img_ids", "txt_ids"} and ref.shared["img_ids"].shape == (16, 3)
    assert ref.call["timestep_map"] == {"divide": 1000, "flip": False}  # the transformer gets t / 1000
    assert ref.latents.shape[2:] == (16, 16)  # 4x4 packed tokens of 4·4 channels
    own = fc._latents(pipe, ref.resolution, prompts, num_inference_steps=2, guidance_scale=3.5,
                      latents=cal.initial_noise(pipe, [0, 1], ref.resolution))
    assert torch.equal(ref.latents[-1], own)
    assert ref.images.shape == (2, 3, 16, 16)  # unpacked and decoded
    schnell = cal.reference(build_tiny_flux_pipeline(guidance_embeds=False), [fc.PROMPT], steps=1, guidance=0.0)
    assert schnell.call["guidance"] == "single" and "guidance" not in schnell.cond


def test_steps_are_matched_by_the_timestep_the_transformer_gets(pipe):
    """Flux passes t / 1000: a quantization session still knows each call's step (per-step plans apply)."""
    ref = cal.reference(pipe, [fc.PROMPT], steps=2, guidance=3.5)
    session = QuantSession(pipe)
    try:
        session.timesteps = ref.model_timesteps
        seen = []
        handle = pipe.transformer.register_forward_pre_hook(lambda *a: seen.append(session._step))
        cal.denoise(pipe, ref, ref.latents[0])
        handle.remove()
        assert seen == [0, 1]
    finally:
        session.remove()


def test_groups_follow_the_measured_text_stream(pipe):
    inv = inventory(pipe)
    content = {l.name for l in inv if l.group == "content"}
    assert content == {l.name for l in inv if l.stream == "text"}
    assert "context_embedder" in content and "transformer_blocks.1.attn.add_q_proj" in content
    assert {inv[n].stream for n in ("single_transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.proj_out")} == {"joint"}
    assert all(l.kind == "linear" for l in inv)  # no Conv2d in Flux
    other = inventory(build_tiny_flux_pipeline(seed=1))  # the rule is measured from shapes: the same for any weights
    assert [(l.name, l.group) for l in other] == [(l.name, l.group) for l in inv]


def test_every_command(pipe, tmp_path):
    fc.check_every_command(pipe, tmp_path, LAYERS, units=4, fresh=build_tiny_flux_pipeline)
