"""Fake quantization: the checkpoint's weights in place, restored on exit; activations through the profiler's quantizers."""

import pytest
import torch

from mpsearch.export.simulate import fake_quantize
from mpsearch.model import find_denoiser, inventory
from mpsearch.planning.plan import Plan
from mpsearch.profiling.quantizers import fake_quant_weight
from tests.mpsearch.export.plans import latents


def test_fake_quantize_restores_and_rounds_unquantized_to_fp16(tiny_pipe):
    pipe = tiny_pipe
    inv = inventory(pipe)
    _, den = find_denoiser(pipe)
    before = {n: p.detach().clone() for n, p in den.named_parameters()}
    plan = Plan.uniform(inv, 4)
    with fake_quantize(pipe, plan):
        w = den.get_submodule(inv.layers[0].name).weight
        assert torch.equal(w, fake_quant_weight(before[f"{inv.layers[0].name}.weight"], 4))
        norm = next(n for n in before if "norm" in n)
        assert torch.equal(dict(den.named_parameters())[norm], before[norm].half().float())
    for n, p in den.named_parameters():
        assert torch.equal(p, before[n]), n


def test_activation_bits_and_step_overrides_use_the_profiler_quantizers(tiny_pipe):
    from mpsearch.profiling.calibration import reference

    pipe = tiny_pipe
    inv = inventory(pipe)
    calib = reference(pipe, ["red circle", "blue square"], steps=3)
    weights_only = Plan.uniform(inv, 8)
    w8a8 = Plan.uniform(inv, 8, a_bits=8)
    relaxed = Plan.uniform(inv, 8, a_bits=8)
    relaxed.step_overrides = [{"steps": [0], "layers": {l.name: {"a_bits": 16} for l in inv.layers}}]
    with pytest.raises(ValueError, match="calib="):
        fake_quantize(pipe, w8a8)
    out = {}
    for name, plan in (("w8", weights_only), ("w8a8", w8a8), ("relaxed", relaxed)):
        with fake_quantize(pipe, plan, calib=calib) as fq:
            assert (fq.session is not None) == (name != "w8")
            out[name] = latents(pipe)
    assert not torch.equal(out["w8"], out["w8a8"])
    # step 0 at full-precision activations: the relaxed run sits between the two
    assert (out["relaxed"] - out["w8"]).abs().mean() < (out["w8a8"] - out["w8"]).abs().mean()
    _, den = find_denoiser(pipe)
    assert all("forward" not in vars(m) for m in den.modules())  # session removed on exit
