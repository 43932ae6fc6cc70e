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


# --- today's families (tests/mpsearch/pipelines/test_<family>.py): a few thousand parameters each, 16-64 px


def _clip_config(tok):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=tok.model_max_length, bos_token_id=0,
                          eos_token_id=1, pad_token_id=1, projection_dim=32)  # fmt: skip


def _t5(tok, d_model: int = 32, cls=None):
    """A 2-layer T5 encoder (or `cls`: UMT5) over the T5-style word tokenizer."""
    from transformers import T5Config, T5EncoderModel

    return (cls or T5EncoderModel)(T5Config(vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=64, num_layers=2,
                                            num_heads=4, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))


def _gemma(tok):
    """A 2-layer Gemma-2 decoder (Sana's and Lumina 2's text encoder)."""
    from transformers import Gemma2Config, Gemma2Model

    return Gemma2Model(Gemma2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=2, num_key_value_heads=1, head_dim=16, pad_token_id=0,
                                    eos_token_id=1, bos_token_id=2, max_position_embeddings=1024))  # fmt: skip


def _vae_x8(shift: float | None = None):
    """A 4-level tiny VAE (8x downsampling): for pipelines that assume 8 (Lumina 2, HunyuanDiT)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
                         latent_channels=4, norm_num_groups=8, sample_size=64, shift_factor=shift)  # fmt: skip


def _eval(pipe):
    pipe.set_progress_bar_config(disable=True)
    for m in pipe.components.values():
        if isinstance(m, torch.nn.Module):
            m.eval().requires_grad_(False)
    return pipe


def build_tiny_sd3_pipeline(seed: int = 0, dual_attention: bool = False):
    """StableDiffusion3Pipeline: two CLIPs + T5 (64-wide, as the joint text width), a 2-block MMDiT
    (`dual_attention`: SD3.5's second image self-attention in block 0, with RMS q/k norms), the tiny VAE
    with SD3's shift factor, FlowMatchEuler with shift 3; 16 px."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    tok, t5tok = _clip_tokenizer(), t5_style_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        caption_projection_dim=16, joint_attention_dim=64, pooled_projection_dim=64, out_channels=4,
        dual_attention_layers=(0,) if dual_attention else (), qk_norm="rms_norm" if dual_attention else None,
    )  # fmt: skip
    vae = _tiny_vae()
    vae.register_to_config(shift_factor=0.1)
    return _eval(StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=CLIPTextModelWithProjection(_clip_config(tok)), tokenizer=tok,
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(tok)), tokenizer_2=tok,
        text_encoder_3=_t5(t5tok, 64), tokenizer_3=t5tok,
    ))  # fmt: skip


