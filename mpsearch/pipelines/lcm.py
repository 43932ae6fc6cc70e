"""Latent consistency models (LCM, and TCD: the same UNets with another scheduler): SD / SDXL UNets distilled
with a guidance embedding (`time_cond_proj_dim`). The pipeline embeds `w = guidance - 1` as `timestep_cond`
and makes one call per step, no CFG batch, whatever the guidance; `LCMScheduler.step` is stochastic (it
draws fresh noise between steps) and its last step returns the denoised estimate.

`LatentConsistencyModelPipeline` is this adapter's; an LCM UNet inside a `StableDiffusionPipeline` or
`StableDiffusionXLPipeline` (LCM-LoRA fused, or `lcm-sdxl`) stays with the SD / SDXL adapter: the capture
reads the single call and the guidance embedding from whichever pipeline runs it.
"""

from __future__ import annotations

from typing import Any

from mpsearch.pipelines.base import register_adapter
from mpsearch.pipelines.sd import StableDiffusion


@register_adapter
class LatentConsistency(StableDiffusion):
    name = "lcm"
    pipelines = ("LatentConsistencyModelPipeline", "LatentConsistencyModelImg2ImgPipeline")
    denoisers = ()  # SD's UNet class: a bare one is SD's
    conditioning = ("encoder_hidden_states", "timestep_cond")
    guidance = "embedded"
    single_file = {}

    def sampling_defaults(self) -> dict[str, Any]:
        return {"steps": 4, "guidance": 8.5}
