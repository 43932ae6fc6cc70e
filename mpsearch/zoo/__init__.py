"""The bundled demo models: small text-to-image pipelines trained here on procedural scenes.

Two, on the same scenes and captions: `demo`, a `StableDiffusionPipeline` (UNet, DDIM), and `demo-dit`, a
`StableDiffusion3Pipeline` (MMDiT with joint attention, flow matching). `load_demo(name=...)` returns one
as a standard diffusers pipeline; `scenes` draws and captions the scenes they were trained on and
`detector` reads them back from images to score prompt adherence.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

DEMO_PATH = Path(__file__).resolve().parent / "demo"
DEMO_DIT_PATH = Path(__file__).resolve().parent / "demo-dit"
# The sampling setting every command uses on the demo model (profile, evaluate, generate, demo): few
# steps, as MixDQ targets (the FP adherence at this setting is in benchmarks/results/plan_quality.md).
DEMO_STEPS = 8
DEMO_GUIDANCE = 3.0
# The DiT's: steps and guidance (benchmarks/results/demo_quality_dit.md), and the T5 tokens it was trained
# with (`StableDiffusion3Pipeline` pads T5's tokens to `max_sequence_length`, 256 unless told). Few text
# tokens keep it cheap: the joint blocks run the text tokens through their own weights.
DIT_STEPS = 8
DIT_GUIDANCE = 3.0
DIT_T5_TOKENS = 8
DIT_CLIP_TOKENS = 10  # its CLIP tokenizers' length (every caption fits: at most 7 words + BOS/EOS)

BUNDLED = {"demo": DEMO_PATH, "demo-dit": DEMO_DIT_PATH}  # name -> folder of each bundled model


def sampling(name: str = "demo") -> dict[str, Any]:
    """How every command samples bundled model `name`: `{"steps", "guidance"}` plus the pipeline call
    options it was trained for (`max_sequence_length` for the DiT)."""
    if name == "demo-dit":
        return {"steps": DIT_STEPS, "guidance": DIT_GUIDANCE, "call": {"max_sequence_length": DIT_T5_TOKENS}}
    if name == "demo":
        return {"steps": DEMO_STEPS, "guidance": DEMO_GUIDANCE, "call": {}}
    raise ValueError(f"no bundled model {name!r}: choose one of {sorted(BUNDLED)}")


def bundled_name(obj: Any) -> str | None:
    """Which bundled model `obj` is: None and "demo" name the UNet demo, "demo-dit" the DiT, and a pipeline
    (or a path) loaded from one of their folders is that one; None for anything else."""
    if obj is None:
        return "demo"
    if isinstance(obj, (str, Path)):
        if str(obj) in BUNDLED:
            return str(obj)
        path = obj
    else:
        path = getattr(getattr(obj, "config", None), "_name_or_path", None)
        if not path:
            return None
    resolved = Path(str(path)).expanduser().resolve()
    return next((name for name, folder in BUNDLED.items() if resolved == folder), None)


def load_demo(dtype: torch.dtype | None = None, device: str = "cpu", name: str = "demo"):
    """Load bundled model `name` ("demo" or "demo-dit") from its folder, offline, in `dtype` (default
    float32)."""
    import torch
    from diffusers import DiffusionPipeline

    if name not in BUNDLED:
        raise ValueError(f"no bundled model {name!r}: choose one of {sorted(BUNDLED)}")
    path = BUNDLED[name]
    if not (path / "model_index.json").exists():
        arch = " --arch dit" if name == "demo-dit" else ""
        raise FileNotFoundError(
            f"{name} weights missing at {path}; train with `python -m mpsearch.zoo.train{arch} --out {path}`"
        )
    with warnings.catch_warnings():  # diffusers 0.42 renames torch_dtype to dtype; older ones lack dtype
        warnings.simplefilter("ignore", FutureWarning)
        pipe = DiffusionPipeline.from_pretrained(path, torch_dtype=dtype or torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
