"""Bit packing: exact sizes and the documented little-endian bitstream."""

import pytest
import torch

from mpsearch.export.packing import pack_bits, packed_nbytes, unpack_bits


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_roundtrip_and_size(bits):
    for n in (0, 1, 7, 8, 13, 1000):
        codes = torch.randint(0, 1 << bits, (n,), dtype=torch.uint8)
        packed = pack_bits(codes, bits)
        assert packed.numel() == packed_nbytes(n, bits)
        assert torch.equal(unpack_bits(packed, bits, n), codes)


def test_pack_layout_is_little_endian_bitstream():
    assert pack_bits(torch.tensor([1, 2, 3, 0], dtype=torch.uint8), 2).tolist() == [1 | 2 << 2 | 3 << 4]
    # 3-bit codes 0b101, 0b011, 0b111 → stream 101 110 111 (LSB first) → bytes 0b11_011_101, 0b1
    assert pack_bits(torch.tensor([5, 3, 7], dtype=torch.uint8), 3).tolist() == [0b11011101, 0b1]
    with pytest.raises(ValueError):
        pack_bits(torch.tensor([8], dtype=torch.uint8), 3)
