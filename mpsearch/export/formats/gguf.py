"""`gguf`: one `.gguf` file with a tensor type per tensor, loaded natively by diffusers and ComfyUI-GGUF.

    from diffusers import GGUFQuantizationConfig, UNet2DConditionModel
    unet = UNet2DConditionModel.from_single_file("out/unet/diffusion_pytorch_model.gguf", config="out",
        subfolder="unet", quantization_config=GGUFQuantizationConfig(compute_dtype=torch.float16))

Cost rule (llama.cpp's block layouts, `gguf.GGML_QUANT_SIZES`): a quantized weight row is cut into blocks,
each block stores its codes and its scales together:

| bits | row a multiple of 256 (K-quant super blocks) | row a multiple of 32 only |
|---|---|---|
| 8 | Q8_0: 34 bytes / 32 weights (fp16 scale) | Q8_0 |
| 6 | Q6_K: 210 bytes / 256 (16 int8 scales + fp16 d) | - |
| 5 | Q5_K: 176 bytes / 256 (8 6-bit scales and mins + fp16 d, dmin) | Q5_0: 22 bytes / 32 |
| 4 | Q4_K: 144 bytes / 256 (as Q5_K) | Q4_0: 18 bytes / 32 |
| 3 | Q3_K: 110 bytes / 256 (16 6-bit scales + fp16 d) | - |
| 2 | Q2_K: 84 bytes / 256 (16 4-bit scales and mins + fp16 d, dmin) | - |

Only `nn.Linear` weights are quantized: diffusers' GGUF loader replaces Linear layers only (a quantized
conv weight would not load), and a row must be whole blocks, so which widths exist depends on the layer
(`stores`). Everything else (biases, norms, convs, 16-bit layers) is F16; buffers are written as they are.

Quantizer: Q8_0, Q5_0 and Q4_0 are the `gguf` library's own (`gguf.quants.quantize`). The library cannot
quantize K-quants (it only dequantizes them), so their encoders are written here: per sub-block min-max
(Q2_K, Q4_K, Q5_K: scale and min; Q3_K, Q6_K: signed scale with the extreme value on the negative end),
sub-block scales quantized against the fp16 super-block scale, codes recomputed with the stored scales.
The simulation is diffusers' own dequantization of exactly those bytes (`dequantize_gguf_tensor`, fp16
arithmetic, as `GGUFLinear` runs it), so what mpsearch profiles and simulates is what diffusers computes;
the `gguf` library's decoder (fp32) agrees with it to fp16 rounding. No BOS-row substitution: a file loaded without mpsearch cannot run MixDQ's BOS hooks.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mpsearch.export.formats.base import FLOAT_BITS, NativeFormat, Written, register_format
from mpsearch.model import Layer

GGUF_FILE = "diffusion_pytorch_model.gguf"
QK_K, QK = 256, 32  # super-block (K-quants) and block (Q8_0, Q4_0, Q5_0) sizes, in weights
K_TYPES = {2: "Q2_K", 3: "Q3_K", 4: "Q4_K", 5: "Q5_K", 6: "Q6_K", 8: "Q8_0"}
BLOCK_TYPES = {4: "Q4_0", 5: "Q5_0", 8: "Q8_0"}
TYPE_BYTES = {"Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
              "Q8_0": (32, 34), "Q4_0": (32, 18), "Q5_0": (32, 22)}  # (weights, bytes) per block: gguf's own table
COMFY_ARCH = {"sd": "sd1", "sdxl": "sdxl"}  # ComfyUI-GGUF's names for the families it loads


def type_name(kind: str, row: int, bits: int) -> str | None:
    """The GGUF type that holds a `kind` layer with rows of `row` weights at `bits`, or None."""
    if bits >= FLOAT_BITS:
        return "F16"
    if kind != "linear":
        return None
    if row % QK_K == 0:
        return K_TYPES.get(bits)
    return BLOCK_TYPES.get(bits) if row % QK == 0 else None


# ---- K-quant encoders (the `gguf` library only decodes these): blocks [n, 256] float32 → bytes [n, size]


def _f16(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(stored fp16 bytes [n, 2], the value they decode to)`."""
    h = x.to(torch.float16)
    return h.view(torch.uint8).reshape(-1, 2), h.float()


