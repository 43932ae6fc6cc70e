"""Bit-exact packing of b-bit integer codes (b = 1..8) into a dense little-endian bitstream.

Code `i` of a flattened tensor occupies stream bits `[i*b, (i+1)*b)`, least significant bit first;
stream bit `k` is bit `k % 8` of byte `k // 8`. `n` codes take exactly `ceil(n*b/8)` bytes, the
count `mpsearch.planning.cost.layer_bytes` charges. Used for the widths no backend stores densely (3, 5, 6 bits)
and for the whole `packed` format, so one layout covers every width.

`pack_bits` / `unpack_bits` are vectorised torch on the codes' own device (a GPU when the model is on
one): `g = 8 / gcd(b, 8)` codes fill exactly `g*b/8` whole bytes (2 codes -> 1 byte at 4 bits, 8 -> 3 at
3 bits, 4 -> 3 at 6 bits, 8 -> 5 at 5 bits), and each byte of a group is the OR of the (at most three)
codes that overlap it, shifted: a few uint8 operations per byte over all groups at once, in chunks of
`CHUNK` codes to bound the temporaries.
`pack_bits_numpy` / `unpack_bits_numpy` are the original NumPy bit-level reference (one core, ~10x
slower): kept to test that the layout is unchanged byte for byte and for `benchmarks/export_formats.py`.

>>> codes = torch.tensor([0, 7, 5, 1], dtype=torch.uint8)
>>> unpack_bits(pack_bits(codes, 3), 3, 4).tolist()
[0, 7, 5, 1]
"""

from __future__ import annotations

import math

import numpy as np
import torch

CHUNK = 1 << 24  # codes per vectorised step: a multiple of every group size (<= 8), so chunks start on whole bytes


def packed_nbytes(n: int, bits: int) -> int:
    """Bytes of `n` codes of `bits` bits each."""
    return math.ceil(n * bits / 8)


def group(bits: int) -> tuple[int, int]:
    """`(codes, bytes)` of the smallest whole-byte group of `bits`-bit codes."""
    if not 1 <= bits <= 8:
        raise ValueError(f"can pack 1..8-bit codes, not {bits}")
    g = 8 // math.gcd(bits, 8)
    return g, g * bits // 8


def _pieces(bits: int, k: int) -> list[tuple[int, int]]:
    """`(code j, shift)` of the codes that share byte `k` of a group: the byte is the OR of code `j`
    shifted left by `shift` (right by `-shift` when negative), truncated to 8 bits."""
    g, _ = group(bits)
    return [(j, j * bits - 8 * k) for j in range(g) if j * bits < 8 * k + 8 and (j + 1) * bits > 8 * k]


def _check_codes(flat: torch.Tensor, bits: int) -> None:
    if not flat.numel():
        return
    lo, hi = torch.aminmax(flat) if flat.dtype != torch.bool else (flat.min(), flat.max())
    if int(lo) < 0 or int(hi) >= 1 << bits:
        raise ValueError(f"codes outside [0, {(1 << bits) - 1}] cannot be packed in {bits} bits")


