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
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tok = _clip_tokenizer()
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
    vae = _tiny_vae()
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


def _tiny_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=8, sample_size=16,
    )  # fmt: skip


def _clip_tokenizer():
    import tempfile
    from pathlib import Path

    from mpsearch.zoo.train import build_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        return build_tokenizer(Path(tmp))


def t5_style_tokenizer():
    """A T5-like fast tokenizer over the demo's caption words (word level, `</s>` appended, `<pad>` = 0),
    built with the `tokenizers` library: no download, saves and reloads with `save_pretrained`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from mpsearch.zoo import scenes

    words = {"a", "at", "the", "in"} | set(scenes.SHAPES) | set(scenes.COLORS)
    for p in scenes.POSITIONS:
        words |= set(p.split())
    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", *sorted(words)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=32)  # fmt: skip


def build_tiny_sdxl_pipeline(seed: int = 0):
    """A StableDiffusionXLPipeline for unit tests: two CLIP text encoders (the second with projection, for
    the pooled embedding) over the demo vocabulary, a UNet with SDXL's `text_time` added conditioning
    (pooled text + 6 size/crop ids), the tiny VAE (16 px) and Euler, SDXL's own scheduler."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tok = _clip_tokenizer()
    text_cfg = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=tok.model_max_length, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        projection_dim=32,
    )  # fmt: skip
    text, text_2 = CLIPTextModel(text_cfg), CLIPTextModelWithProjection(text_cfg)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1, cross_attention_dim=64, attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8, norm_num_groups=8,
    )  # fmt: skip
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                   steps_offset=1, timestep_spacing="leading")  # fmt: skip
    vae = _tiny_vae()
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text, text_encoder_2=text_2, tokenizer=tok, tokenizer_2=tok, unet=unet,
        scheduler=sched, add_watermarker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    for m in (unet, vae, text, text_2):
        m.eval().requires_grad_(False)
    return pipe


def build_tiny_pixart_pipeline(seed: int = 0):
    """A PixArtAlphaPipeline for unit tests: a 2-layer T5 encoder with a T5-style word tokenizer, a
    2-block PixArt transformer with learned sigma (8 output channels for 4 latent ones), the tiny VAE and
    DPM-Solver++ (PixArt's own, multistep). Its sample size is no PixArt bin, so call it with
    `use_resolution_binning=False`."""
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tok = t5_style_tokenizer()
    text = T5EncoderModel(T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                   pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))  # fmt: skip
    transformer = PixArtTransformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=8, num_layers=2, num_attention_heads=2,
        attention_head_dim=8, cross_attention_dim=16, caption_channels=32, norm_num_groups=8,
    )  # fmt: skip
    sched = DPMSolverMultistepScheduler()
    vae = _tiny_vae()
    pipe = PixArtAlphaPipeline(tokenizer=tok, text_encoder=text, vae=vae, transformer=transformer, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    for m in (transformer, vae, text):
        m.eval().requires_grad_(False)
    return pipe


TINY_PIPELINES = {"sd": build_tiny_pipeline, "sdxl": build_tiny_sdxl_pipeline, "pixart": build_tiny_pixart_pipeline}


@pytest.fixture(scope="session")
def tiny_pipe_factory():
    """Call it for a fresh tiny pipeline (same weights every call for a given seed)."""
    return build_tiny_pipeline


@pytest.fixture()
def tiny_pipe():
    return build_tiny_pipeline()
