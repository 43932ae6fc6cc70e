"""The weight-format contract: one object per format holds its cost rule, its storage and its runtime.

A format is a `WeightFormat` subclass in its own file under `mpsearch/export/formats/`, registered with
`register_format(Instance(name=..., storage={...}))`. One object answers the three questions the flow asks:

- cost rule (what `mpsearch.planning.cost` charges; `predicted bytes == bytes written`): which nominal
  widths exist (`storage`: nominal bits → stored bits, e.g. quanto keeps 3-bit weights in 4-bit
  containers), the scales' granularity (`group_size`) and dtypes (`scale_bytes`, `zero_bytes`), the float
  dtype of everything unquantized (`float_bytes`); `layer_bytes` turns that into bytes per layer.
- storage (mpsearch's checkpoint layout, `mpsearch.export.write`): `encode` turns the signed integer codes
  `q` of `mpsearch.profiling.quantizers.quantize_weight` (symmetric: `q ∈ [-2^(b-1), 2^(b-1) - 1]` for `b`
  nominal bits) and the per-output-channel scales into named tensors, and `decode` turns them back.
  Scales are fp16 of shape `[out, 1, ...]` (broadcastable to the weight, as optimum-quanto keeps them).
  The code offset (`zero_point`) is a constant of the format, recorded in the quantization map, never
  stored, so a layer costs exactly what `layer_bytes` charges.
- runtime (`mpsearch.export.load`): `module` builds the module that computes with the stored codes.

A native format (`NativeFormat`: `gguf`, `sdnq`) writes the checkpoint its own runtime loads without
mpsearch (`write_denoiser` / `load_denoiser`), and brings its own quantizer (`fake_quant`), so that the
profile, the simulation and the file round weights the same way. Which widths exist may depend on the layer
(`stores`: GGUF quantizes Linear rows of whole blocks only).

This module imports nothing from `mpsearch.planning` or the rest of `mpsearch.export`: the cost model
reads the rules from here, so data still flows one way.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from mpsearch.model import Layer
from solvers.registry import Registry

FLOAT_BITS = 16  # "unquantized": stored at the format's float dtype (`float_bytes`)


@dataclass(frozen=True)
class WeightFormat:
    """How quantized weights are stored (the cost rule; subclasses add storage and runtime).

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

    native: ClassVar[bool] = False  # writes its own checkpoint (`NativeFormat`), else mpsearch's layout
    keeps_bos_rows: ClassVar[bool] = True  # its runtime substitutes MixDQ's full-precision BOS rows

    # ---- cost rule

    def stores(self, layer: Layer, bits: int) -> bool:
        """Whether this layer can be stored at `bits` (16 always; a width the format has, for every layer)."""
        return bits >= FLOAT_BITS or bits in self.storage

    def why_not(self, layer: Layer, bits: int) -> str:
        """Why `stores(layer, bits)` is False, for error messages."""
        return f"supported: {sorted(self.storage)}"

    def unsupported(self, den: nn.Module) -> str | None:
        """Why the format's runtime cannot load this denoiser at all (None: it can)."""
        return None

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

    def layer_bytes(self, layer: Layer, w_bits: int) -> int:
        """Bytes of one (unpruned) layer at `w_bits` nominal bits: codes + scales + zeros + bias."""
        bias = layer.bias * self.float_bytes
        stored = self.stored_bits(w_bits)
        if stored >= FLOAT_BITS:
            return layer.params * self.float_bytes + bias
        packed = math.ceil(layer.params * stored / 8)
        return packed + self.n_scales(layer) * (self.scale_bytes + self.zero_bytes) + bias

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # ---- storage (mpsearch's checkpoint layout): suffixes follow `<layer>.weight.`

    def qtype(self, stored_bits: int) -> str:
        """The name the quantization map gives the stored type (`packed4`, `qint4`)."""
        raise NotImplementedError

    def zero_point(self, stored_bits: int) -> int:
        """The offset added to the signed codes before they are stored (recorded in the quantization map)."""
        raise NotImplementedError

    def encode(self, q: torch.Tensor, scale: torch.Tensor, stored_bits: int) -> dict[str, torch.Tensor]:
        """The stored tensors of signed codes `q` (any integer dtype; the export passes int8)."""
        raise NotImplementedError

    def decode(self, tensors: dict[str, torch.Tensor], stored_bits: int, shape: tuple[int, ...]):
        """`(q, scale)`: signed int8 codes of `shape` and float32 scales of `scale_shape(shape)`."""
        raise NotImplementedError

    # ---- runtime

    def module(self, module: nn.Module, q: torch.Tensor, scale: torch.Tensor, stored_bits: int,
               dtype: torch.dtype) -> nn.Module:
        """The module that replaces the float `module` at load time, computing with the codes `q`."""
        raise NotImplementedError


