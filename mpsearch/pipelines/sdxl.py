"""SDXL (base, turbo, refiner): SD's UNet plus pooled text embeddings and size/crop ids
(`added_cond_kwargs.text_embeds` / `.time_ids`, the UNet's "text_time" addition embedding)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mpsearch.pipelines.base import register_adapter
from mpsearch.pipelines.sd import StableDiffusion

N_TIME_IDS = 6  # original size (2), crop top-left (2), target size (2)


def is_text_time(module: Any) -> bool:
    """Whether `module` is a UNet with SDXL's text-time addition embedding."""
    cfg = getattr(module, "config", None)
    return isinstance(module, nn.Module) and getattr(cfg, "addition_embed_type", None) == "text_time"


@register_adapter
class StableDiffusionXL(StableDiffusion):
    name = "sdxl"
    pipelines = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline")
    denoisers = ()  # SDXL's UNet class is SD's: a bare one is claimed by its text-time embedding
    conditioning = ("encoder_hidden_states", "added_cond_kwargs.text_embeds", "added_cond_kwargs.time_ids")
    single_file = {"xl_base": "StableDiffusionXLPipeline", "playground": "StableDiffusionXLPipeline",
                   "xl_refiner": "StableDiffusionXLImg2ImgPipeline"}  # fmt: skip

    def claims(self, obj: Any) -> bool:
        return is_text_time(obj) and not hasattr(obj, "components")

    def dummy_inputs(self, denoiser: nn.Module, resolution: int, text_len: int, *, batch: int = 1,
                     device: Any = None, vae_scale: int = 8) -> dict[str, Any]:  # fmt: skip
        kwargs = super().dummy_inputs(denoiser, resolution, text_len, batch=batch, device=device,
                                      vae_scale=vae_scale)
        cfg, device = denoiser.config, kwargs["sample"].device
        pooled = cfg.projection_class_embeddings_input_dim - N_TIME_IDS * cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.zeros(batch, pooled, device=device),
                                       "time_ids": torch.zeros(batch, N_TIME_IDS, device=device)}  # fmt: skip
        return kwargs
