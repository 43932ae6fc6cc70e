"""Quantizer math: weight and activation error falls with bits; MSE range search beats min-max."""

from __future__ import annotations

import pytest
import torch

from mpsearch.profiling.quantizers import (
    WeightQuantConfig,
    fake_quant_act,
    fake_quant_weight,
    quantize_weight,
)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).sum() / b.pow(2).sum())


@pytest.mark.parametrize(
    "cfg",
    [WeightQuantConfig(), WeightQuantConfig(symmetric=False), WeightQuantConfig(group_size=16),
     WeightQuantConfig(mse_search=True, search_steps=20)],
)  # fmt: skip
def test_weight_error_falls_with_bits(cfg):
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(0))
    errs = [_rel_err(fake_quant_weight(w, b, cfg), w) for b in (2, 3, 4, 5, 6, 8)]
    assert all(e1 > e2 for e1, e2 in zip(errs, errs[1:], strict=False)), errs
    assert errs[-1] < 1e-4 and fake_quant_weight(w, 16, cfg) is w


def _min_max_reference(w: torch.Tensor, bits: int, cfg: WeightQuantConfig):
    """The quantizer's formula written out plainly (the implementation before in-place rounding)."""
    rows = w.float().reshape(-1, cfg.group_size) if cfg.group_size else w.float().reshape(w.shape[0], -1)
    if cfg.symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale, zero, lo, hi = (rows.abs().amax(1, keepdim=True) / qmax).clamp_min(1e-12), 0.0, -qmax - 1, qmax
    else:
        mn, mx = rows.amin(1, keepdim=True).clamp_max(0), rows.amax(1, keepdim=True).clamp_min(0)
        scale = ((mx - mn) / (2**bits - 1)).clamp_min(1e-12)
        zero, lo, hi = torch.round(-mn / scale), 0, 2**bits - 1
    scale = scale.half().float().clamp_min(float(torch.finfo(torch.float16).tiny))
    return torch.clamp(torch.round(rows / scale) + zero, lo, hi).reshape(w.shape)


@pytest.mark.parametrize("cfg", [WeightQuantConfig(), WeightQuantConfig(symmetric=False),
                                 WeightQuantConfig(group_size=16)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_in_place_rounding_gives_the_formula_and_leaves_the_weight_alone(cfg, dtype):
    w = (torch.randn(24, 3, 4, 4, generator=torch.Generator().manual_seed(2)) * 0.1).to(dtype)
    w[0] = 0
    before = w.clone()
    for bits in (2, 3, 4, 8):
        q, _, _ = quantize_weight(w, bits, cfg)
        q8, _, _ = quantize_weight(w, bits, cfg, dtype=torch.int8 if cfg.symmetric else torch.uint8)
        want = _min_max_reference(w, bits, cfg)
        assert q.dtype == torch.int32 and torch.equal(q, want.to(torch.int32)) and torch.equal(q8.int(), q)
        assert torch.equal(w, before)  # a float32 weight is divided out of place, never overwritten
    t = w.float().permute(1, 0, 3, 2)  # a non-contiguous float32 weight: rows are a copy, rounded in place
    assert torch.equal(quantize_weight(t, 4, cfg)[0], _min_max_reference(t, 4, cfg).to(torch.int32))


def test_mse_search_beats_min_max_at_low_bits():
    w = torch.randn(16, 256, generator=torch.Generator().manual_seed(1))
    assert _rel_err(fake_quant_weight(w, 3, WeightQuantConfig(mse_search=True)), w) < _rel_err(fake_quant_weight(w, 3), w)


def test_act_error_falls_with_bits_and_levels():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 3 + 1
    lo, hi = float(x.min()), float(x.max())
    errs = [_rel_err(fake_quant_act(x, lo, hi, b), x) for b in (4, 6, 8)]
    assert errs[0] > errs[1] > errs[2] > 0
    assert len(torch.unique(fake_quant_act(x, lo, hi, 4))) <= 16
    assert fake_quant_act(x, lo, hi, 16) is x
