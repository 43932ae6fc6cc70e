"""Sana (`SanaPipeline`, `SanaTransformer2DModel`): a DiT with linear self-attention (`attn1`), cross-
attention to Gemma-2 text embeddings (`attn2`, with an attention mask) and a convolutional feed-forward
(`ff`: GLUMBConv, 1x1 and depth-wise 3x3 Conv2d), over a 32x deep-compression autoencoder (DC-AE),
sampled with DPM-Solver++ on flow sigmas (`use_flow_sigmas`, `flow_shift`).

Guidance: a CFG batch. Content vs quality: MixDQ's names fit (`attn2` is cross-attention: measured, its
`to_k` / `to_v` take the text tokens; `ff` the feed-forward), so the default rule applies. No BOS
layers (Gemma's first token is the instruction prefix, not a BOS the rule was measured for). Pruning
units: every transformer block. Kept steps: flow DPM-Solver rounds its timesteps to integers, so
`mpsearch.pipelines.timesteps` reads the sigmas of kept steps from the pool's own schedule.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mpsearch.pipelines.base import PipelineAdapter, register_adapter


@register_adapter
class Sana(PipelineAdapter):
    name = "sana"
    pipelines = ("SanaPipeline", "SanaPAGPipeline")
    denoisers = ("SanaTransformer2DModel",)
    denoiser_attrs = ("transformer",)
    component = "transformer"
    conditioning = ("encoder_hidden_states", "encoder_attention_mask")
    bos_pattern = None
    unit_lists = ("transformer_blocks",)

    def dummy_inputs(self, denoiser: nn.Module, resolution: int, text_len: int, *, batch: int = 1,
                     device: Any = None, vae_scale: int = 32) -> dict[str, Any]:  # fmt: skip
        latents = self.dummy_latents(denoiser, resolution, batch=batch, device=device, vae_scale=vae_scale)
        cfg, device = denoiser.config, latents.device
        return {"hidden_states": latents,
                "encoder_hidden_states": torch.zeros(batch, text_len, cfg.caption_channels, device=device),
                "encoder_attention_mask": torch.ones(batch, text_len, device=device),
                "timestep": torch.full((batch,), 500.0, device=device)}  # fmt: skip

    def call_options(self) -> dict[str, Any]:
        return {"use_resolution_binning": False, "clean_caption": False}  # the resolution asked for, exactly

    def sampling_defaults(self) -> dict[str, Any]:
        return {"steps": 20, "guidance": 4.5}
