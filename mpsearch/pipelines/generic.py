"""The fallback for a pipeline no adapter knows. Everything mpsearch replays is recorded from the pipeline's
own `__call__` (`mpsearch.pipelines.capture`), so only the meta-device inventory needs to know the denoiser's
inputs: a UNet gets SD's or SDXL's, any other denoiser inputs built from its `forward` signature and its
config (the latent `hidden_states`/`sample`, a timestep, text states of the config's text width, pooled
projections, an all-ones mask, PixArt's size conditions). A denoiser those do not fit (Flux's packed latents and position ids) is a
`ModelError` naming its class: it needs an adapter (one file in `mpsearch/pipelines/`).

Groups follow MixDQ's names; no prunable units beyond the UNet/`BasicTransformerBlock` rules.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from mpsearch.pipelines.base import ADAPTERS, ModelError, PipelineAdapter, register_adapter
from mpsearch.pipelines.sdxl import is_text_time

TEXT_WIDTHS = ("joint_attention_dim", "caption_channels", "cap_feat_dim", "cross_attention_dim")


@register_adapter
class Generic(PipelineAdapter):
    name = "generic"

    def dummy_inputs(self, denoiser: nn.Module, resolution: int, text_len: int, *, batch: int = 1,
                     device: Any = None, vae_scale: int = 8) -> dict[str, Any]:  # fmt: skip
        if hasattr(denoiser, "down_blocks"):  # a UNet
            like = "sdxl" if is_text_time(denoiser) else "sd"
            return ADAPTERS.lookup(like).dummy_inputs(denoiser, resolution, text_len, batch=batch, device=device,
                                                      vae_scale=vae_scale)  # fmt: skip
        latents = self.dummy_latents(denoiser, resolution, batch=batch, device=device, vae_scale=vae_scale)
        return signature_inputs(denoiser, latents, text_len)


def signature_inputs(denoiser: nn.Module, latents: torch.Tensor, text_len: int) -> dict[str, Any]:
    """Inputs of a DiT-like denoiser from its `forward` parameters and config (see the module docstring),
    around its `latents` (`dummy_latents`: their batch and device are the call's)."""
    cfg, who = denoiser.config, type(denoiser).__name__
    batch, device = latents.shape[0], latents.device
    params = list(inspect.signature(denoiser.forward).parameters)
    width = next((getattr(cfg, k) for k in TEXT_WIDTHS if getattr(cfg, k, None)), None)
    width = width[0] if isinstance(width, (list, tuple)) else width
    out: dict[str, Any] = {params[0]: latents, "timestep": torch.full((batch,), 500.0, device=device)}
    if "encoder_hidden_states" in params:
        if width is None:
            raise ModelError(f"{who}: no text width in its config ({', '.join(TEXT_WIDTHS)}); it needs an adapter")
        out["encoder_hidden_states"] = torch.zeros(batch, text_len, width, device=device)
    if "pooled_projections" in params and getattr(cfg, "pooled_projection_dim", None):
        out["pooled_projections"] = torch.zeros(batch, cfg.pooled_projection_dim, device=device)
    if "encoder_attention_mask" in params:
        out["encoder_attention_mask"] = torch.ones(batch, text_len, device=device)
    if "added_cond_kwargs" in params:  # PixArt-style size conditions
        out["added_cond_kwargs"] = {"resolution": torch.zeros(batch, 2, device=device),
                                    "aspect_ratio": torch.zeros(batch, 1, device=device)}  # fmt: skip
    return out
