"""HunyuanDiT (`HunyuanDiTPipeline`, `HunyuanDiT2DModel`): a DiT with long skip connections (the second
half of its `blocks` takes the outputs of the first half), bilingual CLIP-style BERT and mT5 text (two
cross-attention inputs, concatenated), 2-D rotary position embeddings computed by the pipeline and passed
as a `(cos, sin)` tuple without a batch dimension (shared by every row and slot: `shared_args`), size and
style conditions, learned sigma, DDPM, a CFG batch; the transformer gets the timestep as a float.

Not quantizable: the attention pool that summarises the T5 tokens (`time_extra_emb.pooler`) calls
`F.multi_head_attention_forward` with its `q_proj` / `k_proj` / `v_proj` / `c_proj` weights, so those
Linear modules never run their own forward and no hook sees them; `mpsearch.model.inventory` finds them
(its meta forward never calls them), lists them in `excluded` and keeps them at full precision.

Content vs quality: MixDQ's names fit (`attn2` is cross-attention to the text, `ff` the feed-forward).
No BOS layers (BERT is bidirectional). Pruning units: every block (removing one that feeds a skip passes
its input on; removing one that takes a skip drops that skip).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mpsearch.pipelines.base import PipelineAdapter, register_adapter


@register_adapter
class HunyuanDiT(PipelineAdapter):
    name = "hunyuandit"
    pipelines = ("HunyuanDiTPipeline", "HunyuanDiTPAGPipeline")
    denoisers = ("HunyuanDiT2DModel",)
    denoiser_attrs = ("transformer",)
    component = "transformer"
    conditioning = ("encoder_hidden_states", "encoder_hidden_states_t5", "image_rotary_emb.0", "image_rotary_emb.1")
    shared_args = ("image_rotary_emb",)
    unit_lists = ("blocks",)

    def dummy_inputs(self, denoiser: nn.Module, resolution: int, text_len: int, *, batch: int = 1,
                     device: Any = None, vae_scale: int = 8) -> dict[str, Any]:  # fmt: skip
        """The text lengths are the model's own (`text_len`, `text_len_t5`: its padding table is that long)."""
        latents = self.dummy_latents(denoiser, resolution, batch=batch, device=device, vae_scale=vae_scale)
        cfg, device = denoiser.config, latents.device
        tokens = (latents.shape[-1] // cfg.patch_size) ** 2
        rotary = torch.zeros(tokens, cfg.attention_head_dim, device=device)
        return {"hidden_states": latents,
                "timestep": torch.full((batch,), 500.0, device=device),
                "encoder_hidden_states": torch.zeros(batch, cfg.text_len, cfg.cross_attention_dim, device=device),
                "text_embedding_mask": torch.ones(batch, cfg.text_len, dtype=torch.long, device=device),
                "encoder_hidden_states_t5": torch.zeros(batch, cfg.text_len_t5, cfg.cross_attention_dim_t5,
                                                        device=device),
                "text_embedding_mask_t5": torch.ones(batch, cfg.text_len_t5, dtype=torch.long, device=device),
                "image_meta_size": torch.zeros(batch, 6, device=device),
                "style": torch.zeros(batch, dtype=torch.long, device=device),
                "image_rotary_emb": (rotary, rotary)}  # fmt: skip

    def text_len(self, pipe: Any) -> int:
        _, den = self.find_denoiser(pipe)
        return int(den.config.text_len + den.config.text_len_t5)

    def call_options(self) -> dict[str, Any]:
        return {"use_resolution_binning": False}  # sample at the resolution asked for, exactly

    def sampling_defaults(self) -> dict[str, Any]:
        return {"steps": 50, "guidance": 5.0}
