"""Bit-exact packing of b-bit integer codes (b = 1..8) into a dense little-endian bitstream.

Code `i` of a flattened tensor occupies stream bits `[i*b, (i+1)*b)`, least significant bit first;
stream bit `k` is bit `k % 8` of byte `k // 8`. `n` codes take exactly `ceil(n*b/8)` bytes, the
count `mpsearch.planning.cost.layer_bytes` charges. Used for the widths no backend stores densely (3, 5, 6 bits)
and for the whole `packed` format, so one layout covers every width.

>>> codes = torch.tensor([0, 7, 5, 1], dtype=torch.uint8)
>>> unpack_bits(pack_bits(codes, 3), 3, 4).tolist()
[0, 7, 5, 1]
"""

from __future__ import annotations

import math

import numpy as np
import torch

_CHUNK = 1 << 22  # codes per vectorised step (a multiple of 8, so chunks start on byte boundaries)


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes of `n` codes of `bits` bits each."""
    return math.ceil(n * bits / 8)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative integer codes `< 2**bits` (any shape) into a flat uint8 tensor."""
    if not 1 <= bits <= 8:
        raise ValueError(f"can pack 1..8-bit codes, not {bits}")
    flat = codes.detach().reshape(-1).cpu()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 1 << bits):
        raise ValueError(f"codes outside [0, {(1 << bits) - 1}] cannot be packed in {bits} bits")
    a = flat.to(torch.uint8).numpy()
    if bits == 8:
        return torch.from_numpy(a.copy())
    out = []
    for start in range(0, a.size, _CHUNK):
        chunk = a[start : start + _CHUNK]
        # [n, 8] bits of each byte, LSB first; keep the low `bits` of each code, stream them, repack
        stream = np.unpackbits(chunk[:, None], axis=1, bitorder="little")[:, :bits].reshape(-1)
        out.append(np.packbits(stream, bitorder="little"))
    return torch.from_numpy(np.concatenate(out) if out else np.zeros(0, np.uint8))


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of `pack_bits`: the first `n` codes, as a flat uint8 tensor."""
    if not 1 <= bits <= 8:
        raise ValueError(f"can unpack 1..8-bit codes, not {bits}")
    data = packed.detach().reshape(-1).cpu().to(torch.uint8).numpy()
    if data.size != packed_nbytes(n, bits):
        raise ValueError(f"{data.size} bytes do not hold {n} codes of {bits} bits ({packed_nbytes(n, bits)} expected)")
    if bits == 8:
        return torch.from_numpy(data.copy())
    out = []
    step = _CHUNK * bits // 8  # bytes per chunk of codes
    weights = (1 << np.arange(bits, dtype=np.uint8)).astype(np.uint8)
    for start in range(0, data.size, step):
        stream = np.unpackbits(data[start : start + step], bitorder="little")
        m = stream.size // bits
        out.append((stream[: m * bits].reshape(m, bits) * weights).sum(axis=1, dtype=np.uint8))
    codes = np.concatenate(out) if out else np.zeros(0, np.uint8)
    return torch.from_numpy(codes[:n].copy())