def _codes(x: torch.Tensor, step: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """round(x / step) clamped to [lo, hi]; 0 where the step is 0 (lo <= 0 <= hi). In place on a new
    tensor, the zero steps masked by their (small, broadcast) mask: no full-size `where` or zeros."""
    zero = step == 0
    q = torch.div(x, torch.where(zero, torch.ones_like(step), step)).round_().clamp_(lo, hi)
    return q.masked_fill_(zero, 0) if zero.any() else q


def _asymmetric(sub: torch.Tensor, levels: int, code_max: int):
    """Min-max per sub-block with a non-positive min: `x ≈ d·sc·q − dmin·m`, q in [0, levels]."""
    lo = sub.amin(-1).clamp_max(0)
    scale, mn = (sub.amax(-1) - lo) / levels, -lo
    d_bytes, d = _f16(scale.amax(-1) / code_max)
    m_bytes, dmin = _f16(mn.amax(-1) / code_max)
    sc = _codes(scale, d[:, None], 0, code_max)
    m = _codes(mn, dmin[:, None], 0, code_max)
    q = _codes(sub + (dmin[:, None] * m)[..., None], (d[:, None] * sc)[..., None], 0, levels)
    return q.to(torch.uint8), sc.to(torch.uint8), m.to(torch.uint8), d_bytes, m_bytes


def _symmetric(sub: torch.Tensor, qmin: int, code_min: int, code_max: int):
    """Signed scale per sub-block, the extreme value on the negative end: `x ≈ d·sc·q`, q in [qmin, -qmin-1]."""
    idx = sub.abs().argmax(-1, keepdim=True)
    scale = sub.gather(-1, idx).squeeze(-1) / qmin
    d_bytes, d = _f16(scale.abs().amax(-1) / code_max)
    sc = _codes(scale, d[:, None], code_min, code_max)
    q = _codes(sub, (d[:, None] * sc)[..., None], qmin, -qmin - 1)
    return (q - qmin).to(torch.uint8), sc.to(torch.int16), d_bytes


def _pack(v: torch.Tensor, width: int, groups: int) -> torch.Tensor:
    """Bytes whose bit fields `k·width` hold `v[..., k, :]`: v [n, groups, 8 // width, m] → [n, groups·m]."""
    out = torch.zeros(v.shape[0], groups, v.shape[-1], dtype=torch.uint8)
    for k in range(8 // width):
        out |= v[:, :, k] << (k * width)
    return out.reshape(v.shape[0], -1)


def _scales_k4(sc: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Q4_K / Q5_K's 12 bytes of 6-bit scales and mins (8 each), as `gguf`'s `get_scale_min` reads them."""
    lo = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    mid = m[:, :4] | ((m[:, 4:] >> 4) << 6)
    hi = (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4)
    return torch.cat([lo, mid, hi], 1)


def _q2_k(x: torch.Tensor) -> torch.Tensor:
    q, sc, m, d, dmin = _asymmetric(x.reshape(-1, 16, 16), 3, 15)
    return torch.cat([sc | (m << 4), _pack(q.reshape(-1, 2, 4, 32), 2, 2), d, dmin], 1)


def _q3_k(x: torch.Tensor) -> torch.Tensor:
    u, sc, d = _symmetric(x.reshape(-1, 16, 16), -4, -32, 31)
    u = u.reshape(-1, QK_K)
    code = (sc + 32).to(torch.uint8)
    scales = torch.cat([(code[:, :8] & 15) | ((code[:, 8:] & 15) << 4), _pack((code >> 4).reshape(-1, 1, 4, 4), 2, 1)], 1)
    hmask = _pack((u >> 2).reshape(-1, 1, 8, 32), 1, 1)
    return torch.cat([hmask, _pack((u & 3).reshape(-1, 2, 4, 32), 2, 2), scales, d], 1)


def _q45_k(x: torch.Tensor, bits: int) -> torch.Tensor:
    q, sc, m, d, dmin = _asymmetric(x.reshape(-1, 8, 32), (1 << bits) - 1, 63)
    low = _pack((q & 15).reshape(-1, 4, 2, 32), 4, 4)
    high = [_pack((q >> 4).reshape(-1, 1, 8, 32), 1, 1)] if bits == 5 else []
    return torch.cat([d, dmin, _scales_k4(sc, m), *high, low], 1)


def _q6_k(x: torch.Tensor) -> torch.Tensor:
    u, sc, d = _symmetric(x.reshape(-1, 16, 16), -32, -128, 127)
    u = u.reshape(-1, QK_K)
    ql = _pack((u & 15).reshape(-1, 2, 2, 64), 4, 2)
    qh = _pack((u >> 4).reshape(-1, 2, 4, 32), 2, 2)
    return torch.cat([ql, qh, sc.to(torch.int8).view(torch.uint8), d], 1)


ENCODERS = {"Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": lambda x: _q45_k(x, 4), "Q5_K": lambda x: _q45_k(x, 5),
            "Q6_K": _q6_k}


def encode(w: torch.Tensor, qtype: str) -> np.ndarray:
    """`w` [out, in] as GGUF bytes [out, in / block · block bytes] of type `qtype`."""
    import gguf

    rows = w.detach().float().reshape(w.shape[0], -1)
    if qtype in ENCODERS:
        blocks = ENCODERS[qtype](rows.reshape(-1, QK_K).contiguous())
        return blocks.reshape(rows.shape[0], -1).numpy()
    return gguf.quants.quantize(rows.numpy(), gguf.GGMLQuantizationType[qtype])


def decode(data: np.ndarray, qtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The weight diffusers' GGUF runtime computes from `data` (its own dequantization, fp16 arithmetic)."""
    import gguf
    from diffusers.quantizers.gguf.utils import GGUFParameter, dequantize_gguf_tensor

    param = GGUFParameter(torch.from_numpy(np.ascontiguousarray(data)), quant_type=gguf.GGMLQuantizationType[qtype])
    return dequantize_gguf_tensor(param).float().reshape(shape)


class GGUFFormat(NativeFormat):
    def type_of(self, layer: Layer, bits: int) -> str | None:
        return type_name(layer.kind, layer.params // layer.out_channels, bits)

    def stores(self, layer: Layer, bits: int) -> bool:
        return self.type_of(layer, bits) is not None

    def why_not(self, layer: Layer, bits: int) -> str:
        if layer.kind != "linear":
            return "diffusers' GGUF loader quantizes Linear layers only"
        row = layer.params // layer.out_channels
        return (f"rows of {row} weights are not whole {QK_K}-weight super blocks" if row % QK == 0 else
                f"rows of {row} weights are not whole {QK}-weight blocks") + f" for {bits}-bit GGUF types"

    def layer_bytes(self, layer: Layer, w_bits: int) -> int:
        qtype = self.type_of(layer, w_bits)
        if qtype is None:
            raise ValueError(f"layer {layer.name!r}: format 'gguf' cannot store {w_bits}-bit weights: "
                             f"{self.why_not(layer, w_bits)}")
        bias = layer.bias * self.float_bytes
        if qtype == "F16":
            return layer.params * self.float_bytes + bias
        per, size = TYPE_BYTES[qtype]
        return layer.params // per * size + bias

    def unsupported(self, den: nn.Module) -> str | None:
        if not hasattr(type(den), "from_single_file"):
            return (f"diffusers loads GGUF files through `from_single_file`, which {type(den).__name__} does not "
                    "have; choose --format sdnq, quanto or packed")
        return None

    def fake_quant(self, w: torch.Tensor, bits: int) -> torch.Tensor:
        kind = "linear" if w.ndim == 2 else "conv2d"
        qtype = type_name(kind, math.prod(w.shape[1:]), bits)
        if qtype is None:
            raise ValueError(f"format 'gguf' cannot store a {tuple(w.shape)} {kind} weight at {bits} bits")
        return decode(encode(w, qtype), qtype, tuple(w.shape)).to(w.dtype)

    def write_denoiser(self, den: nn.Module, w_bits: dict[str, int], folder: Path, meta: dict[str, Any]) -> Written:
        """`folder/diffusion_pytorch_model.gguf`: every denoiser tensor (diffusers names), the plan's
        layers at their GGUF types, the rest F16 (buffers as they are); `config.json` beside it."""
        import gguf

        path = folder / GGUF_FILE
        writer = gguf.GGUFWriter(str(path), COMFY_ARCH.get(meta.get("family", ""), meta.get("family") or "diffusers"))
        writer.add_name(meta.get("model", ""))
        writer.add_string("mpsearch.fingerprint", meta.get("fingerprint", ""))
        params = dict(den.named_parameters())
        tensor_bytes = 0
        for name, t in den.state_dict().items():
            module, _, kind = name.rpartition(".")
            bits = w_bits.get(module, FLOAT_BITS) if kind == "weight" and name in params else FLOAT_BITS
            if name not in params:  # a buffer: written as it is, not a parameter the cost model counts
                writer.add_tensor(name, t.detach().contiguous().numpy())
                continue
            qtype = type_name("linear" if t.ndim == 2 else "conv2d", math.prod(t.shape[1:]), bits)
            if qtype == "F16":
                data = t.detach().to(torch.float16).contiguous().numpy()
                writer.add_tensor(name, data)
            else:
                data = encode(t, qtype)
                writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType[qtype])
            tensor_bytes += data.nbytes
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        den.save_config(folder)
        return Written(path=path, tensor_bytes=tensor_bytes, file_bytes=path.stat().st_size)

    def load_denoiser(self, folder: Path, dtype: torch.dtype) -> nn.Module:
        """Diffusers' own GGUF loading: `from_single_file` with `GGUFQuantizationConfig` (no mpsearch code)."""
        import json

        import diffusers

        cls = getattr(diffusers, json.loads((folder / "config.json").read_text())["_class_name"])
        cfg = diffusers.GGUFQuantizationConfig(compute_dtype=dtype)
        return cls.from_single_file(str(folder / GGUF_FILE), config=str(folder), quantization_config=cfg,
                                    torch_dtype=dtype)


GGUF = register_format(GGUFFormat(
    name="gguf",
    storage={b: b for b in (2, 3, 4, 5, 6, 8)},
    notes="GGUF (llama.cpp) block types per tensor: Q2_K..Q6_K, Q8_0 (Q4_0/Q5_0 for rows of 32-weight blocks); "
          "Linear layers only; F16 for the rest",
))