def _padded(chunk: torch.Tensor, width: int) -> torch.Tensor:
    """`chunk` as rows of `width`, the last row completed with zeros."""
    m = -(-chunk.numel() // width)
    if m * width != chunk.numel():
        chunk = torch.cat([chunk, chunk.new_zeros(m * width - chunk.numel())])
    return chunk.reshape(m, width)


def _shift(x: torch.Tensor, s: int) -> torch.Tensor:
    return x << s if s > 0 else x >> -s if s < 0 else x


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative integer codes `< 2**bits` (any shape, any device) into a flat uint8 tensor on
    the same device, `packed_nbytes(codes.numel(), bits)` long. uint8 arithmetic throughout: a left
    shift drops the bits that belong to the next byte."""
    g, nb = group(bits)
    flat = codes.detach().reshape(-1)
    _check_codes(flat, bits)
    flat = flat.to(torch.uint8)
    if bits == 8:
        return flat.clone() if flat.data_ptr() == codes.data_ptr() else flat
    out = torch.empty(packed_nbytes(flat.numel(), bits), dtype=torch.uint8, device=flat.device)
    for start in range(0, flat.numel(), CHUNK):
        cols = _padded(flat[start : start + CHUNK], g)
        piece = torch.empty(cols.shape[0], nb, dtype=torch.uint8, device=flat.device)
        for k in range(nb):
            (j, s), *rest = _pieces(bits, k)
            piece[:, k] = _shift(cols[:, j], s)
            for j, s in rest:
                piece[:, k] |= _shift(cols[:, j], s)
        lo = start * bits // 8
        n = min(piece.numel(), out.numel() - lo)
        out[lo : lo + n] = piece.reshape(-1)[:n]
    return out


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of `pack_bits`: the first `n` codes, as a flat uint8 tensor on `packed`'s device."""
    g, nb = group(bits)
    data = packed.detach().reshape(-1)
    if data.numel() != packed_nbytes(n, bits):
        raise ValueError(f"{data.numel()} bytes do not hold {n} codes of {bits} bits ({packed_nbytes(n, bits)} expected)")
    data = data.to(torch.uint8)
    if bits == 8:
        return data.clone() if data.data_ptr() == packed.data_ptr() else data
    out = torch.empty(n, dtype=torch.uint8, device=data.device)
    mask = (1 << bits) - 1
    step = CHUNK * bits // 8  # bytes per chunk of codes
    for lo in range(0, data.numel(), step):
        rows = _padded(data[lo : lo + step], nb)
        piece = torch.empty(rows.shape[0], g, dtype=torch.uint8, device=data.device)
        seen = set()
        for k in range(nb):
            for j, s in _pieces(bits, k):
                if j in seen:
                    piece[:, j] |= _shift(rows[:, k], -s)
                else:  # a code's first (lowest) piece is assigned: no zero fill
                    piece[:, j] = _shift(rows[:, k], -s)
                    seen.add(j)
        piece &= mask
        start = lo * 8 // bits
        m = min(piece.numel(), n - start)
        out[start : start + m] = piece.reshape(-1)[:m]
    return out


def pack_bits_numpy(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """The NumPy reference of `pack_bits` (same bytes; on the CPU, one core): `np.unpackbits` of every
    code, keep its low `bits`, `np.packbits` of the stream."""
    group(bits)
    flat = codes.detach().reshape(-1).cpu()
    _check_codes(flat, bits)
    a = flat.to(torch.uint8).numpy()
    if bits == 8:
        return torch.from_numpy(a.copy())
    out = []
    for start in range(0, a.size, 1 << 22):
        stream = np.unpackbits(a[start : start + (1 << 22), None], axis=1, bitorder="little")[:, :bits].reshape(-1)
        out.append(np.packbits(stream, bitorder="little"))
    return torch.from_numpy(np.concatenate(out) if out else np.zeros(0, np.uint8))


def unpack_bits_numpy(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The NumPy reference of `unpack_bits` (on the CPU, one core)."""
    group(bits)
    data = packed.detach().reshape(-1).cpu().to(torch.uint8).numpy()
    if data.size != packed_nbytes(n, bits):
        raise ValueError(f"{data.size} bytes do not hold {n} codes of {bits} bits ({packed_nbytes(n, bits)} expected)")
    if bits == 8:
        return torch.from_numpy(data.copy())
    out = []
    step = (1 << 22) * bits // 8
    weights = (1 << np.arange(bits, dtype=np.uint8)).astype(np.uint8)
    for start in range(0, data.size, step):
        stream = np.unpackbits(data[start : start + step], bitorder="little")
        m = stream.size // bits
        out.append((stream[: m * bits].reshape(m, bits) * weights).sum(axis=1, dtype=np.uint8))
    codes = np.concatenate(out) if out else np.zeros(0, np.uint8)
    return torch.from_numpy(codes[:n].copy())
