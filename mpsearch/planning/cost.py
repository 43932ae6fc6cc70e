"""Bytes and BitOPs of a layer at a bit-width: the single source of truth shared with the exporter.

A layer quantized to `b` weight bits costs its packed integer weights, plus its scales (and zero
points) at their real dtype and granularity, plus its bias at the float dtype. A 16-bit layer is stored
as fp16. Parameters outside quantizable layers stay at the float dtype. `predicted == written`: the
exporter writes exactly the tensors this module counts (safetensors header bytes excepted).

Each weight format declares its own rule (`mpsearch/export/formats/<name>.py`, one `WeightFormat` per
file, registered in `FORMATS`); this module reads it from that registry. The registry is a leaf that
imports nothing from planning: it is the only thing planning takes from `mpsearch.export`.
"""

from __future__ import annotations

from mpsearch.export.formats import (
    DEFAULT_FORMAT,
    FLOAT_BITS,
    FORMATS,
    WeightFormat,
    get_format,
    register_format,
)
from mpsearch.model import Inventory, Layer

__all__ = ["ACT_BITS", "DEFAULT_FORMAT", "FLOAT_BITS", "FORMATS", "PRUNED", "WEIGHT_BITS", "WeightFormat",
           "fixed_bytes", "fp16_bytes", "get_format", "layer_bitops", "layer_bytes", "layer_wbits", "mean_bits",
           "model_bitops", "model_bytes", "register_format", "stored_mean_bits"]

WEIGHT_BITS = (2, 3, 4, 5, 6, 8, 16)
ACT_BITS = (4, 6, 8, 16)
PRUNED = 0  # w_bits/a_bits of a layer removed with its pruned unit (mpsearch.profiling.pruning): 0 bytes, 0 BitOPs


def layer_bytes(layer: Layer, w_bits: int, fmt: str | WeightFormat | None = None) -> int:
    """Bytes of one layer at `w_bits` nominal weight bits (packed weights + scales + zeros + bias)."""
    return 0 if w_bits == PRUNED else get_format(fmt).layer_bytes(layer, w_bits)


def layer_wbits(layer: Layer, w_bits: int, fmt: str | WeightFormat | None = None) -> int:
    """Weight bits one layer stores at `w_bits` nominal bits (params × stored bits): what a bits budget
    counts, so a 3-bit layer in quanto's 4-bit container costs 4 bits per weight."""
    return 0 if w_bits == PRUNED else layer.params * get_format(fmt).stored_bits(w_bits)


def stored_mean_bits(inv: Inventory, w_bits: dict[str, int], fmt: str | WeightFormat | None = None) -> float:
    """Size-weighted mean stored weight bits over the quantizable layers (layers not named: 16 bits)."""
    total = sum(l.params for l in inv.layers)
    return sum(layer_wbits(l, w_bits.get(l.name, FLOAT_BITS), fmt) for l in inv.layers) / total


def fixed_bytes(inv: Inventory, fmt: str | WeightFormat | None = None) -> int:
    """Bytes of the denoiser parameters that are never quantized."""
    return inv.fixed_params * get_format(fmt).float_bytes


def fp16_bytes(inv: Inventory) -> int:
    """The reference size: every denoiser parameter at 16 bits."""
    return inv.total_params * 2


def layer_bitops(layer: Layer, w_bits: int, a_bits: int) -> int:
    """BitOPs of one denoiser call: MACs × weight bits × activation bits."""
    return layer.macs * w_bits * a_bits


def model_bytes(inv: Inventory, w_bits: dict[str, int], fmt: str | WeightFormat | None = None,
                pruned_fixed_params: int = 0) -> int:
    """Total denoiser bytes for a per-layer weight-bit assignment (layers not named stay at 16 bits).

    `pruned_fixed_params`: unquantized parameters (norms) that left with pruned units."""
    f = get_format(fmt)
    return (fixed_bytes(inv, f) - pruned_fixed_params * f.float_bytes
            + sum(layer_bytes(l, w_bits.get(l.name, FLOAT_BITS), f) for l in inv.layers))


def mean_bits(inv: Inventory, w_bits: dict[str, int]) -> float:
    """Size-weighted mean nominal weight bits over the quantizable layers."""
    total = sum(l.params for l in inv.layers)
    return sum(l.params * w_bits.get(l.name, FLOAT_BITS) for l in inv.layers) / total


def model_bitops(inv: Inventory, bits: dict[str, tuple[int, int]]) -> int:
    return sum(layer_bitops(l, *bits.get(l.name, (FLOAT_BITS, FLOAT_BITS))) for l in inv.layers)
