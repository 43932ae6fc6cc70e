"""AuraFlow (`AuraFlowPipeline`, `AuraFlowTransformer2DModel`): an MMDiT with joint (two-stream) blocks
followed by single-stream blocks over one sequence of text and image tokens (as Flux), UMT5 text with
learned register tokens prepended, flow matching (`FlowMatchEulerDiscreteScheduler`), a CFG batch. The
transformer gets `t / 1000` (the capture infers the map).

Content vs quality: the measured stream (joint blocks' text projections and `context_embedder` are
content; single blocks see joint tokens and count as quality). No BOS layers (UMT5 is bidirectional).
Pruning units: every joint and every single block.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mpsearch.pipelines.base import STREAM_NOTE, PipelineAdapter, register_adapter


@register_adapter
class AuraFlow(PipelineAdapter):
    name = "auraflow"
    pipelines = ("AuraFlowPipeline",)
    denoisers = ("AuraFlowTransformer2DModel",)
    denoiser_attrs = ("transformer",)
    component = "transformer"
    conditioning = ("encoder_hidden_states",)
    group_by = "stream"
    group_note = STREAM_NOTE + " (single blocks: joint, quality)"
    bos_pattern = None
    unit_lists = ("joint_transformer_blocks", "single_transformer_blocks")
    pair_blocks = ("AuraFlowJointTransformerBlock",)

    def dummy_inputs(self, denoiser: nn.Module, resolution: int, text_len: int, *, batch: int = 1,
                     device: Any = None, vae_scale: int = 8) -> dict[str, Any]:  # fmt: skip
        latents = self.dummy_latents(denoiser, resolution, batch=batch, device=device, vae_scale=vae_scale)
        cfg, device = denoiser.config, latents.device
        return {"hidden_states": latents,
                "encoder_hidden_states": torch.zeros(batch, text_len, cfg.joint_attention_dim, device=device),
                "timestep": torch.full((batch,), 0.5, device=device)}  # fmt: skip

    def sampling_defaults(self) -> dict[str, Any]:
        return {"steps": 50, "guidance": 3.5}
