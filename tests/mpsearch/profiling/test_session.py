"""QuantSession: output error falls with bits; weights are the exporter's; BOS-aware, split shortcut and
progressive ranges change what they should; plans and step overrides apply."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mpsearch.profiling import calibration as cal
from mpsearch.profiling.quantizers import fake_quant_weight
from mpsearch.profiling.session import Candidates, quantize_pipeline, split_points


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).sum() / b.pow(2).sum())


@pytest.fixture(scope="module")
def calibrated(tiny_pipe_factory):
    pipe = tiny_pipe_factory()
    ref = cal.reference(pipe, cal.demo_prompts(2), steps=4, guidance=3.0)
    return pipe, ref


def test_session_output_error_falls_with_bits(calibrated):
    pipe, ref = calibrated
    s = quantize_pipeline(pipe, Candidates(), calib=ref)
    rows = torch.arange(ref.n_rows)
    try:
        with torch.no_grad():
            fp = ref.forward(pipe.unet, rows)
            w_err, a_err = [], []
            for b in (2, 4, 8):
                s.apply({n: (b, None) for n in s.layers})
                w_err.append(_rel_err(ref.forward(pipe.unet, rows), fp))
            for b in (4, 6, 8):
                s.apply({n: (None, b) for n in s.layers})
                a_err.append(_rel_err(ref.forward(pipe.unet, rows), fp))
            s.reset()
            assert torch.equal(ref.forward(pipe.unet, rows), fp)
    finally:
        s.remove()
    assert w_err[0] > w_err[1] > w_err[2] > 0
    assert a_err[0] > a_err[1] > a_err[2] > 0


def test_session_weights_are_the_exporters(calibrated):
    pipe, ref = calibrated
    s = quantize_pipeline(pipe, Candidates())
    try:
        st = s.layers["conv_in"]
        assert torch.equal(st.weight(4), fake_quant_weight(pipe.unet.conv_in.weight, 4))
        with pytest.raises(ValueError, match="not a candidate"):
            s.set("conv_in", 7)
        with pytest.raises(KeyError):
            s.set("no.such.layer", 4)
    finally:
        s.remove()


def test_remove_restores_modules(calibrated):
    pipe, ref = calibrated
    names = {n for n, _ in pipe.unet.named_modules()}
    s = quantize_pipeline(pipe, Candidates(), calib=ref)
    assert {n for n, _ in pipe.unet.named_modules()} == names  # patched in place, names unchanged
    s.apply({"conv_in": (2, 4)})
    s.remove()
    assert "forward" not in vars(pipe.unet.conv_in)
    with torch.no_grad():
        assert torch.equal(ref.forward(pipe.unet, torch.arange(4)), ref.outputs.flatten(0, 1)[:4])


def test_bos_aware_keeps_first_token_in_full_precision(calibrated):
    pipe, ref = calibrated
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    layer = pipe.unet.get_submodule(name)
    enc = ref.enc.clone()
    enc[:, 0] *= 50.0  # MixDQ: the BOS embedding is a huge outlier
    with torch.no_grad():
        fp = layer(enc)
    outs = {}
    for bos in (True, False):
        s = quantize_pipeline(pipe, Candidates(), bos_aware=bos)
        s.layers[name].range = torch.tensor([[float(enc[:, 1:].min()), float(enc[:, 1:].max())]])
        try:
            s.set(name, 4, 8)
            with torch.no_grad():
                outs[bos] = layer(enc)
            assert s.layers[name].bos is bos
        finally:
            s.remove()
    assert torch.allclose(outs[True][:, 0], fp[:, 0], rtol=1e-5, atol=1e-5)  # BOS row: FP weight, FP input
    assert not torch.equal(outs[True][:, 1:], fp[:, 1:])  # the other tokens are quantized
    assert not torch.allclose(outs[False][:, 0], fp[:, 0], atol=1e-3)
    # only cross-attention K/V are BOS-aware
    s = quantize_pipeline(pipe, Candidates())
    try:
        bos = {n for n, st in s.layers.items() if st.bos}
        assert bos and all(n.endswith(("attn2.to_k", "attn2.to_v")) for n in bos)
    finally:
        s.remove()


def test_bos_token_is_excluded_from_calibrated_range(calibrated):
    pipe, ref = calibrated
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v"
    enc = ref.enc.clone()
    enc[:, 0] *= 50.0  # a BOS outlier, as in CLIP
    ref = dataclasses.replace(ref, cond={**ref.cond, "encoder_hidden_states": enc})
    ranges = {}
    for bos in (True, False):
        s = quantize_pipeline(pipe, Candidates(), calib=ref, bos_aware=bos)
        ranges[bos] = s.layers[name].range.clone()
        s.remove()
    span = (ref.enc[:, 1:].max() - ref.enc[:, 1:].min()).item()
    assert (ranges[True][0, 1] - ranges[True][0, 0]).item() <= span + 1e-6
    assert (ranges[False][0, 1] - ranges[False][0, 0]).item() > 5 * span


def test_split_shortcut_quantizes_the_two_halves_separately(calibrated):
    pipe, ref = calibrated
    points = split_points(pipe.unet)
    assert points and all(".conv_shortcut" in n and n.startswith("up_blocks") for n in points)
    name, split = next(iter(points.items()))
    conv = pipe.unet.get_submodule(name)
    x = torch.randn(2, conv.in_channels, 4, 4, generator=torch.Generator().manual_seed(0))
    x[:, split:] *= 20  # the skip half has a much wider range (Q-Diffusion's bimodal input)
    qx, ranges, outs = {}, {}, {}
    for on in (True, False):
        s = quantize_pipeline(pipe, Candidates(), split_shortcut=on)
        st = s.layers[name]
        st.observe(x)
        st.range = st._obs.pop(None)
        ranges[on] = st.range.clone()
        qx[on] = st.quant_act(x, 4)
        s.set(name, None, 4)
        with torch.no_grad():
            outs[on] = conv(x)
        s.remove()
    assert ranges[True].shape == (2, 2) and ranges[False].shape == (1, 2)
    # the decoder half keeps its own narrow range: its error drops by far; the skip half is unchanged
    assert _rel_err(qx[True][:, :split], x[:, :split]) < 0.05 * _rel_err(qx[False][:, :split], x[:, :split])
    assert torch.equal(qx[True][:, split:], qx[False][:, split:])
    assert not torch.equal(outs[True], outs[False])


def test_progressive_ranges_are_per_step(calibrated):
    pipe, ref = calibrated
    s = quantize_pipeline(pipe, Candidates(act=(4, 8, 16)), calib=ref, progressive=True)
    try:
        st = s.layers["conv_in"]
        assert set(st.step_range) == {4, 8}
        table = st.step_range[4]
        assert table.shape == (ref.steps, 1, 2)
        assert not torch.equal(table[0], table[-1])  # inputs differ across steps
        assert not torch.equal(st.step_range[4], st.step_range[8])  # trajectories quantized at 4 vs 8 bits
        # at a step, the per-step range is the one used
        s.set("conv_in", None, 4)
        rows = ref.rows_of([ref.steps - 1])
        with torch.no_grad():
            out_prog = ref.forward(pipe.unet, rows)
            saved = st.step_range.pop(4)
            out_shared = ref.forward(pipe.unet, rows)
            st.step_range[4] = saved
        assert not torch.equal(out_prog, out_shared)
    finally:
        s.remove()


def test_apply_plan_and_step_overrides(calibrated):
    pipe, ref = calibrated
    s = quantize_pipeline(pipe, Candidates(), calib=ref)
    try:
        s.apply({"conv_in": {"w_bits": 4, "a_bits": 16}}, step_overrides=[{"steps": [1], "layers": {"conv_in": {"a_bits": 8}}}])
        assert s.config == {"conv_in": (4, None)}
        s._step = 1
        assert s._config("conv_in") == (4, 8)
        s._step = 0
        assert s._config("conv_in") == (4, None)
        with pytest.raises(KeyError):
            s.apply({"nope": (4, 8)})
    finally:
        s.remove()
