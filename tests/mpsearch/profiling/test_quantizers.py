"""Quantizer math: weight and activation error falls with bits; MSE range search beats min-max."""

from __future__ import annotations

import pytest
import torch

from mpsearch.profiling.quantizers import WeightQuantConfig, fake_quant_act, fake_quant_weight


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
