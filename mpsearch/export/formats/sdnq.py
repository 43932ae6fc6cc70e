"""`sdnq`: SD.Next's quantization (`pip install sdnq`), loaded natively by diffusers ≥ 0.40.

    pipe = DiffusionPipeline.from_pretrained("out")   # with sdnq installed; no mpsearch code

The checkpoint is what diffusers writes for a model quantized through `SDNQConfig`: `unet/config.json`
with the `quantization_config` (the plan is its `modules_dtype_dict`: one signed integer dtype per group of
layers, every other Linear / Conv in `modules_to_not_convert`) and `diffusion_pytorch_model.safetensors`.
The export runs the sdnq library itself (diffusers' `from_pretrained(..., quantization_config=SDNQConfig)`
on the fp16 denoiser), so the weights are sdnq's own rounding; the simulation calls the same function
(`sdnq.quantizer.sdnq_quantize_layer_weight`) and its dequantizer, so profile, simulation and checkpoint agree.

Cost rule (sdnq 0.2.x with `group_size=0`, `dequantize_fp32=True`, symmetric `int<b>` dtypes): the codes
are bit-packed, `params·b/8` bytes (int8: one byte each; packing works on groups of 8 codes for odd
widths, 4 for 2 and 6 bits, 2 for 4 bits, so a layer whose size is not a multiple of that is not offered
at that width). Scales are float32, one per output channel and per group of input channels: the group
is `2^(1 + b)` input channels for a conv (whose scales are also per kernel position), `2^(2 + b)` for a
Linear, shrunk until it divides the input channels, one group when it does not fit. Biases, norms and
16-bit layers are fp16. No BOS-row substitution (diffusers' runtime cannot run MixDQ's hooks).

sdnq tries `torch.compile` at import; on a CPU without a compiler set `SDNQ_USE_TORCH_COMPILE=0`.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mpsearch.export.formats.base import FLOAT_BITS, NativeFormat, Written, register_format
from mpsearch.model import Layer

WIDTHS = (2, 3, 4, 5, 6, 8)
PACK_GROUP = {2: 4, 3: 8, 4: 2, 5: 8, 6: 4, 7: 8, 8: 1}  # codes sdnq packs together, per width
SCALE_BYTES = 4  # float32 scales (dequantize_fp32=True, sdnq's recommended setting)
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"


def groups(in_channels: int, bits: int, linear: bool) -> int:
    """Scale groups per output row: sdnq's automatic group size (`group_size=0`) fitted to the inputs."""
    size = 2 ** (1 + bits + (1 if linear else 0))
    if size >= in_channels:
        return 1
    n = in_channels // size
    while n * size != in_channels:
        n -= 1
        if n <= 1:
            return 1
        size = in_channels // n
    return n


def config_kwargs(w_bits: dict[str, int], linear_and_conv: list[str]) -> dict[str, Any]:
    """`SDNQConfig` arguments that quantize exactly the plan's layers at their widths, nothing else."""
    by_dtype: dict[str, list[str]] = {}
    for name, bits in sorted(w_bits.items()):
        by_dtype.setdefault(f"int{bits}", []).append(f".{name}.weight")  # leading dot: an exact-prefix match
    keep = [f".{n}.weight" for n in linear_and_conv if n not in w_bits]
    return {"weights_dtype": "int8", "modules_dtype_dict": by_dtype, "modules_to_not_convert": keep,
            "quant_conv": True, "add_skip_keys": False, "minimum_allowed_numel": 0,
            "minimum_allowed_channel_size": 0, "group_size": 0, "dequantize_fp32": True}


