"""The cost model against a hand count on a small model."""

import math

import pytest
from torch import nn

from mpsearch.model import inventory
from mpsearch.planning.cost import (
    FORMATS,
    fixed_bytes,
    fp16_bytes,
    get_format,
    layer_bitops,
    layer_bytes,
    layer_wbits,
    mean_bits,
    model_bytes,
    stored_mean_bits,
)


class Small(nn.Module):
    """conv 3→8 (3x3, bias), norm (8+8 params), linear 72→10 (no bias): hand-countable."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.fc = nn.Linear(72, 10, bias=False)


def small_inventory():
    from mpsearch.model import Inventory, Layer

    m = Small()
    layers = [
        Layer("conv", "conv2d", 8 * 3 * 9, 8, 8, 3, (3, 3), 8 * 27 * 64, "quality", "unet"),
        Layer("fc", "linear", 720, 0, 10, 72, (), 720, "content", "unet"),
    ]
    fixed = sum(p.numel() for p in m.parameters()) - 216 - 8 - 720
    return Inventory("small", "unet", 64, layers, fixed, 1, "x")


def test_hand_count_packed_format():
    inv = small_inventory()
    conv, fc = inv.layers
    # 216 weights at 3 bits = 648 bits = 81 bytes; 8 fp16 scales = 16; bias 8 fp16 = 16
    assert layer_bytes(conv, 3, "packed") == 81 + 16 + 16
    # 720 weights at 2 bits = 180 bytes; 10 scales = 20; no bias
    assert layer_bytes(fc, 2, "packed") == 180 + 20
    # 5 bits: ceil(216*5/8) = 135
    assert layer_bytes(conv, 5, "packed") == 135 + 16 + 16
    # 16 bits is fp16 storage, no scales
    assert layer_bytes(fc, 16, "packed") == 720 * 2
    assert fixed_bytes(inv) == 16 * 2  # GroupNorm weight+bias at fp16
    assert model_bytes(inv, {"conv": 3, "fc": 2}) == 113 + 200 + 32
    assert fp16_bytes(inv) == (216 + 8 + 720 + 16) * 2


def test_quanto_rounds_unsupported_widths_up():
    conv = small_inventory().layers[0]
    assert layer_bytes(conv, 3, "quanto") == layer_bytes(conv, 4, "quanto")
    assert layer_bytes(conv, 5, "quanto") == layer_bytes(conv, 8, "quanto") == 216 + get_format("quanto").n_scales(conv) * get_format("quanto").scale_bytes + 16
    assert layer_bytes(conv, 3, "packed") < layer_bytes(conv, 3, "quanto")


def test_bits_count_what_is_stored():
    inv = small_inventory()
    conv, fc = inv.layers
    quanto, packed = get_format("quanto"), get_format("packed")
    assert quanto.widths == (2, 4, 8) and packed.widths == (2, 3, 4, 5, 6, 8)
    assert layer_wbits(conv, 3, quanto) == 216 * 4 and layer_wbits(conv, 3, packed) == 216 * 3
    assert layer_wbits(fc, 6, quanto) == 720 * 8 and layer_wbits(fc, 16, quanto) == 720 * 16
    assert stored_mean_bits(inv, {"conv": 3, "fc": 5}, "quanto") == (216 * 4 + 720 * 8) / 936
    assert stored_mean_bits(inv, {"conv": 3, "fc": 5}, "packed") == mean_bits(inv, {"conv": 3, "fc": 5})
    quanto.check_offered(4)
    quanto.check_offered(16)
    with pytest.raises(ValueError, match="stores 3-bit weights in 4-bit containers.*2, 4, 8"):
        quanto.check_offered(3)
    with pytest.raises(ValueError, match="cannot store 7-bit"):
        packed.check_offered(7)


# sdnq is not monotone: its 2-bit groups are half the size of its 3-bit ones, with float32 scales
# (tests/mpsearch/export/formats/test_sdnq.py::test_two_bits_can_cost_more_than_three)
@pytest.mark.parametrize("fmt", sorted(set(FORMATS) - {"sdnq"}))
def test_bytes_monotone_in_bits(fmt):
    inv = inventory("sd15")
    f = get_format(fmt)
    for layer in inv.layers[:40]:
        sizes = [layer_bytes(layer, b, f) for b in sorted(f.storage) + [16] if f.stores(layer, b)]  # gguf: per layer
        assert sizes == sorted(sizes)


def test_mean_bits_and_bitops():
    inv = small_inventory()
    assert mean_bits(inv, {"conv": 8, "fc": 2}) == pytest.approx((216 * 8 + 720 * 2) / 936)
    assert layer_bitops(inv.layers[1], 4, 8) == 720 * 32
    assert math.isclose(mean_bits(inv, {}), 16)


def test_sdxl_fp16_reference():
    inv = inventory("sdxl-base")
    assert fp16_bytes(inv) == 2 * 2_567_463_684
    # uniform 8-bit in the packed format: 1 byte per weight + per-channel scales + fp16 bias + fixed params
    w8 = model_bytes(inv, {l.name: 8 for l in inv.layers})
    expected = sum(l.params + 2 * l.out_channels + 2 * l.bias for l in inv.layers) + 2 * inv.fixed_params
    assert w8 == expected
    assert 0.5 < w8 / fp16_bytes(inv) < 0.51
