"""PixArt-α and PixArt-Σ: a DiT (`PixArtTransformer2DModel`) on T5 embeddings with an attention mask
(α: 120 tokens, Σ: 300), adaLN-single (α also passes size conditions), learned sigma (the noise half of
the output is used), CFG in one batch. One-step α sampling keeps the scheduler's denoised estimate.
Content vs quality: MixDQ's names fit, `attn2` is cross-attention to the text (measured: its `to_k` /
`to_v` take the text tokens). No BOS layers: T5 is bidirectional, its first token depends on the prompt."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mpsearch.pipelines.base import PipelineAdapter, register_adapter


@register_adapter
class PixArt(PipelineAdapter):
    name = "pixart"
    pipelines = ("PixArtAlphaPipeline", "PixArtSigmaPipeline")
    denoisers = ("PixArtTransformer2DModel",)
    denoiser_attrs = ("transformer",)
    component = "transformer"
    conditioning = ("encoder_hidden_states", "encoder_attention_mask")
    single_file = {"pixart": "PixArtAlphaPipeline"}

    def dummy_inputs(self, denoiser: nn.Module, resolution: int, text_len: int, *, batch: int = 1,
                     device: Any = None, vae_scale: int = 8) -> dict[str, Any]:  # fmt: skip
        latents = self.dummy_latents(denoiser, resolution, batch=batch, device=device, vae_scale=vae_scale)
        cfg, device = denoiser.config, latents.device
        text_dim = cfg.caption_channels or cfg.cross_attention_dim
        added = {"resolution": torch.zeros(batch, 2, device=device), "aspect_ratio": torch.zeros(batch, 1, device=device)}
        return {"hidden_states": latents,
                "timestep": torch.full((batch,), 10, device=device, dtype=torch.long),
                "encoder_hidden_states": torch.zeros(batch, text_len, text_dim, device=device),
                "added_cond_kwargs": added}  # fmt: skip

    def call_options(self) -> dict[str, Any]:
        return {"use_resolution_binning": False, "clean_caption": False}  # the resolution asked for, exactly

    def one_step_denoised(self, pipe: Any) -> bool:
        return type(pipe).__name__ == "PixArtAlphaPipeline"
