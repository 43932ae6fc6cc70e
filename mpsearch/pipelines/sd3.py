"""Stable Diffusion 3 / 3.5 (`StableDiffusion3Pipeline`, `SD3Transformer2DModel`): an MMDiT whose joint
attention runs a text stream and an image stream side by side (SD3.5 Medium adds a second, image-only
self-attention `attn2` in its first blocks: "dual attention"), three text encoders (two CLIPs and T5,
concatenated along the tokens), and flow matching (`FlowMatchEulerDiscreteScheduler`, static shift).

Guidance: a CFG batch, as SD. Content vs quality: MixDQ's name rule would make SD3.5's `attn2` (image
self-attention) content and every text-stream projection quality, so the groups follow the measured
stream instead: layers that take the text tokens (`context_embedder`, `add_{q,k,v}_proj`, `to_add_out`,
`ff_context`) are content, image-stream and timestep layers quality. No BOS layers: in joint attention the
first text token is updated by every block, so its keys are not constant across prompts.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from mpsearch.pipelines.base import STREAM_NOTE, PipelineAdapter, register_adapter

T5_TOKENS = 256  # StableDiffusion3Pipeline's default max_sequence_length


@register_adapter
class StableDiffusion3(PipelineAdapter):
    name = "sd3"
    pipelines = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline")
    denoisers = ("SD3Transformer2DModel",)
    denoiser_attrs = ("transformer",)
    component = "transformer"
    conditioning = ("encoder_hidden_states", "pooled_projections")
    group_by, group_note = "stream", STREAM_NOTE
    bos_pattern = None
    unit_lists = ("transformer_blocks",)
    pair_blocks = ("JointTransformerBlock",)
    single_file = {"sd3": "StableDiffusion3Pipeline"}
    t5_tokens: ClassVar[int] = T5_TOKENS  # T5 tokens per prompt: the pipeline's max_sequence_length

    def dummy_inputs(self, denoiser: nn.Module, resolution: int, text_len: int, *, batch: int = 1,
                     device: Any = None, vae_scale: int = 8) -> dict[str, Any]:  # fmt: skip
        latents = self.dummy_latents(denoiser, resolution, batch=batch, device=device, vae_scale=vae_scale)
        cfg, device = denoiser.config, latents.device
        return {"hidden_states": latents,
                "encoder_hidden_states": torch.zeros(batch, text_len, cfg.joint_attention_dim, device=device),
                "pooled_projections": torch.zeros(batch, cfg.pooled_projection_dim, device=device),
                "timestep": torch.full((batch,), 500.0, device=device)}  # fmt: skip

    def text_len(self, pipe: Any) -> int:
        """CLIP's tokens followed by T5's `t5_tokens` (the pipeline concatenates them)."""
        return int(getattr(pipe, "tokenizer_max_length", 77)) + self.t5_tokens

    def sampling_defaults(self) -> dict[str, Any]:
        return {"steps": 28, "guidance": 7.0}
