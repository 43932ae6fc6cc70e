"""The bundled demo model (`mpsearch/zoo/demo/`): an SD pipeline trained here, sampled at its tuned
few-step setting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mpsearch import zoo
from mpsearch.pipelines.base import register_adapter
from mpsearch.pipelines.sd import StableDiffusion


def is_demo(obj: Any) -> bool:
    """Whether `obj` names the demo (None, "demo") or is the pipeline loaded from `zoo.DEMO_PATH`."""
    if obj is None or isinstance(obj, (str, Path)):
        return obj is None or str(obj) == "demo"
    path = getattr(getattr(obj, "config", None), "_name_or_path", None)
    return bool(path) and Path(str(path)).resolve() == zoo.DEMO_PATH


@register_adapter
class Demo(StableDiffusion):
    name = "demo"
    pipelines = ()  # an SD pipeline: claimed by its path, not its class
    denoisers = ()
    single_file = {}

    def claims(self, obj: Any) -> bool:
        return is_demo(obj)

    def sampling_defaults(self) -> dict[str, Any]:
        return {"steps": int(zoo.DEMO_STEPS), "guidance": float(zoo.DEMO_GUIDANCE)}
