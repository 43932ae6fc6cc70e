"""The format contract: one registered object is the cost model's rule, found by name everywhere."""

import pytest

from mpsearch.export.formats import FORMATS, WeightFormat, get_format, register_format
from mpsearch.model import Layer
from mpsearch.planning.cost import layer_bytes, layer_wbits

LINEAR = Layer("fc", "linear", 720, 10, 10, 72, (), 720, "content", "unet")  # 72 inputs → 10 outputs, with bias


def test_a_new_format_is_one_registered_object_the_cost_model_reads():
    fmt = WeightFormat(name="test-grouped", storage={4: 4, 3: 4}, group_size=24, zero_bytes=1)
    try:
        assert register_format(fmt) is fmt and get_format("test-grouped") is fmt
        assert register_format(fmt) is fmt  # registering the same rule again is a no-op
        # 720 codes at 4 bits = 360 bytes; 10 rows x 3 groups of 24 = 30 scales of 2 + 1 bytes; bias 10 fp16
        assert layer_bytes(LINEAR, 4, "test-grouped") == 360 + 30 * 3 + 20
        assert layer_bytes(LINEAR, 3, "test-grouped") == layer_bytes(LINEAR, 4, "test-grouped")
        assert layer_wbits(LINEAR, 3, "test-grouped") == 720 * 4  # a bits budget counts the stored container
        assert fmt.widths == (4,)
        with pytest.raises(ValueError, match="already registered"):
            register_format(WeightFormat(name="test-grouped", storage={8: 8}))
    finally:
        FORMATS.pop("test-grouped", None)


def test_unknown_format_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown weight format 'gguf-x'; known: .*packed.*quanto"):
        get_format("gguf-x")
    assert get_format(None) is get_format("packed")


def test_stored_bits_refuses_a_width_the_format_lacks():
    with pytest.raises(ValueError, match=r"format 'quanto' cannot store 7-bit weights"):
        get_format("quanto").stored_bits(7)
    with pytest.raises(ValueError, match="4-bit containers"):
        get_format("quanto").check_offered(3)
