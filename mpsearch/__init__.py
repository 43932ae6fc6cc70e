"""mpsearch: mixed-precision bit-width search for diffusion models.

Public verbs: `inventory`, `profile`, `solve`, `search`, `export`, `evaluate`, `load_quantized`, plus the
objects `Budget`, `Plan`, `Profile`, the verbs' options (`ProfileOptions`, `SolveOptions`,
`EvaluateOptions`), and `import_profile` (other tools' sensitivity logs). Heavy modules load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "inventory": "mpsearch.model",
    "load_pipeline": "mpsearch.model",
    "Inventory": "mpsearch.model",
    "Layer": "mpsearch.model",
    "Budget": "mpsearch.planning.budget",
    "Plan": "mpsearch.planning.plan",
    "profile": "mpsearch.profiling.profiler",
    "ProfileOptions": "mpsearch.profiling.profiler",
    "Profile": "mpsearch.profiling.store",
    "merge": "mpsearch.profiling.store",
    "import_profile": "mpsearch.profiling.importers",
    "register_metric": "mpsearch.profiling.metrics",
    "solve": "mpsearch.planning.planner",
    "search": "mpsearch.planning.planner",
    "SolveOptions": "mpsearch.planning.planner",
    "export": "mpsearch.export.write",
    "load_quantized": "mpsearch.export.load",
    "fake_quantize": "mpsearch.export.simulate",
    "evaluate": "mpsearch.evaluation.evaluator",
    "EvaluateOptions": "mpsearch.evaluation.evaluator",
    "generate": "mpsearch.pipelines.generate",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mpsearch' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
