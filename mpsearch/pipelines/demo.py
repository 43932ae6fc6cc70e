"""The bundled demo models (`mpsearch/zoo/demo/`, an SD pipeline, and `mpsearch/zoo/demo-dit/`, an SD3 one)
trained here, each sampled at its tuned few-step setting."""

from __future__ import annotations

from typing import Any

from mpsearch import zoo
from mpsearch.pipelines.base import register_adapter
from mpsearch.pipelines.sd import StableDiffusion
from mpsearch.pipelines.sd3 import StableDiffusion3


def is_demo(obj: Any) -> bool:
    """Whether `obj` names a bundled demo model (None, "demo", "demo-dit") or is a pipeline loaded from one
    of their folders (`zoo.BUNDLED`): such a model samples demo captions and is scored by the detector."""
    return zoo.bundled_name(obj) is not None


@register_adapter
class Demo(StableDiffusion):
    name = "demo"
    pipelines = ()  # an SD pipeline: claimed by its path, not its class
    denoisers = ()
    single_file = {}

    def claims(self, obj: Any) -> bool:
        return zoo.bundled_name(obj) == "demo"

    def sampling_defaults(self) -> dict[str, Any]:
        s = zoo.sampling("demo")
        return {"steps": int(s["steps"]), "guidance": float(s["guidance"])}


@register_adapter
class DemoDit(StableDiffusion3):
    """The bundled DiT: an SD3 pipeline trained with `zoo.DIT_T5_TOKENS` T5 tokens per prompt, so it is
    sampled with that `max_sequence_length` (the pipeline's default pads T5 to 256 tokens)."""

    name = "demo-dit"
    pipelines = ()  # an SD3 pipeline: claimed by its path, not its class
    denoisers = ()
    single_file = {}

    def claims(self, obj: Any) -> bool:
        """The bundled DiT, and a checkpoint exported from it (`load_quantized` attaches its plan, which
        names the model): it needs the same T5 length wherever it was saved."""
        plan = getattr(obj, "mpsearch_plan", None)
        return zoo.bundled_name(obj) == "demo-dit" or getattr(plan, "model", None) == "demo-dit"

    def sampling_defaults(self) -> dict[str, Any]:
        s = zoo.sampling("demo-dit")
        return {"steps": int(s["steps"]), "guidance": float(s["guidance"])}

    def call_options(self) -> dict[str, Any]:
        return dict(zoo.sampling("demo-dit")["call"])

    def text_len(self, pipe: Any) -> int:
        """CLIP's tokens followed by the T5 tokens it was trained with."""
        return int(getattr(pipe, "tokenizer_max_length", 77)) + zoo.DIT_T5_TOKENS
