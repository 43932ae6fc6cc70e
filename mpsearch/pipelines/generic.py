"""The fallback for a pipeline no adapter knows: the denoiser by its usual attribute names, and dummy
inputs by what its config has (a transformer's caption channels, a UNet's text-time embedding)."""

from __future__ import annotations

from typing import Any

from torch import nn

from mpsearch.pipelines.base import ADAPTERS, PipelineAdapter, register_adapter
from mpsearch.pipelines.sdxl import is_text_time


@register_adapter
class Generic(PipelineAdapter):
    name = "generic"

    def dummy_inputs(self, denoiser: nn.Module, resolution: int, text_len: int, *, batch: int = 1,
                     device: Any = None, vae_scale: int = 8) -> dict[str, Any]:  # fmt: skip
        like = "pixart" if "Transformer" in type(denoiser).__name__ else "sdxl" if is_text_time(denoiser) else "sd"
        return ADAPTERS.lookup(like).dummy_inputs(denoiser, resolution, text_len, batch=batch, device=device,
                                                         vae_scale=vae_scale)