class SDNQFormat(NativeFormat):
    def stores(self, layer: Layer, bits: int) -> bool:
        return bits >= FLOAT_BITS or (bits in self.storage and layer.params % PACK_GROUP[bits] == 0
                                      and layer.kind in ("linear", "conv2d"))

    def why_not(self, layer: Layer, bits: int) -> str:
        if bits not in self.storage:
            return f"supported: {sorted(self.storage)}"
        return f"sdnq packs {bits}-bit codes in groups of {PACK_GROUP[bits]}, and the layer has {layer.params}"

    def layer_bytes(self, layer: Layer, w_bits: int) -> int:
        bias = layer.bias * self.float_bytes
        if w_bits >= FLOAT_BITS:
            return layer.params * self.float_bytes + bias
        if not self.stores(layer, w_bits):
            raise ValueError(f"layer {layer.name!r}: format 'sdnq' cannot store {w_bits}-bit weights: "
                             f"{self.why_not(layer, w_bits)}")
        in_ch = layer.weight_shape[1]
        positions = math.prod(layer.weight_shape[2:])  # a conv's scales are per kernel position too
        n_scales = layer.out_channels * groups(in_ch, w_bits, layer.kind == "linear") * positions
        return layer.params * w_bits // 8 + n_scales * SCALE_BYTES + bias

    def fake_quant(self, w: torch.Tensor, bits: int) -> torch.Tensor:
        """sdnq's quantize-dequantize of `w` as the checkpoint stores it (from fp16 weights)."""
        from sdnq.quantizer import sdnq_quantize_layer_weight

        kind = "Linear" if w.ndim == 2 else "Conv2d"
        deq, parts = sdnq_quantize_layer_weight(w.detach().to(torch.float16), layer_class_name=kind,
                                                weights_dtype=f"int{bits}", group_size=0, dequantize_fp32=True,
                                                torch_dtype=w.dtype)
        return deq(**{k: v for k, v in parts.items() if v is not None}, skip_compile=True).to(w.dtype)

    def write_denoiser(self, den: nn.Module, w_bits: dict[str, int], folder: Path, meta: dict[str, Any]) -> Written:
        """The fp16 denoiser saved beside `folder`, reloaded through diffusers with an `SDNQConfig` of the
        plan (sdnq quantizes it), and saved by diffusers into `folder`."""
        import diffusers
        from safetensors import safe_open

        from mpsearch.export import tensorfile

        fp16 = folder.parent / f".{folder.name}.fp16"  # inside the export's staging folder
        fp16.mkdir()
        try:
            den.save_config(fp16)
            tensorfile.save(fp16 / WEIGHTS_FILE, {k: v.detach().to(torch.float16) if v.is_floating_point() else v.detach()
                                                  for k, v in den.state_dict().items()})  # streamed: no in-memory copy
            names = [n for n, m in den.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
            cfg = diffusers.SDNQConfig(**config_kwargs(w_bits, names))
            type(den).from_pretrained(str(fp16), quantization_config=cfg, torch_dtype=torch.float16).save_pretrained(folder)
        finally:
            shutil.rmtree(fp16, ignore_errors=True)
        path = folder / WEIGHTS_FILE
        params = {n for n, _ in den.named_parameters()}
        with safe_open(str(path), "pt") as f:  # a quantized layer stores `<name>.weight` (codes) and `<name>.scale`
            tensor_bytes = sum(_nbytes(f, k) for k in f.keys() if k in params or f"{k.rpartition('.')[0]}.weight" in params)
        return Written(path=path, tensor_bytes=tensor_bytes, file_bytes=path.stat().st_size)

    def load_denoiser(self, folder: Path, dtype: torch.dtype) -> nn.Module:
        """Diffusers' own loading of a pre-quantized SDNQ checkpoint (`from_pretrained`)."""
        import diffusers

        cls = getattr(diffusers, json.loads((folder / "config.json").read_text())["_class_name"])
        return cls.from_pretrained(str(folder), torch_dtype=dtype)


def _nbytes(f: Any, key: str) -> int:
    t = f.get_tensor(key)
    return t.numel() * t.element_size()


SDNQ = register_format(SDNQFormat(
    name="sdnq",
    storage={b: b for b in WIDTHS},
    scale_bytes=SCALE_BYTES,
    notes="SD.Next quantization (sdnq): bit-packed int2..int8 per module, float32 scales per group of inputs; "
          "Linear and Conv",
))
