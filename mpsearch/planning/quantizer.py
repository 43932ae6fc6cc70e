"""The weight quantizer of a weight format: what a plan in that format is profiled, simulated and
exported with, so that the plan is optimised for the model its checkpoint holds."""

from __future__ import annotations

from mpsearch.planning.cost import WeightFormat, get_format
from mpsearch.profiling.quant import WeightQuantConfig


def weight_config(fmt: str | WeightFormat | None) -> WeightQuantConfig:
    """The quantizer config of format `fmt` (None: the default, `packed`): symmetric when the format
    stores no zero points, one scale per its group size (None: per output channel)."""
    f = get_format(fmt)
    return WeightQuantConfig(symmetric=f.zero_bytes == 0, group_size=f.group_size)
