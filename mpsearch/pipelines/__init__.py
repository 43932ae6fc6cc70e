"""Pipeline families: one adapter per family (`base.PipelineAdapter`), chosen by `adapter_for(pipe)`.

Adding a family is one new file here with `@register_adapter`, imported below (see `base.py` for the hooks).
"""

from mpsearch.pipelines import (  # noqa: F401  (importing registers the adapters)
    auraflow,
    demo,
    flux,
    generic,
    hunyuandit,
    lcm,
    lumina2,
    pixart,
    sana,
    sd,
    sd3,
    sdxl,
)
from mpsearch.pipelines.base import (
    ADAPTERS,
    ModelError,
    PipelineAdapter,
    adapter_for,
    adapter_named,
    denoiser_components,
    register_adapter,
)

__all__ = ["ADAPTERS", "ModelError", "PipelineAdapter", "adapter_for", "adapter_named", "denoiser_components",
           "register_adapter"]
