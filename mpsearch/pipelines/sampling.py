"""Default sampling settings per model: steps and guidance a user would pick for it."""

from __future__ import annotations

from typing import Any

DEFAULT = {"steps": 20, "guidance": 5.0}


def sampling_defaults(model: Any = None) -> dict[str, Any]:
    """`{"steps", "guidance"}` for the demo (its tuned few-step setting), bundled configs, or any model."""
    if model is None or str(model) == "demo":
        from mpsearch.calibration import demo_settings

        steps, guidance = demo_settings()
        return {"steps": steps, "guidance": guidance}
    from mpsearch.model import bundled_config, bundled_configs

    if str(model) in bundled_configs():
        cfg = bundled_config(str(model))
        return {"steps": cfg["default_steps"], "guidance": 0.0 if cfg["default_steps"] <= 1 else DEFAULT["guidance"]}
    return dict(DEFAULT)
