"""Budget parsing: the accepted forms, exact echo, resolution against an inventory, clear errors."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpsearch.model import inventory
from mpsearch.planning.budget import Budget, BudgetError
from mpsearch.planning.cost import fp16_bytes


@pytest.mark.parametrize(
    "text,kind,value",
    [
        ("4GB", "bytes", 4 * 10**9), ("4GiB", "bytes", 4 * 2**30), ("500MB", "bytes", 5 * 10**8),
        ("750 MiB", "bytes", 750 * 2**20), ("123456B", "bytes", 123456), ("1.5gb", "bytes", 1.5e9),
        ("4.5bits", "bits", 4.5), ("3bit", "bits", 3), ("30%", "percent", 30), ("2.5Tbitops", "bitops", 2.5e12),
        ("800Gbitops", "bitops", 8e11), ("25%bitops", "bitops_percent", 25), ("1e9B", "bytes", 1e9),
    ],
)
def test_accepted_forms(text, kind, value):
    b = Budget.parse(text)
    assert (b.kind, b.value) == (kind, pytest.approx(value))
    assert str(b) == text.strip()


@pytest.mark.parametrize("text", ["", "4", "four GB", "4XB", "-3GB", "4GB of ram"])
def test_unreadable_text_shows_accepted_forms(text):
    with pytest.raises(BudgetError, match=r"cannot read budget .*accepted budgets: bytes '4GB'.*'4\.5bits'.*'30%'"):
        Budget.parse(text)


@pytest.mark.parametrize(
    "text,why",
    [("0bits", "must be positive"), ("120%", "above 100% of fp16"), ("20bits", "cannot exceed 16"),
     ("1e400B", "too large"), ("1e400bits", "too large"), ("1e99999999999%", "too large"), ("1e-400GB", "positive")],
)
def test_out_of_range_budget_says_why(text, why):
    with pytest.raises(BudgetError, match=why):
        Budget.parse(text)


def test_bits_below_every_width_parse():
    """0.5 bits is a budget no plan meets: the solver says so and names the smallest (test_cli)."""
    assert Budget.parse("0.5bits").value == 0.5


def test_gb_and_gib_differ_and_are_echoed():
    gb, gib = Budget.parse("4GB"), Budget.parse("4GiB")
    assert gb.describe() == "4GB = 4,000,000,000 bytes of denoiser weights"
    assert gib.describe() == "4GiB = 4,294,967,296 bytes of denoiser weights"


def test_resolve_against_sdxl():
    inv = inventory("sdxl-base")
    assert Budget.parse("30%").resolve(inv) == int(0.3 * fp16_bytes(inv))
    assert Budget.parse("4bits").resolve(inv) == 4 * sum(l.params for l in inv)
    assert Budget.parse("50%bitops").resolve(inv) == pytest.approx(inv.total_macs * 128)
    assert Budget.parse("4GB").resource == "bytes" and Budget.parse("4bits").resource == "wbits"
    assert "(1,540,478,210 bytes)" in Budget.parse("30%").describe(inv)


@given(st.floats(min_value=0.001, max_value=1e4, allow_nan=False), st.sampled_from(["KB", "MB", "GB", "KiB", "MiB", "GiB"]))
def test_roundtrip_any_byte_size(x, unit):
    text = f"{x:.6g}{unit}"
    b = Budget.parse(text)
    scale = {"KB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit]
    assert b.value == pytest.approx(float(f"{x:.6g}") * scale)
    assert Budget.parse(str(b)) == b
