"""Does torchao's per-module config save, reload, and store low-bit weights compactly? (issue #19)

    pip install torchao==0.18.0 && python benchmarks/torchao_probe.py   # → results/torchao_probe.json

Quantizes three Linear layers of the tiny test UNet through diffusers' `TorchAoConfig` with a
`ModuleFqnToConfig` (int8, int4 per group of 32, int3 per row; the CPU configs: torchao's packed
`Int4WeightOnlyConfig` needs the `mslk` GPU kernels), saves with safetensors, reloads, compares outputs,
and prints the bytes each layer's tensors take in the file against the bytes at the nominal width.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> dict:
    from diffusers import TorchAoConfig, UNet2DConditionModel
    from safetensors import safe_open
    from torchao.quantization import (
        Int4WeightOnlyConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
        ModuleFqnToConfig,
    )
    from torchao.quantization.granularity import PerAxis, PerGroup

    from tests.conftest import build_tiny_pipeline

    unet = build_tiny_pipeline().unet
    names = [n for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear) and m.in_features % 32 == 0][:3]
    configs = {names[0]: (8, Int8WeightOnlyConfig()),
               names[1]: (4, IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32))),
               names[2]: (3, IntxWeightOnlyConfig(weight_dtype=torch.int3, granularity=PerAxis(0)))}
    out: dict = {"torchao": __import__("torchao").__version__, "layers": {}}
    with tempfile.TemporaryDirectory() as tmp:
        unet.save_pretrained(f"{tmp}/fp")
        try:
            UNet2DConditionModel.from_pretrained(f"{tmp}/fp", quantization_config=TorchAoConfig(
                ModuleFqnToConfig({names[0]: Int4WeightOnlyConfig(group_size=32)})))
            out["int4_packed"] = "loads"
        except ImportError as e:
            out["int4_packed"] = f"ImportError: {e}"
        cfg = TorchAoConfig(ModuleFqnToConfig({n: c for n, (_, c) in configs.items()}))
        q = UNet2DConditionModel.from_pretrained(f"{tmp}/fp", quantization_config=cfg, torch_dtype=torch.float32)
        q.save_pretrained(f"{tmp}/q")
        r = UNet2DConditionModel.from_pretrained(f"{tmp}/q", torch_dtype=torch.float32)
        x, t, e = torch.randn(1, 4, 8, 8), 10, torch.randn(1, 77, 32)
        with torch.no_grad():
            out["reload_equal_output"] = bool(torch.equal(q(x, t, e).sample, r(x, t, e).sample))
        with safe_open(f"{tmp}/q/diffusion_pytorch_model.safetensors", "pt") as f:
            keys = list(f.keys())
            for name, (bits, _) in configs.items():
                w = unet.get_submodule(name).weight
                parts = {k: f.get_slice(k) for k in keys if k.startswith(name + ".") and "weight" in k}
                stored = {k: [s.get_dtype(), s.get_shape()] for k, s in parts.items()}
                nbytes = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in parts)
                out["layers"][name] = {"bits": bits, "type": type(r.get_submodule(name).weight).__name__,
                                       "params": w.numel(), "stored": stored, "bytes": nbytes,
                                       "bytes_at_nominal_bits": w.numel() * bits // 8}
    return out


if __name__ == "__main__":
    result = main()
    print(json.dumps(result, indent=1))
    (Path(__file__).parent / "results" / "torchao_probe.json").write_text(json.dumps(result, indent=1))
