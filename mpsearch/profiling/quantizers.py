"""Fake quantizers for weights and activations (MixDQ / Q-Diffusion style).

Weights: per-output-channel (or per-group) min-max, symmetric by default (MixDQ's SDXL-turbo config),
round-to-nearest. `quantize_weight` returns the integers and scales the exporter packs; `fake_quant_weight`
returns their dequantized float tensor, so simulation and export agree bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class WeightQuantConfig:
    """`group_size` None = per output channel. `mse_search`: scan range-shrink factors for lowest L2 error.
    `format`: a weight format with its own rounding (`mpsearch.export.formats`, e.g. gguf, sdnq): weights
    are fake-quantized by that format's quantizer, as its checkpoint stores them, instead of min-max."""

    symmetric: bool = True
    group_size: int | None = None
    mse_search: bool = False
    search_steps: int = 100
    format: str | None = None

    def to_dict(self) -> dict:
        """The settings as profile metadata records them (`format` only when set: older profiles match)."""
        d = {"symmetric": self.symmetric, "group_size": self.group_size, "mse_search": self.mse_search,
             "search_steps": self.search_steps}
        return d if self.format is None else {**d, "format": self.format}


def _rows(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """Weight as [n_scales, elements per scale]."""
    flat = w.reshape(w.shape[0], -1)
    if group_size is None:
        return flat
    if flat.shape[1] % group_size:
        raise ValueError(f"row length {flat.shape[1]} is not a multiple of group size {group_size}")
    return flat.reshape(-1, group_size)


def _qparams(rows: torch.Tensor, bits: int, cfg: WeightQuantConfig, shrink: float = 1.0):
    # amin and amax: two fast reductions (a row-wise aminmax took 3x as long on CPU), no |rows| copy
    lo, hi = rows.amin(dim=1, keepdim=True), rows.amax(dim=1, keepdim=True)
    if cfg.symmetric:
        qmax = 2 ** (bits - 1) - 1
        absmax = torch.maximum(-lo, hi) * shrink  # = rows.abs().amax(1), without the |rows| copy
        scale = (absmax / qmax).clamp_min(1e-12)
        return scale, torch.zeros_like(scale), -(qmax + 1), qmax
    lo = lo.clamp_max(0) * shrink
    hi = hi.clamp_min(0) * shrink
    scale = ((hi - lo) / (2**bits - 1)).clamp_min(1e-12)
    zero = torch.round(-lo / scale)
    return scale, zero, 0, 2**bits - 1


def _stored(scale: torch.Tensor) -> torch.Tensor:
    """Scales as the checkpoint stores them (fp16), kept above fp16's smallest normal number."""
    return scale.half().float().clamp_min(float(torch.finfo(torch.float16).tiny))


def quantize_weight(w: torch.Tensor, bits: int, cfg: WeightQuantConfig = WeightQuantConfig(),
                    dtype: torch.dtype = torch.int32):
    """Integers `q` (same shape as `w`, in `dtype`), `scale` and `zero` ([n_scales, 1], float32).

    Dequantize with `(q - zero) * scale` row-wise. Scales are rounded to fp16, the dtype they are stored
    in, before the integers are computed, so a stored checkpoint reproduces the simulation exactly.
    `dtype=torch.int8` holds every width up to 8 bits in a quarter of int32's memory (the export's choice).
    """
    rows = _rows(w.detach().float(), cfg.group_size)
    if not cfg.mse_search:  # one range, nothing to compare: round in place, no error tensor
        scale, zero, qmin, qmax = _qparams(rows, bits, cfg)
        scale = _stored(scale)
        owned = rows.untyped_storage().data_ptr() != w.untyped_storage().data_ptr()  # a float copy of w
        q = rows.div_(scale) if owned else rows / scale
        q.round_()
        if not cfg.symmetric:
            q.add_(zero)
        return q.clamp_(qmin, qmax).reshape(w.shape).to(dtype), scale, zero
    best = None
    for s in torch.linspace(1.0, 0.2, cfg.search_steps):
        scale, zero, qmin, qmax = _qparams(rows, bits, cfg, float(s))
        scale = _stored(scale)
        q = torch.clamp(torch.round(rows / scale) + zero, qmin, qmax)
        err = ((q - zero) * scale - rows).pow(2).sum(dim=1, keepdim=True)
        if best is None:
            best = [q, scale, zero, err]
        else:
            better = err < best[3]
            for i, t in enumerate((q, scale, zero, err)):
                best[i] = torch.where(better, t, best[i])
    q, scale, zero, _ = best
    return q.reshape(w.shape).to(dtype), scale, zero


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int | None = None):
    rows = _rows(q.float(), group_size)
    return ((rows - zero) * scale).reshape(q.shape)


def fake_quant_weight(w: torch.Tensor, bits: int, cfg: WeightQuantConfig = WeightQuantConfig()) -> torch.Tensor:
    """The float weight a `bits`-bit checkpoint reproduces (same dtype as `w`). 16 bits = unchanged."""
    if bits >= 16:
        return w
    if cfg.format is not None:
        from mpsearch.export.formats import get_format

        return get_format(cfg.format).fake_quant(w, bits)
    q, scale, zero = quantize_weight(w, bits, cfg)
    return dequantize_weight(q, scale, zero, cfg.group_size).to(w.dtype)


# --------------------------------------------------------------------------------------------------
# Activations


@dataclass(frozen=True)
class ActQuantConfig:
    """Per-tensor activation quantizer settings (MixDQ: asymmetric min-max, EMA momentum 0.95).

    Ranges come from `rounds` passes of EMA over shuffled calibration batches of `batch_size` rows drawn
    from every denoising step (Q-Diffusion's timestep-aware calibration). The range always includes 0.
    """

    symmetric: bool = False
    momentum: float = 0.95
    rounds: int = 4
    batch_size: int = 32
    seed: int = 0


def fake_quant_act(x: torch.Tensor, lo, hi, bits: int, symmetric: bool = False) -> torch.Tensor:
    """Quantize-dequantize `x` with range `[lo, hi]` (floats or tensors broadcastable to `x`) at `bits`.

    Asymmetric: `scale = (hi - lo) / (2^b - 1)`, integer zero point; symmetric: `scale = max|.| / (2^(b-1) - 1)`.
    16 bits or more returns `x` unchanged. When autograd tracks `x` (quantization-aware training,
    `mpsearch.recovery.distill`) the gradient passes straight through (STE); the forward value is unchanged (up to
    float rounding).
    """
    if bits >= 16:
        return x
    lo = torch.as_tensor(lo, dtype=torch.float32, device=x.device).clamp_max(0)
    hi = torch.as_tensor(hi, dtype=torch.float32, device=x.device).clamp_min(0)
    xf = x.float()
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = (torch.maximum(-lo, hi) / qmax).clamp_min(1e-12)
        out = torch.clamp(torch.round(xf / scale), -qmax - 1, qmax) * scale
    else:
        qmax = 2**bits - 1
        scale = ((hi - lo) / qmax).clamp_min(1e-12)
        zero = torch.round(-lo / scale)
        out = (torch.clamp(torch.round(xf / scale) + zero, 0, qmax) - zero) * scale
    out = out.to(x.dtype)
    if x.requires_grad and torch.is_grad_enabled():
        return x + (out - x).detach()
    return out
