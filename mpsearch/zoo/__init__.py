"""The bundled demo model: a small text-to-image pipeline trained here on procedural scenes.

`load_demo()` returns it as a standard diffusers `StableDiffusionPipeline`; `scenes` draws and captions
the scenes it was trained on and `detector` reads them back from images to score prompt adherence.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEMO_PATH = Path(__file__).resolve().parent / "demo"
# The sampling setting every command uses on the demo model (profile, evaluate, generate, demo): few
# steps, as MixDQ targets (the FP adherence at this setting is in benchmarks/results/plan_quality.md).
DEMO_STEPS = 8
DEMO_GUIDANCE = 3.0


def load_demo(dtype: torch.dtype | None = None, device: str = "cpu"):
    """Load the committed demo pipeline from `DEMO_PATH`, offline, in `dtype` (default float32)."""
    import torch
    from diffusers import DiffusionPipeline

    if not (DEMO_PATH / "model_index.json").exists():
        raise FileNotFoundError(
            f"demo weights missing at {DEMO_PATH}; train with `python -m mpsearch.zoo.train`"
        )
    with warnings.catch_warnings():  # diffusers 0.42 renames torch_dtype to dtype; older ones lack dtype
        warnings.simplefilter("ignore", FutureWarning)
        pipe = DiffusionPipeline.from_pretrained(
            DEMO_PATH, torch_dtype=dtype or torch.float32, local_files_only=True
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
