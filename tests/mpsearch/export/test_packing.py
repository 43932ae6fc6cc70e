"""Bit packing: exact sizes and the documented little-endian bitstream."""

import pytest
import torch

from mpsearch.export.packing import pack_bits, pack_bits_numpy, packed_nbytes, unpack_bits, unpack_bits_numpy


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


@pytest.mark.parametrize("bits", range(2, 9))
def test_torch_packing_writes_the_numpy_reference_bytes(bits):
    """The vectorised packer keeps the on-disk layout: byte for byte the NumPy reference's output, so
    checkpoints written before still load; odd sizes end in a partial group and a partial byte."""
    g = torch.Generator().manual_seed(bits)
    for n in (1, 3, 5, 9, 31, 1023, 4099):
        codes = torch.randint(0, 1 << bits, (n,), dtype=torch.uint8, generator=g)
        packed = pack_bits(codes, bits)
        assert torch.equal(packed, pack_bits_numpy(codes, bits))
        assert torch.equal(unpack_bits(packed, bits, n), unpack_bits_numpy(packed, bits, n))


def test_packing_spans_chunks_and_keeps_dtype_and_device(monkeypatch):
    """Chunk boundaries do not move bits (a small CHUNK stands in for the 16M-code one)."""
    import mpsearch.export.packing as packing

    monkeypatch.setattr(packing, "CHUNK", 24)  # a multiple of every group size
    codes = torch.randint(0, 32, (6, 17), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    packed = pack_bits(codes, 5)
    assert packed.dtype == torch.uint8 and packed.device == codes.device
    assert torch.equal(packed, pack_bits_numpy(codes, 5))
    assert torch.equal(unpack_bits(packed, 5, codes.numel()), codes.reshape(-1))
    with pytest.raises(ValueError, match="do not hold"):
        unpack_bits(packed[:-1], 5, codes.numel())