def build_tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = True):
    """FluxPipeline: CLIP + T5, 2 double- and 2 single-stream blocks (`guidance_embeds`: dev's embedded
    guidance; False: schnell), the tiny VAE, FlowMatchEuler with Flux's resolution shift; 16 px (4x4 packed
    tokens)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tok, t5tok = _clip_tokenizer(), t5_style_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=guidance_embeds, axes_dims_rope=(2, 2, 4),
    )  # fmt: skip
    vae = _tiny_vae()
    vae.register_to_config(shift_factor=0.1)
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=256, max_image_seq_len=4096,
                                            base_shift=0.5, max_shift=1.15)  # fmt: skip
    return _eval(FluxPipeline(scheduler=sched, vae=vae, text_encoder=CLIPTextModel(_clip_config(tok)), tokenizer=tok,
                              text_encoder_2=_t5(t5tok), tokenizer_2=t5tok, transformer=transformer))  # fmt: skip


def build_tiny_sana_pipeline(seed: int = 0):
    """SanaPipeline: Gemma-2, a 2-block linear-attention DiT with its conv feed-forward, a 3-level DC-AE
    (4x), DPM-Solver++ on flow sigmas; 32 px."""
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel

    torch.manual_seed(seed)
    tok = t5_style_tokenizer()
    transformer = SanaTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2,
        num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=32,
        sample_size=8, patch_size=1,
    )  # fmt: skip
    blocks = ("ResBlock", "ResBlock", "EfficientViTBlock")
    vae = AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=2, encoder_block_types=blocks, decoder_block_types=blocks,
        encoder_block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8),
        encoder_qkv_multiscales=((), (), (5,)), decoder_qkv_multiscales=((), (), (5,)),
        encoder_layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1), upsample_block_type="interpolate",
        downsample_block_type="stride_conv", decoder_norm_types="rms_norm", decoder_act_fns="silu",
        scaling_factor=0.41407,
    )  # fmt: skip
    sched = DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction")
    return _eval(SanaPipeline(tokenizer=tok, text_encoder=_gemma(tok), vae=vae, transformer=transformer, scheduler=sched))


def build_tiny_pixart_sigma_pipeline(seed: int = 0):
    """PixArtSigmaPipeline: T5, a 2-block PixArt transformer without size conditions, learned sigma,
    DPM-Solver++; 16 px."""
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    torch.manual_seed(seed)
    tok = t5_style_tokenizer()
    transformer = PixArtTransformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=8, num_layers=2, num_attention_heads=2,
        attention_head_dim=8, cross_attention_dim=16, caption_channels=32, norm_num_groups=8,
        use_additional_conditions=False,
    )  # fmt: skip
    return _eval(PixArtSigmaPipeline(tokenizer=tok, text_encoder=_t5(tok), vae=_tiny_vae(), transformer=transformer,
                                     scheduler=DPMSolverMultistepScheduler()))  # fmt: skip


def build_tiny_auraflow_pipeline(seed: int = 0):
    """AuraFlowPipeline: UMT5, 2 joint + 2 single blocks, the tiny VAE, FlowMatchEuler; 16 px."""
    from diffusers import AuraFlowPipeline, AuraFlowTransformer2DModel, FlowMatchEulerDiscreteScheduler
    from transformers import UMT5EncoderModel

    torch.manual_seed(seed)
    tok = t5_style_tokenizer()
    transformer = AuraFlowTransformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_mmdit_layers=2, num_single_dit_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, out_channels=4, pos_embed_max_size=64,
    )  # fmt: skip
    return _eval(AuraFlowPipeline(tokenizer=tok, text_encoder=_t5(tok, cls=UMT5EncoderModel), vae=_tiny_vae(),
                                  transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler()))  # fmt: skip


def build_tiny_lumina2_pipeline(seed: int = 0):
    """Lumina2Pipeline: Gemma-2, one context and one noise refiner block and 2 joint layers, an 8x VAE
    with a shift factor (the pipeline assumes 8x), FlowMatchEuler; 64 px (8x8 latents)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, Lumina2Pipeline, Lumina2Transformer2DModel

    torch.manual_seed(seed)
    tok = t5_style_tokenizer()
    transformer = Lumina2Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, hidden_size=32, num_layers=2, num_refiner_layers=1,
        num_attention_heads=2, num_kv_heads=1, multiple_of=16, axes_dim_rope=(4, 6, 6), axes_lens=(300, 64, 64),
        cap_feat_dim=32,
    )  # fmt: skip
    return _eval(Lumina2Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(),
                                 vae=_vae_x8(shift=0.1), text_encoder=_gemma(tok), tokenizer=tok))  # fmt: skip


def build_tiny_hunyuandit_pipeline(seed: int = 0):
    """HunyuanDiTPipeline: BERT (77 tokens) + T5 (256 tokens), a 4-block DiT with long skips, learned sigma,
    an 8x VAE (the pipeline sizes its rotary grid for 8x), DDPM; 64 px."""
    from diffusers import DDPMScheduler, HunyuanDiT2DModel, HunyuanDiTPipeline
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    tok = t5_style_tokenizer()
    tok.model_max_length = 77  # HunyuanDiT's BERT length (its T5 length, 256, the pipeline passes itself)
    bert = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=128, pad_token_id=0))  # fmt: skip
    transformer = HunyuanDiT2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=4, attention_head_dim=8, num_attention_heads=2,
        hidden_size=16, cross_attention_dim=32, cross_attention_dim_t5=32, pooled_projection_dim=16, text_len=77,
        text_len_t5=256,
    )  # fmt: skip
    return _eval(HunyuanDiTPipeline(
        vae=_vae_x8(), text_encoder=bert, tokenizer=tok, transformer=transformer, scheduler=DDPMScheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False, text_encoder_2=_t5(tok),
        tokenizer_2=tok,
    ))  # fmt: skip


def build_tiny_lcm_pipeline(seed: int = 0):
    """LatentConsistencyModelPipeline: the tiny SD UNet with a guidance embedding (`time_cond_proj_dim`),
    LCMScheduler; 16 px."""
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    tok = _clip_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1, cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8, time_cond_proj_dim=16,
    )  # fmt: skip
    return _eval(LatentConsistencyModelPipeline(
        vae=_tiny_vae(), text_encoder=CLIPTextModel(_clip_config(tok)), tokenizer=tok, unet=unet,
        scheduler=LCMScheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ))  # fmt: skip


@pytest.fixture(scope="session")
def tiny_pipe_factory():
    """Call it for a fresh tiny pipeline (same weights every call for a given seed)."""
    return build_tiny_pipeline


@pytest.fixture()
def tiny_pipe():
    return build_tiny_pipeline()
