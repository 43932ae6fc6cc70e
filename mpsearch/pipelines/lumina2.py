"""Lumina-Image 2.0 (`Lumina2Pipeline`, `Lumina2Transformer2DModel`): a single-stream DiT. A context
refiner runs on the Gemma-2 text tokens and a noise refiner on the image tokens, then the main `layers`
attend over both in one sequence; flow matching with a resolution shift; the transformer gets
`1 - t/1000` (t = 1 is the image) and the scheduler steps with the negated output.

Guidance: *separate* calls, the conditional one first, then the unconditional one (the capture sees two
calls of N rows and replays them as one batch; their text lengths match, both padded to
`max_sequence_length`), combined as `u + g·(c - u)` renormalised to the conditional output's norm over the
last axis (`cfg_normalization`, the pipeline's default; `cfg_trunc_ratio` is left at its default 1.0,
guidance at every step).

Content vs quality: MixDQ's names mark nothing here (no `attn2`, no `ff`), so the measured stream decides:
the context refiner and the caption embedder take text tokens (content); the noise refiner takes image
tokens, the main layers joint ones (quality). No BOS layers. Pruning units: the main `layers`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from mpsearch.pipelines.base import STREAM_NOTE, PipelineAdapter, register_adapter


@register_adapter
class Lumina2(PipelineAdapter):
    name = "lumina2"
    pipelines = ("Lumina2Pipeline", "Lumina2Text2ImgPipeline")
    denoisers = ("Lumina2Transformer2DModel",)
    denoiser_attrs = ("transformer",)
    component = "transformer"
    conditioning = ("encoder_hidden_states", "encoder_attention_mask")
    guidance = "separate"
    separate_order = ("cond", "uncond")
    group_by = "stream"
    group_note = STREAM_NOTE + " (main layers: joint, quality)"
    bos_pattern = None
    unit_lists = ("layers",)

    def dummy_inputs(self, denoiser: nn.Module, resolution: int, text_len: int, *, batch: int = 1,
                     device: Any = None, vae_scale: int = 8) -> dict[str, Any]:  # fmt: skip
        latents = self.dummy_latents(denoiser, resolution, batch=batch, device=device, vae_scale=vae_scale)
        cfg, device = denoiser.config, latents.device
        return {"hidden_states": latents,
                "timestep": torch.full((batch,), 0.5, device=device),
                "encoder_hidden_states": torch.zeros(batch, text_len, cfg.cap_feat_dim, device=device),
                "encoder_attention_mask": torch.ones(batch, text_len, dtype=torch.bool, device=device)}  # fmt: skip

    @contextlib.contextmanager
    def on_meta(self, denoiser: nn.Module) -> Iterator[None]:
        """The rotary embedder reads the caption lengths from the mask (`.tolist()`), which a meta tensor
        cannot give: it gets an all-ones CPU mask of the same shape (the dummy mask is all ones)."""
        rope = denoiser.rope_embedder
        forward = rope.forward

        def with_values(hidden_states, attention_mask):
            return forward(hidden_states, torch.ones(attention_mask.shape, dtype=torch.bool))

        rope.forward = with_values
        try:
            yield
        finally:
            del rope.forward

    def guide(self, uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
        noise = uncond + scale * (cond - uncond)
        return noise * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(noise, dim=-1, keepdim=True))

    def prediction(self, output: torch.Tensor) -> torch.Tensor:
        return -output

    def sampling_defaults(self) -> dict[str, Any]:
        return {"steps": 50, "guidance": 4.0}
