"""`packed`: mpsearch's own bit-exact layout, every width 2..8 stored at exactly its bits.

Cost rule: `b` bits per weight for every nominal width (no backend stores 3, 5 or 6 bits densely), one
fp16 scale per output channel, symmetric (MixDQ's per-channel min-max), fp16 for everything else.
Storage: `<layer>.weight._packed`, a dense little-endian bitstream of the unsigned codes `q + 2^(b-1)`
(`mpsearch.export.packing`; 8-bit codes too), and `<layer>.weight._scale`. Runtime: the codes are
unpacked at load time (vectorised torch, on the load device) into optimum-quanto modules
(`mpsearch.export.formats.quanto.quanto_module`), which hold 2- and 4-bit codes packed at their width but
3-bit codes in qint4 and 5/6-bit codes in qint8 containers: memory after loading equals the stored bytes
for 2/4/8-bit layers and exceeds them for 3/5/6-bit ones (by 4/3, 8/5, 8/6).
"""

from __future__ import annotations

import math

import torch

from mpsearch.export.formats.base import FLOAT_BITS, WeightFormat, fp16_scale, register_format, unsigned_codes
from mpsearch.export.formats.quanto import quanto_module
from mpsearch.export.packing import pack_bits, packed_nbytes, unpack_bits

WEIGHT_WIDTHS = (2, 3, 4, 5, 6, 8)


class PackedFormat(WeightFormat):
    def qtype(self, stored_bits: int) -> str:
        return f"packed{stored_bits}"

    def zero_point(self, stored_bits: int) -> int:
        return 1 << (stored_bits - 1)  # every width unsigned, 8 bits included

    def encode(self, q, scale, stored_bits):
        codes = unsigned_codes(q, self.zero_point(stored_bits))  # on q's device, packed there too
        return {"_packed": pack_bits(codes, stored_bits), "_scale": fp16_scale(scale, tuple(q.shape))}

    def decode(self, tensors, stored_bits, shape):
        n = math.prod(shape)
        packed = tensors["_packed"]
        if packed.numel() != packed_nbytes(n, stored_bits):
            raise ValueError(f"{packed.numel()} packed bytes, expected {packed_nbytes(n, stored_bits)}")
        codes = unpack_bits(packed, stored_bits, n)  # a fresh uint8 tensor: shifted in place, wrapping mod 256
        codes -= self.zero_point(stored_bits)
        return codes.view(torch.int8).reshape(shape), tensors["_scale"].float()

    def module(self, module, q, scale, stored_bits, dtype):
        return quanto_module(module, q, scale, stored_bits, dtype)


PACKED = register_format(PackedFormat(
    name="packed",
    storage={b: b for b in WEIGHT_WIDTHS if b < FLOAT_BITS},
    notes="mpsearch bit-packing: b bits per weight, fp16 per-channel scales, symmetric",
))
