"""A bundled architecture with random weights, so anyone can profile at real size without downloads.

`random_pipeline("sdxl-turbo")` builds the denoiser of `mpsearch/configs/sdxl-turbo.json` exactly (the
published UNet config, randomly initialised) inside the pipeline class that runs it, with the published
VAE architecture (SD/SDXL's 4-level AutoencoderKL; SDXL's scaling factor and fp16 `force_upcast`) and
one-layer CLIP text encoders of the right widths over the demo model's tokenizer (the text encoders run
once per profile, for the reference; their size does not matter to the measurements). UNet configs only
(sd15, sdxl-base, sdxl-turbo); PixArt needs a T5 encoder and is refused by name.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mpsearch.model import ModelError, bundled_config

DEMO = Path(__file__).resolve().parents[1] / "mpsearch/zoo/demo"
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
           block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4)  # fmt: skip


def _text_encoder(tok, width: int, projection: int | None, text_len: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=width, intermediate_size=width * 2, num_hidden_layers=1,
                         num_attention_heads=max(1, width // 64), max_position_embeddings=text_len,
                         projection_dim=projection or width, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)  # fmt: skip
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def random_pipeline(name: str, *, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0):
    """The pipeline of bundled config `name` with random weights, on `device` in `dtype`."""
    import diffusers
    from transformers import CLIPTokenizer

    cfg = bundled_config(name)
    unet_cfg = dict(cfg["denoiser"])
    if unet_cfg.pop("_class_name") != "UNet2DConditionModel":
        raise ModelError(f"{name}: random weights are built for UNet configs only (sd15, sdxl-base, sdxl-turbo)")
    torch.manual_seed(seed)
    tok = CLIPTokenizer.from_pretrained(DEMO / "tokenizer")
    tok.model_max_length = cfg["text_len"]
    unet = diffusers.UNet2DConditionModel.from_config(unet_cfg)
    xl = unet_cfg.get("addition_embed_type") == "text_time"
    vae = diffusers.AutoencoderKL(**VAE, scaling_factor=0.13025 if xl else 0.18215, force_upcast=xl,
                                  sample_size=cfg["default_resolution"])  # fmt: skip
    if xl:  # CLIP-L (768) and OpenCLIP-bigG (1280, with the pooled projection) hidden widths
        pooled = unet_cfg["projection_class_embeddings_input_dim"] - 6 * unet_cfg["addition_time_embed_dim"]
        first = cfg["text_dim"] - pooled
        turbo = "turbo" in name
        sched_cls = diffusers.EulerAncestralDiscreteScheduler if turbo else diffusers.EulerDiscreteScheduler
        sched = sched_cls(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          timestep_spacing="trailing" if turbo else "leading", steps_offset=1)  # fmt: skip
        pipe = diffusers.StableDiffusionXLPipeline(
            vae=vae, text_encoder=_text_encoder(tok, first, None, cfg["text_len"]), tokenizer=tok,
            text_encoder_2=_text_encoder(tok, pooled, pooled, cfg["text_len"]), tokenizer_2=tok, unet=unet,
            scheduler=sched, force_zeros_for_empty_prompt=turbo,
        )  # fmt: skip
    else:
        sched = diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                        clip_sample=False, set_alpha_to_one=False, steps_offset=1)  # fmt: skip
        pipe = diffusers.StableDiffusionPipeline(
            vae=vae, text_encoder=_text_encoder(tok, cfg["text_dim"], None, cfg["text_len"]), tokenizer=tok,
            unet=unet, scheduler=sched, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    for m in (unet, vae, *[c for c in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if c is not None]):
        m.eval().requires_grad_(False)
    return pipe.to(device, dtype)
