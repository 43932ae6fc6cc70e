"""Shared fixtures: tiny diffusers pipelines built from config dicts (no downloads, a few MB of RAM).

`tests/__init__.py` makes pytest put the repository root (not `tests/`) on sys.path for this file, so
`tests/mpsearch/` can never shadow the `mpsearch` package. Scripts import `tests.conftest`.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch


def build_tiny_pipeline(seed: int = 0):
    """A StableDiffusionPipeline small enough for unit tests: UNet (32, 64) with cross-attention dim 32,
    a 2-layer CLIP text encoder over the demo's word-level vocabulary, a 2-level VAE (16 px images from
    8x8 latents) and DDIM with trailing spacing."""
    import tempfile
    from pathlib import Path

    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from mpsearch.zoo.train import build_tokenizer

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tokenizer(Path(tmp))
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=tok.model_max_length, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        projection_dim=32,
    ))  # fmt: skip
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1, cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8,
    )  # fmt: skip
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=16,
    )  # fmt: skip
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing")  # fmt: skip
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    for m in (unet, vae, text):
        m.eval().requires_grad_(False)
    return pipe


@pytest.fixture(scope="session")
def tiny_pipe_factory():
    """Call it for a fresh tiny pipeline (same weights every call for a given seed)."""
    return build_tiny_pipeline


@pytest.fixture()
def tiny_pipe():
    return build_tiny_pipeline()
