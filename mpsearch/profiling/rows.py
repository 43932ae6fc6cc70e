"""The rows of a slot-batched forward: which rows a slot owns, gathered and put back in the memory layout
the one-at-a-time batch has (so every op rounds as it would there), and the blocks whose identical slot
rows are computed once (`CONTAINER_PATTERN`). Used by `mpsearch.profiling.session.QuantSession`."""

from __future__ import annotations

import math

import torch

# Row-wise blocks whose identical slot rows are computed once (UNet blocks, DiT blocks, time embedding).
CONTAINER_PATTERN = (
    r"^((down|up)_blocks\.\d+\.(resnets|attentions|downsamplers|upsamplers)\.\d+|mid_block\.(resnets|attentions)\.\d+"
    r"|transformer_blocks\.\d+|time_embedding)$"
)


def batch_size(args, kwargs) -> int:
    for v in (*args, *kwargs.values()):
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return v.shape[0]
        if isinstance(v, (tuple, list)) and v:
            n = batch_size(tuple(v), {})
            if n:
                return n
    return 0


def nbytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(nbytes(v) for v in obj.values())
    if isinstance(obj, (tuple, list)):
        return sum(nbytes(v) for v in obj)
    return 0


def _memory_order(t: torch.Tensor) -> list[int] | None:
    """`t`'s dims from outermost to innermost in memory (size-1 dims first), or None when `t` is not dense."""
    order = sorted(range(t.dim()), key=lambda d: -t.stride(d) if t.shape[d] > 1 else -math.inf)
    return order if t.permute(order).is_contiguous() else None


def _inverse(order: list[int]) -> list[int]:
    return sorted(range(len(order)), key=order.__getitem__)


def _select_rows(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows `idx` of `t`, laid out in memory as `t` is. A slot's rows must reach every op with the
    layout the one-at-a-time batch has: fp16 GEMMs round a transposed input (e.g. the strided
    `proj_in` input of linear-projection transformers) differently from a contiguous copy of it."""
    order = _memory_order(t)
    if order is None:
        return t.index_select(0, idx)
    return t.permute(order).index_select(order.index(0), idx).permute(_inverse(order))


def _empty_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """An uninitialised tensor of `n` rows like `t`'s, laid out in memory as `t` is (see `_select_rows`)."""
    order = _memory_order(t)
    if order is None:
        return t.new_empty((n, *t.shape[1:]))
    return t.new_empty([t.shape[d] if d else n for d in order]).permute(_inverse(order))


def take_rows(obj, idx: torch.Tensor, B: int):
    """Rows `idx` of every batch-first tensor (first dim == B) in nested args, in their own layout."""
    if isinstance(obj, torch.Tensor):
        return _select_rows(obj, idx.to(obj.device)) if obj.dim() > 0 and obj.shape[0] == B else obj
    if isinstance(obj, dict):
        return {k: take_rows(v, idx, B) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(take_rows(v, idx, B) for v in obj)
    return obj


def assemble(outs: list, parts: list, same: list[int], S: int, R: int):
    first = outs[0]
    if isinstance(first, torch.Tensor):
        if first.dim() == 0 or first.shape[0] != len(parts[0][0]) * R:
            return first  # not batch-first: identical for every slot
        full = _empty_rows(first, S * R)
        view = full.view(S, R, *first.shape[1:])
        for (slots, _), out in zip(parts, outs, strict=True):
            view[slots] = out.view(len(slots), R, *out.shape[1:])
        if len(same) > 1:
            view[same[1:]] = first.view(1, R, *first.shape[1:])  # parts[0] is the representative
        return full
    if isinstance(first, (tuple, list)):
        return type(first)(assemble([o[i] for o in outs], parts, same, S, R) for i in range(len(first)))
    if isinstance(first, dict):  # diffusers BaseOutput is a dict subclass
        return type(first)(**{k: assemble([o[k] for o in outs], parts, same, S, R) for k in first})
    return first
