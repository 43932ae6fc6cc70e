"""Stable Diffusion 1.x/2.x: `UNet2DConditionModel` conditioned on CLIP text embeddings, CFG in one batch.

Also the base of SDXL (`sdxl.py`) and of the demo (`demo.py`), which share its UNet."""

from __future__ import annotations

from mpsearch.pipelines.base import PipelineAdapter, register_adapter


@register_adapter
class StableDiffusion(PipelineAdapter):
    name = "sd"
    pipelines = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline")
    denoisers = ("UNet2DConditionModel",)
    denoiser_attrs = ("unet",)
    component = "unet"
    conditioning = ("encoder_hidden_states",)
    single_file = {"": "StableDiffusionPipeline"}  # what a single-file checkpoint of no other family loads as
