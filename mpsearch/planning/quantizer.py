"""The weight quantizer of a weight format: what a plan in that format is profiled, simulated and
exported with, so that the plan is optimised for the model its checkpoint holds."""

from __future__ import annotations

from mpsearch.planning.cost import WeightFormat, get_format
from mpsearch.profiling.quantizers import WeightQuantConfig


def weight_config(fmt: str | WeightFormat | None) -> WeightQuantConfig:
    """The quantizer config of format `fmt` (None: the default, `packed`).

    mpsearch's own layouts (`packed`, `quanto`) store min-max codes: symmetric when the format has no
    zero points, one scale per its group size (None: per output channel). A native format (`gguf`,
    `sdnq`) rounds with its own quantizer: `WeightQuantConfig(format=name)` routes every fake
    quantization through it."""
    f = get_format(fmt)
    if f.native:
        return WeightQuantConfig(format=f.name)
    return WeightQuantConfig(symmetric=f.zero_bytes == 0, group_size=f.group_size)
