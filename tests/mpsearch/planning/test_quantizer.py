"""The weight quantizer of a format is the one its checkpoints store."""

import torch

from mpsearch.export.formats.base import WeightFormat
from mpsearch.planning.quantizer import weight_config
from mpsearch.profiling.quantizers import WeightQuantConfig, quantize_weight


def test_packed_and_quanto_quantize_symmetric_per_output_channel():
    for fmt in ("packed", "quanto", None):
        assert weight_config(fmt) == WeightQuantConfig(symmetric=True, group_size=None)
    q, scale, zero = quantize_weight(torch.randn(6, 32), 4, weight_config("packed"))
    assert scale.shape == (6, 1) and not zero.any() and q.min() >= -8 and q.max() <= 7


def test_a_format_with_zero_points_and_groups_gets_an_asymmetric_grouped_quantizer():
    fmt = WeightFormat(name="grouped", storage={4: 4}, group_size=16, zero_bytes=1)
    assert weight_config(fmt) == WeightQuantConfig(symmetric=False, group_size=16)
    q, scale, zero = quantize_weight(torch.randn(6, 32), 4, weight_config(fmt))
    assert scale.shape == (12, 1) and q.min() >= 0 and q.max() <= 15  # one scale per 16 inputs, unsigned codes
