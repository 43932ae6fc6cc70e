"""Default sampling settings per model: steps and guidance a user would pick for it, from its adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mpsearch.model import bundled_config, bundled_configs
from mpsearch.pipelines.base import DEFAULT_SAMPLING, adapter_for, adapter_named
from mpsearch.pipelines.demo import is_demo


def sampling_defaults(model: Any = None) -> dict[str, Any]:
    """`{"steps", "guidance"}` for the demo (its tuned few-step setting), a bundled config (its published
    steps and guidance; no guidance for one-step models), or any model (its family's defaults)."""
    if isinstance(model, str) and model in bundled_configs():
        cfg = bundled_config(model)
        family = adapter_named([cfg["denoiser"]["_class_name"]]).sampling_defaults()
        guidance = 0.0 if cfg["default_steps"] <= 1 else family["guidance"]
        return {"steps": cfg["default_steps"], "guidance": cfg.get("default_guidance", guidance)}
    if isinstance(model, (str, Path)) and not is_demo(model):
        return dict(DEFAULT_SAMPLING)  # a hub id or a folder, not loaded here: any family's defaults
    return adapter_for(model).sampling_defaults()
