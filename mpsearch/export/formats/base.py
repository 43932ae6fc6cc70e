"""On-disk layout of one quantized layer, one storage per weight format of `mpsearch.planning.cost`.

Every storage writes the signed integer codes `q` of `mpsearch.profiling.quant.quantize_weight` (symmetric,
`q ∈ [-2^(b-1), 2^(b-1) - 1]` for `b` nominal bits) as unsigned codes `q + 2^(s-1)` in `s` stored bits,
plus the fp16 per-output-channel scales (shape `[out, 1, ...]`, broadcastable to the weight as
optimum-quanto keeps them). The code offset `2^(s-1)` is a constant of the format (recorded in the
quantization map, never stored), so a layer costs exactly what `cost.layer_bytes` charges.

- `packed`: `<layer>.weight._packed`, a dense little-endian bitstream of `s = b` bits per code
  (`mpsearch.export.packing`), for every width 2..8, because no backend stores 3, 5 or 6 bits densely.
- `quanto`: optimum-quanto's own containers and tensor names. qint2/qint4 (`WeightQBitsTensor`):
  `<layer>.weight._data._data`, uint8, quanto's `pack_weights` (2 or 4 codes per byte) applied to the
  flattened codes, so an output-channel count that is not a multiple of 4 costs no padding row; qint8 (`WeightQBytesTensor`): `<layer>.weight._data`, int8 codes. 3-bit layers go to qint4,
  5/6-bit layers to qint8.

A new storage is a class with `encode` / `decode` registered under a format name.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from mpsearch.export.packing import pack_bits, packed_nbytes, unpack_bits
from solvers.registry import Registry

STORAGES: Registry[Storage] = Registry("storage", unknown="no storage for weight format {name!r}; known: {names}")


def register_storage(cls: type[Storage]) -> type[Storage]:
    """Class decorator: the storage of weight format `cls.format`."""
    old = STORAGES.get(cls.format)
    STORAGES.add(cls.format, cls(), replace=old is not None and type(old) is cls)
    return cls


def get_storage(fmt: str) -> Storage:
    return STORAGES.lookup(fmt)


def scale_shape(weight_shape: tuple[int, ...]) -> tuple[int, ...]:
    return (weight_shape[0],) + (1,) * (len(weight_shape) - 1)


def zero_point(stored_bits: int) -> int:
    """optimum-quanto's offset between signed codes and stored unsigned codes (0 for its int8 container)."""
    return 0 if stored_bits == 8 else 1 << (stored_bits - 1)


class Storage:
    """Turns `(q, scale)` of one layer into named tensors and back. Suffixes follow `<layer>.weight.`"""

    format: ClassVar[str]

    def qtype(self, stored_bits: int) -> str:
        raise NotImplementedError

    def zero_point(self, stored_bits: int) -> int:
        """The offset added to the signed codes before they are stored (recorded in the quantization map)."""
        raise NotImplementedError

    def encode(self, q: torch.Tensor, scale: torch.Tensor, stored_bits: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def decode(self, tensors: dict[str, torch.Tensor], stored_bits: int, shape: tuple[int, ...]):
        """`(q, scale)`: signed int8 codes of `shape` and float32 scales of `scale_shape(shape)`."""
        raise NotImplementedError

    @staticmethod
    def _scale(scale: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        return scale.reshape(scale_shape(shape)).to(torch.float16).contiguous()


@register_storage
class PackedStorage(Storage):
    format = "packed"

    def qtype(self, stored_bits: int) -> str:
        return f"packed{stored_bits}"

    def zero_point(self, stored_bits: int) -> int:
        return 1 << (stored_bits - 1)  # every width unsigned, 8 bits included

    def encode(self, q, scale, stored_bits):
        codes = (q.to(torch.int32) + self.zero_point(stored_bits)).to(torch.uint8)
        return {"_packed": pack_bits(codes, stored_bits), "_scale": self._scale(scale, tuple(q.shape))}

    def decode(self, tensors, stored_bits, shape):
        n = math.prod(shape)
        packed = tensors["_packed"]
        if packed.numel() != packed_nbytes(n, stored_bits):
            raise ValueError(f"{packed.numel()} packed bytes, expected {packed_nbytes(n, stored_bits)}")
        codes = unpack_bits(packed, stored_bits, n).to(torch.int16) - self.zero_point(stored_bits)
        return codes.to(torch.int8).reshape(shape), tensors["_scale"].float()


@register_storage
class QuantoStorage(Storage):
    format = "quanto"

    def qtype(self, stored_bits: int) -> str:
        return {2: "qint2", 4: "qint4", 8: "qint8"}[stored_bits]

    def zero_point(self, stored_bits: int) -> int:
        return zero_point(stored_bits)

    def encode(self, q, scale, stored_bits):
        from optimum.quanto.tensor.packed import pack_weights

        shape = tuple(q.shape)
        if stored_bits == 8:
            return {"_data": q.to(torch.int8).contiguous(), "_scale": self._scale(scale, shape)}
        codes = (q.to(torch.int32) + self.zero_point(stored_bits)).to(torch.uint8)
        return {"_data._data": pack_weights(codes.reshape(-1), stored_bits), "_scale": self._scale(scale, shape)}

    def decode(self, tensors, stored_bits, shape):
        if stored_bits == 8:
            return tensors["_data"].reshape(shape), tensors["_scale"].float()
        import optimum.quanto  # noqa: F401  (registers torch.ops.quanto)

        n = math.prod(shape)
        packed = tensors["_data._data"]
        if packed.numel() != packed_nbytes(n, stored_bits):
            raise ValueError(f"{packed.numel()} packed bytes, expected {packed_nbytes(n, stored_bits)}")
        codes = torch.ops.quanto.unpack(packed, stored_bits)[:n].to(torch.int16) - self.zero_point(stored_bits)
        return codes.to(torch.int8).reshape(shape), tensors["_scale"].float()
