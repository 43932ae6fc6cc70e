"""The bundled demo models (`mpsearch/zoo/demo/`, an SD pipeline, and `mpsearch/zoo/demo-dit/`, an SD3 one)
trained here, each sampled at its tuned few-step setting."""

from __future__ import annotations

from typing import Any

from mpsearch import zoo
from mpsearch.pipelines.base import PipelineAdapter, register_adapter
from mpsearch.pipelines.sd import StableDiffusion
from mpsearch.pipelines.sd3 import StableDiffusion3


def is_demo(obj: Any) -> bool:
    """Whether `obj` names a bundled demo model (None, "demo", "demo-dit") or is a pipeline loaded from one
    of their folders (`zoo.BUNDLED`): such a model samples demo captions and is scored by the detector."""
    return zoo.bundled_name(obj) is not None


class Bundled(PipelineAdapter):
    """What the bundled models share, put before their family's adapter (`class Demo(Bundled, StableDiffusion)`):
    a pipeline of their family's class, claimed by its path, not its class; sampled at the setting and with
    the pipeline call options tuned for the model named `name` (`zoo.sampling`)."""

    pipelines = ()
    denoisers = ()
    single_file = {}

    def sampling_defaults(self) -> dict[str, Any]:
        s = zoo.sampling(self.name)
        return {"steps": int(s["steps"]), "guidance": float(s["guidance"])}

    def call_options(self) -> dict[str, Any]:
        return dict(zoo.sampling(self.name)["call"])


@register_adapter
class Demo(Bundled, StableDiffusion):
    name = "demo"

    def claims(self, obj: Any) -> bool:
        return zoo.bundled_name(obj) == "demo"


@register_adapter
class DemoDit(Bundled, StableDiffusion3):
    """The bundled DiT: an SD3 pipeline trained with `zoo.DIT_T5_TOKENS` T5 tokens per prompt, so it is
    sampled with that `max_sequence_length` (the pipeline's default pads T5 to 256 tokens)."""

    name = "demo-dit"
    t5_tokens = zoo.DIT_T5_TOKENS

    def claims(self, obj: Any) -> bool:
        """The bundled DiT, and a checkpoint exported from it (`load_quantized` attaches its plan, which
        names the model): it needs the same T5 length wherever it was saved."""
        plan = getattr(obj, "mpsearch_plan", None)
        return zoo.bundled_name(obj) == "demo-dit" or getattr(plan, "model", None) == "demo-dit"
