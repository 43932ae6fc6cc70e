"""Bytes and BitOPs of a layer at a bit-width: the single source of truth shared with the exporter.

A layer quantized to `b` weight bits costs its packed integer weights, plus its scales (and zero
points) at their real dtype and granularity, plus its bias at the float dtype. A 16-bit layer is stored
as fp16. Parameters outside quantizable layers stay at the float dtype. `predicted == written`: the
exporter writes exactly the tensors this module counts (safetensors header bytes excepted).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from mpsearch.model import Inventory, Layer
from solvers.registry import Registry

FLOAT_BITS = 16
WEIGHT_BITS = (2, 3, 4, 5, 6, 8, 16)
ACT_BITS = (4, 6, 8, 16)
PRUNED = 0  # w_bits/a_bits of a layer removed with its pruned unit (mpsearch.profiling.pruning): 0 bytes, 0 BitOPs


@dataclass(frozen=True)
class WeightFormat:
    """How quantized weights are stored.

    `storage`: nominal bits → bits actually stored (a backend without 3-bit storage keeps 3-bit weights
    in 4-bit containers; they cost 4 bits and the plan says so). `group_size`: None = one scale per
    output channel, else one per group of that many input elements in a row. `scale_bytes` / `zero_bytes`
    per scale / zero point (0 = symmetric, no zero point). `float_bytes` for bias, 16-bit layers and
    unquantized parameters.
    """

    name: str
    storage: dict[int, int]
    group_size: int | None = None
    scale_bytes: int = 2
    zero_bytes: int = 0
    float_bytes: int = 2
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def stored_bits(self, bits: int) -> int:
        if bits >= FLOAT_BITS:
            return FLOAT_BITS
        try:
            return self.storage[bits]
        except KeyError:
            raise ValueError(
                f"format {self.name!r} cannot store {bits}-bit weights (supported: {sorted(self.storage)})"
            ) from None

    @property
    def widths(self) -> tuple[int, ...]:
        """Widths below 16 bits stored as they are, in no wider container: the only ones worth offering
        (quanto's 3-bit weights cost what 4-bit ones do and are worse)."""
        return tuple(sorted(b for b, s in self.storage.items() if b == s))

    def check_offered(self, bits: int) -> None:
        """Refuse offering a width the format cannot store, or stores in a wider container."""
        stored = self.stored_bits(bits)
        if stored != bits and bits < FLOAT_BITS:
            raise ValueError(f"format {self.name!r} stores {bits}-bit weights in {stored}-bit containers, as large "
                             f"as {stored}-bit weights and less accurate: choose from its stored widths "
                             f"{', '.join(map(str, self.widths))}")

    def n_scales(self, layer: Layer) -> int:
        row = layer.params // layer.out_channels
        groups = 1 if self.group_size is None else math.ceil(row / self.group_size)
        return layer.out_channels * groups

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


FORMATS: Registry[WeightFormat] = Registry("weight format", unknown="unknown {kind} {name!r}; known: {names}")


def register_format(fmt: WeightFormat) -> WeightFormat:
    """Make `fmt` known to the cost model by its name (`--format NAME`)."""
    return FORMATS.add(fmt.name, fmt)


# Our own bit-exact packing: every nominal width stored at exactly that many bits, one fp16 scale per
# output channel (MixDQ's symmetric per-channel min-max).
register_format(
    WeightFormat(
        name="packed",
        storage={b: b for b in WEIGHT_BITS if b < FLOAT_BITS},
        notes="mpsearch bit-packing: b bits per weight, fp16 per-channel scales, symmetric",
    )
)
# optimum-quanto: int2 / int4 / int8 containers; 3 → 4, 5 and 6 → 8.
register_format(
    WeightFormat(
        name="quanto",
        storage={2: 2, 3: 4, 4: 4, 5: 8, 6: 8, 8: 8},
        notes="optimum-quanto qint2/qint4/qint8 containers, fp16 per-channel scales, symmetric",
    )
)
DEFAULT_FORMAT = "packed"


def get_format(fmt: str | WeightFormat | None) -> WeightFormat:
    if isinstance(fmt, WeightFormat):
        return fmt
    return FORMATS.lookup(fmt or DEFAULT_FORMAT)


def layer_bytes(layer: Layer, w_bits: int, fmt: str | WeightFormat | None = None) -> int:
    """Bytes of one layer at `w_bits` nominal weight bits (packed weights + scales + zeros + bias)."""
    f = get_format(fmt)
    if w_bits == PRUNED:
        return 0
    bias = layer.bias * f.float_bytes
    stored = f.stored_bits(w_bits)
    if stored >= FLOAT_BITS:
        return layer.params * f.float_bytes + bias
    packed = math.ceil(layer.params * stored / 8)
    return packed + f.n_scales(layer) * (f.scale_bytes + f.zero_bytes) + bias


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