@dataclass(frozen=True)
class Written:
    """What a native format wrote for the denoiser: its weights file and byte counts."""

    path: Path
    tensor_bytes: int  # the denoiser parameters as stored (must equal the cost model's prediction)
    file_bytes: int  # the weights file on disk (tensors + header + alignment + buffers)


class NativeFormat(WeightFormat):
    """A format whose own runtime loads the checkpoint (diffusers' quantizers, ComfyUI), with no mpsearch
    code at load time. It quantizes weights itself (`fake_quant` is what its file decodes to) and cannot
    run MixDQ's BOS-row hooks."""

    native: ClassVar[bool] = True
    keeps_bos_rows: ClassVar[bool] = False

    def fake_quant(self, w: torch.Tensor, bits: int) -> torch.Tensor:
        """The float weight (same dtype as `w`) the format's runtime computes with for `w` at `bits`."""
        raise NotImplementedError

    def write_denoiser(self, den: nn.Module, w_bits: dict[str, int], folder: Path, meta: dict[str, Any]) -> Written:
        """Write the denoiser to `folder` with the layers in `w_bits` ({module name: bits < 16}) quantized,
        every other parameter at the float dtype, and `config.json`. `meta`: model, fingerprint, family."""
        raise NotImplementedError

    def load_denoiser(self, folder: Path, dtype: torch.dtype) -> nn.Module:
        """The denoiser as the format's own runtime loads it (what a user without mpsearch runs)."""
        raise NotImplementedError


def scale_shape(weight_shape: tuple[int, ...]) -> tuple[int, ...]:
    return (weight_shape[0],) + (1,) * (len(weight_shape) - 1)


def unsigned_codes(q: torch.Tensor, zero_point: int) -> torch.Tensor:
    """`q + zero_point` as uint8, the stored unsigned codes of signed codes `q`. int8 codes are offset in
    uint8 arithmetic (their two's complement bytes plus the offset, mod 256): one pass, no int32 copy."""
    if q.dtype == torch.int8:
        return q.view(torch.uint8) + zero_point
    return (q + zero_point).to(torch.uint8)


def fp16_scale(scale: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Per-output-channel scales as stored: fp16, broadcastable to a weight of `shape`."""
    return scale.reshape(scale_shape(shape)).to(torch.float16).contiguous()


FORMATS: Registry[WeightFormat] = Registry("weight format", unknown="unknown {kind} {name!r}; known: {names}")
DEFAULT_FORMAT = "packed"


def register_format(fmt: WeightFormat) -> WeightFormat:
    """Make `fmt` known by its name (`--format NAME`): cost model, export and loading all find it here."""
    return FORMATS.add(fmt.name, fmt)


def get_format(fmt: str | WeightFormat | None) -> WeightFormat:
    """The registered format of that name (None: the default, `packed`); a format object as it is."""
    if isinstance(fmt, WeightFormat):
        return fmt
    return FORMATS.lookup(fmt or DEFAULT_FORMAT)
