"""A tiny copy of MixDQ's published layout for a small model, written the way their files are: YAML maps
of `model.<layer>` to [metric at 2, 4, 8 bits] (sensitivity logs) or to a size ratio (ratio configs)."""

from pathlib import Path

import numpy as np
import yaml

MODEL = "tiny_sd"


def write_logs(root: Path, inv, *, seed: int = 0, acts: bool = True) -> dict:
    """Write `sensitivity_log/` and `optimize/tensor_ratio/` for `inv` under `root`; returns
    {(tensor, metric): {layer: [values]}} as written."""
    rng = np.random.default_rng(seed)
    written = {}
    for tensor in ("weight", "act") if acts else ("weight",):
        sqnr = {la.name: [round(float(b), 6) for b in rng.uniform(0, 20) + np.array([0.0, 12.0, 36.0])] for la in inv}
        ssim = {la.name: [round(float(1 - x), 8) for x in rng.uniform(0.001, 0.05) * np.array([1.0, 0.1, 0.002])]
                for la in inv if la.group == "content"}  # fmt: skip
        for metric, values in (("sqnr", sqnr), ("ssim", ssim)):
            folder = root / "sensitivity_log" / MODEL / tensor / metric / f"bs32_split_{metric}_{tensor}"
            folder.mkdir(parents=True)
            (folder / "sensitivity.yaml").write_text(yaml.safe_dump({f"model.{k}": v for k, v in values.items()}))
            written[tensor, metric] = values
    ratios = root / "optimize" / "tensor_ratio" / MODEL
    ratios.mkdir(parents=True)
    first = inv.layers[0].params
    (ratios / "weight_ratio_config.yaml").write_text(yaml.safe_dump({f"model.{la.name}": la.params / first for la in inv}))
    (ratios / "act_ratio_config.yaml").write_text(yaml.safe_dump({f"model.{la.name}": la.act_numel / 320 for la in inv}))
    return written


def log_file(root: Path, tensor: str, metric: str) -> Path:
    return next((root / "sensitivity_log" / MODEL / tensor / metric).glob("*/sensitivity.yaml"))
