"""The measurement plan: `plan_units` lists every evaluation in a fixed order, each layer read by the metrics of
its group's kind (all of them with `all_metrics`, or when no chosen metric has that kind); `unit_batches`
groups units by (stage, step group) into batches of at most `size`, in order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from mpsearch.model import Layer
from mpsearch.profiling.engine import Unit, plan_units, unit_batches
from mpsearch.profiling.metrics import get_metric
from mpsearch.profiling.session import Candidates

SQNR, MSE, SSIM = get_metric("sqnr"), get_metric("mse"), get_metric("ssim")
GROUPS = [[0, 1], [2, 3]]  # two step groups


def layer(name: str, group: str) -> Layer:
    return Layer(name=name, kind="linear", params=64, bias=8, out_channels=8, in_channels=8, kernel=(),
                 macs=64, group=group, component="unet")  # fmt: skip


Q, C = layer("down.attn1.to_q", "quality"), layer("down.attn2.to_k", "content")
CANDS = Candidates(weight=(8, 4), act=(8, 16))  # measured: weight 4 and 8, act 8 (16 is full precision)


def test_units_come_in_a_fixed_order_with_the_metrics_of_the_layers_kind():
    units = plan_units([Q, C], GROUPS, CANDS, ("weight", "act"), [SQNR, SSIM], all_metrics=False)
    expect = [Unit(lay.name, t, b, g, stage, (metric,))
              for lay, stage, metric in ((Q, "output", "sqnr"), (C, "image", "ssim"))
              for t, b in (("weight", 4), ("weight", 8), ("act", 8)) for g in (0, 1)]  # fmt: skip
    assert units == expect
    again = plan_units([Q, C], GROUPS, CANDS, ("weight", "act"), [SQNR, SSIM], all_metrics=False)
    assert again == units  # shards take every n-th unit of this list, so it must not vary between calls


def test_all_metrics_reads_every_layer_with_every_metric_output_before_image():
    units = plan_units([C], GROUPS[:1], CANDS, ("weight",), [SSIM, SQNR, MSE], all_metrics=True)
    assert [(u.bits, u.stage, u.metrics) for u in units] == [
        (4, "output", ("sqnr", "mse")), (4, "image", ("ssim",)),
        (8, "output", ("sqnr", "mse")), (8, "image", ("ssim",)),
    ]  # fmt: skip


def test_a_layer_whose_kind_no_metric_has_is_read_by_all_of_them():
    """`--metrics sqnr` alone: the content layer is measured on SQNR rather than left out."""
    units = plan_units([Q, C], GROUPS[:1], CANDS, ("act",), [SQNR, MSE], all_metrics=False)
    assert [(u.layer, u.stage, u.metrics) for u in units] == [
        (Q.name, "output", ("sqnr", "mse")), (C.name, "output", ("sqnr", "mse"))]
    only_content = plan_units([Q, C], GROUPS[:1], CANDS, ("act",), [SSIM], all_metrics=False)
    assert {u.layer: u.metrics for u in only_content} == {Q.name: ("ssim",), C.name: ("ssim",)}


def test_no_measured_width_no_unit():
    assert plan_units([Q], GROUPS, Candidates(weight=(4,), act=(16,)), ("act",), [SQNR], False) == []


def test_unit_config_sets_the_measured_tensor_only():
    w = Unit("conv_in", "weight", 4, 0, "output", ("sqnr",))
    a = Unit("conv_in", "act", 8, 1, "image", ("ssim",))
    assert w.config({0, 1}) == ("conv_in", 4, None, {0, 1})
    assert a.config(None) == ("conv_in", None, 8, None)


units_st = st.lists(st.builds(Unit, layer=st.sampled_from(["a", "b", "c"]), tensor=st.sampled_from(["weight", "act"]),
                              bits=st.sampled_from([2, 4, 8]), group=st.integers(0, 2),
                              stage=st.sampled_from(["output", "image"]), metrics=st.just(("sqnr",))),
                    max_size=40)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(units_st, st.integers(1, 7))
def test_unit_batches_group_by_stage_and_step_group_within_the_size(units, size):
    batches = unit_batches(units, size)
    assert all(0 < len(b) <= size for b in batches)
    assert all(len({(u.stage, u.group) for u in b}) == 1 for b in batches)
    keys = list(dict.fromkeys((u.stage, u.group) for u in units))  # in order of first appearance
    for key in keys:
        mine = [b for b in batches if (b[0].stage, b[0].group) == key]
        wanted = [u for u in units if (u.stage, u.group) == key]
        assert [u for b in mine for u in b] == wanted  # every unit once, in its original order
        assert [len(b) for b in mine[:-1]] == [size] * (len(mine) - 1)  # only the last batch is short
    order = [(b[0].stage, b[0].group) for b in batches]
    assert order == sorted(order, key=keys.index)  # one run of batches per key, keys as they first appear
