"""Flux.1 dev / schnell (`FluxPipeline`, `FluxTransformer2DModel`): an MMDiT with double-stream blocks
(text and image streams, joint attention, as SD3) followed by single-stream blocks (one sequence of text
and image tokens), CLIP pooled + T5 text, flow matching with a resolution-dependent shift (`mu`).

What is special, and where mpsearch reads it:
- guidance is *embedded*: dev passes `guidance` (one value per row) to its transformer and makes one call
  per step, no CFG batch (schnell passes none); the capture sees one call of N rows and replays it so.
  (`true_cfg_scale` with a negative prompt would make two calls combined at that scale; mpsearch samples
  without a negative prompt, so it never does.)
- `img_ids` / `txt_ids` (position ids, `[tokens, 3]`) have no batch dimension: shared by every row and
  slot, declared in `shared_args` so a token count equal to the batch size cannot be mistaken for rows.
- latents are packed 2x2 into tokens (`[N, (h/2)·(w/2), 4·C]`, the layout the denoiser takes and the
  scheduler steps); they are unpacked only to decode. No Conv2d: every quantizable layer is a Linear.
- the transformer gets `t / 1000` (the capture infers the map from the first call).

Content vs quality: the measured stream (double blocks' text projections and `context_embedder` are
content); single-stream blocks see text and image tokens in one sequence ("joint") and count as quality,
as the image stream that dominates them. Pruning units: every double- and every single-stream block.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from mpsearch.pipelines.base import STREAM_NOTE, PipelineAdapter, register_adapter

T5_TOKENS = 512  # FluxPipeline's default max_sequence_length


@register_adapter
class Flux(PipelineAdapter):
    name = "flux"
    pipelines = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline")
    denoisers = ("FluxTransformer2DModel",)
    denoiser_attrs = ("transformer",)
    component = "transformer"
    conditioning = ("encoder_hidden_states", "pooled_projections", "img_ids", "txt_ids")
    shared_args = ("img_ids", "txt_ids")
    guidance = "embedded"
    group_by = "stream"
    group_note = STREAM_NOTE + " (single-stream blocks: joint, quality)"
    bos_pattern = None
    unit_lists = ("transformer_blocks", "single_transformer_blocks")
    pair_blocks = ("FluxTransformerBlock", "FluxSingleTransformerBlock")
    single_file = {"flux": "FluxPipeline"}

    def dummy_inputs(self, denoiser: nn.Module, resolution: int, text_len: int, *, batch: int = 1,
                     device: Any = None, vae_scale: int = 8) -> dict[str, Any]:  # fmt: skip
        cfg = denoiser.config
        device = device or next(denoiser.parameters()).device
        tokens = (resolution // vae_scale // 2) ** 2
        out = {"hidden_states": torch.zeros(batch, tokens, cfg.in_channels, device=device),
               "encoder_hidden_states": torch.zeros(batch, text_len, cfg.joint_attention_dim, device=device),
               "pooled_projections": torch.zeros(batch, cfg.pooled_projection_dim, device=device),
               "timestep": torch.full((batch,), 0.5, device=device),
               "img_ids": torch.zeros(tokens, 3, device=device), "txt_ids": torch.zeros(text_len, 3, device=device)}
        if cfg.guidance_embeds:
            out["guidance"] = torch.full((batch,), 3.5, device=device)
        return out  # fmt: skip

    def text_len(self, pipe: Any) -> int:
        return T5_TOKENS

    def latent_shape(self, pipe: Any, resolution: int) -> tuple[int, ...]:
        """Packed: `((h/2)·(w/2), 4·C)` tokens, h = w = 2·⌊resolution / (2·vae_scale)⌋ as FluxPipeline sizes them."""
        _, den = self.find_denoiser(pipe)
        side = 2 * (resolution // (pipe.vae_scale_factor * 2))
        return ((side // 2) ** 2, int(den.config.in_channels))

    def vae_latents(self, pipe: Any, latents: torch.Tensor) -> torch.Tensor:
        side = math.isqrt(latents.shape[1])  # square images: tokens = (h/2)²
        pixels = side * 2 * pipe.vae_scale_factor
        return pipe._unpack_latents(latents, pixels, pixels, pipe.vae_scale_factor)

    def sampling_defaults(self) -> dict[str, Any]:
        return {"steps": 28, "guidance": 3.5}
