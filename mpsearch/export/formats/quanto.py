"""`quanto`: optimum-quanto's own containers and tensor names (qint2, qint4, qint8).

Cost rule: 3-bit weights live in qint4 containers and 5/6-bit ones in qint8, so they cost 4 and 8 bits
(and only 2, 4 and 8 are offered to a solver); one fp16 scale per output channel, symmetric.
Storage: qint2/qint4 (`WeightQBitsTensor`): `<layer>.weight._data._data`, uint8, quanto's `pack_weights`
(2 or 4 codes per byte) applied to the flattened unsigned codes `q + 2^(s-1)`, so an output-channel
count that is not a multiple of 4 costs no padding row; qint8 (`WeightQBytesTensor`):
`<layer>.weight._data`, the int8 codes as they are. Runtime: `QLinear` / `QConv2d` holding those codes,
dequantized on the fly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mpsearch.export.formats.base import WeightFormat, fp16_scale, register_format, unsigned_codes
from mpsearch.export.packing import packed_nbytes


def zero_point(stored_bits: int) -> int:
    """optimum-quanto's offset between signed codes and stored unsigned codes (0 for its int8 container)."""
    return 0 if stored_bits == 8 else 1 << (stored_bits - 1)


def container(stored_bits: int):
    """The optimum-quanto qtype holding codes of `stored_bits` bits."""
    from optimum.quanto import qint2, qint4, qint8

    return qint2 if stored_bits <= 2 else qint4 if stored_bits <= 4 else qint8


def quanto_module(module: nn.Module, q: torch.Tensor, scale: torch.Tensor, stored_bits: int, dtype) -> nn.Module:
    """An optimum-quanto QLinear / QConv2d holding `q` (signed codes) and per-channel `scale`."""
    from optimum.quanto.nn import quantize_module
    from optimum.quanto.tensor.weights import WeightQBitsTensor, WeightQBytesTensor

    qtype = container(stored_bits)
    qmod = quantize_module(module, weights=qtype)  # built on the module's (meta) device, empty
    qmod.weight_group_size = None  # one scale per output channel, not quanto's default groups
    # every tensor is set below (the bias by the caller): no `to_empty`, which would allocate a float
    # weight per layer only to drop it (transient, but glibc keeps such freed blocks resident)
    qmod.input_scale = torch.ones((), dtype=dtype, device=q.device)
    qmod.output_scale = torch.ones((), dtype=dtype, device=q.device)
    scale = scale.to(dtype)
    size, stride = q.shape, torch.empty(q.shape, device="meta").stride()
    if qtype.bits == 8:
        w = WeightQBytesTensor(qtype, 0, size, stride, q.to(torch.int8), scale, None)
    else:
        zp = zero_point(qtype.bits)
        codes = q.to(torch.int8).view(torch.uint8) + zp  # two's complement + zp, mod 256: the unsigned code
        shift = torch.full((), zp, dtype=torch.uint8, device=q.device)
        w = WeightQBitsTensor(qtype, 0, None, size, stride, codes, scale, shift.expand(scale.shape))
    qmod.weight = nn.Parameter(w, requires_grad=False)
    return qmod


class QuantoFormat(WeightFormat):
    def qtype(self, stored_bits: int) -> str:
        return {2: "qint2", 4: "qint4", 8: "qint8"}[stored_bits]

    def zero_point(self, stored_bits: int) -> int:
        return zero_point(stored_bits)

    def encode(self, q, scale, stored_bits):
        from optimum.quanto.tensor.packed import pack_weights

        shape = tuple(q.shape)
        if stored_bits == 8:
            return {"_data": q.to(torch.int8).contiguous(), "_scale": fp16_scale(scale, shape)}
        codes = unsigned_codes(q, self.zero_point(stored_bits))
        return {"_data._data": pack_weights(codes.reshape(-1), stored_bits), "_scale": fp16_scale(scale, shape)}

    def decode(self, tensors, stored_bits, shape):
        if stored_bits == 8:
            return tensors["_data"].reshape(shape), tensors["_scale"].float()
        import optimum.quanto  # noqa: F401  (registers torch.ops.quanto)

        n = math.prod(shape)
        packed = tensors["_data._data"]
        if packed.numel() != packed_nbytes(n, stored_bits):
            raise ValueError(f"{packed.numel()} packed bytes, expected {packed_nbytes(n, stored_bits)}")
        codes = torch.ops.quanto.unpack(packed, stored_bits)[:n].to(torch.uint8)  # a new tensor: ours to shift
        codes -= self.zero_point(stored_bits)  # uint8 wraps mod 256: the signed code's two's complement byte
        return codes.view(torch.int8).reshape(shape), tensors["_scale"].float()

    def module(self, module, q, scale, stored_bits, dtype):
        return quanto_module(module, q, scale, stored_bits, dtype)


QUANTO = register_format(QuantoFormat(
    name="quanto",
    storage={2: 2, 3: 4, 4: 4, 5: 8, 6: 8, 8: 8},
    notes="optimum-quanto qint2/qint4/qint8 containers, fp16 per-channel scales, symmetric",
))
