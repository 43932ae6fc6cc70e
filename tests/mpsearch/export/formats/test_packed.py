"""The `packed` format's storage: it decodes the quantizer's integers, at exactly the cost model's bytes."""

import pytest
import torch

from mpsearch.export.packing import packed_nbytes, unpack_bits
from mpsearch.planning.cost import get_format
from mpsearch.planning.quantizer import weight_config
from mpsearch.profiling.quantizers import fake_quant_weight, quantize_weight


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_storage_decodes_the_quantizer_integers(bits):
    fmt = get_format("packed")
    stored = bits
    assert fmt.stored_bits(bits) == stored
    w = torch.randn(6, 5, 3, 3)  # 6 output channels: not a multiple of quanto's 4 codes per byte
    q, scale, _ = quantize_weight(w, bits, weight_config(fmt))
    tensors = fmt.encode(q, scale, stored)
    assert sum(t.numel() * t.element_size() for t in tensors.values()) == packed_nbytes(w.numel(), stored) + 6 * 2
    q2, scale2 = fmt.decode(tensors, stored, tuple(w.shape))
    assert torch.equal(q2.to(torch.int32), q)
    # the zero point the quantization map records is the offset actually stored
    codes = unpack_bits(tensors["_packed"], stored, w.numel()).to(torch.int32) - fmt.zero_point(stored)
    assert torch.equal(codes.reshape(q.shape), q)
    assert torch.equal((q2.float() * scale2).reshape(w.shape), fake_quant_weight(w, bits))
