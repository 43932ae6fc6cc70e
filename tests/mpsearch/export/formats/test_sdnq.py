"""The `sdnq` format: written by the sdnq library through diffusers, loaded by `from_pretrained` with no
mpsearch code, bytes equal to the cost model's, and the loaded model computes mpsearch's simulation."""

from __future__ import annotations

import os

os.environ.setdefault("SDNQ_USE_TORCH_COMPILE", "0")  # sdnq's compile probe takes minutes on a loaded CPU

import numpy as np
import pytest
import torch
from safetensors import safe_open

from mpsearch.export.formats.sdnq import WEIGHTS_FILE, groups
from mpsearch.export.simulate import fake_quantize
from mpsearch.export.write import export
from mpsearch.model import Layer, find_denoiser, inventory
from mpsearch.planning.cost import get_format, layer_bytes, model_bytes
from tests.conftest import TINY_PIPELINES
from tests.mpsearch.export.plans import latents, mixed_plan


@pytest.mark.parametrize("shape", [(64, 96), (40, 320), (8, 64, 3, 3), (16, 48, 1, 1), (32, 1152)])
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_cost_rule_is_what_sdnq_stores(shape, bits):
    """Our byte count of a layer against the tensors sdnq's own quantizer produces for it, and our
    simulation against sdnq's dequantizer of those tensors."""
    from sdnq.quantizer import sdnq_quantize_layer_weight

    kind = "linear" if len(shape) == 2 else "conv2d"
    layer = Layer("x", kind, int(np.prod(shape)), 0, shape[0], shape[1], tuple(shape[2:]), 0, "quality", "unet")
    w = torch.randn(shape, generator=torch.Generator().manual_seed(bits))
    deq, parts = sdnq_quantize_layer_weight(w.half(), layer_class_name="Linear" if kind == "linear" else "Conv2d",
                                            weights_dtype=f"int{bits}", group_size=0, dequantize_fp32=True,
                                            torch_dtype=torch.float32)
    stored = {k: v for k, v in parts.items() if v is not None}
    assert set(stored) == {"weight", "scale"} and stored["scale"].dtype == torch.float32
    assert layer_bytes(layer, bits, "sdnq") == sum(v.numel() * v.element_size() for v in stored.values())
    assert stored["scale"].numel() == shape[0] * groups(shape[1], bits, kind == "linear") * int(np.prod(shape[2:]))
    sim = get_format("sdnq").fake_quant(w, bits)
    assert torch.equal(sim, deq(**stored, skip_compile=True))
    assert float((sim - w).norm() / w.norm()) < 0.8 / 2 ** (bits - 2)


def test_two_bits_can_cost_more_than_three():
    """sdnq's automatic groups shrink with the width (Linear: 16 inputs per float32 scale at 2 bits, 32 at
    3 bits, one group when 32 does not divide the row), so a 2-bit layer can be larger than a 3-bit one;
    the cost model says so and a solver avoids it."""
    fc = Layer("fc", "linear", 320 * 80, 0, 320, 80, (), 0, "quality", "unet")
    assert groups(80, 2, True) == 5 and groups(80, 3, True) == 1
    assert layer_bytes(fc, 2, "sdnq") == 320 * (20 + 5 * 4) > layer_bytes(fc, 3, "sdnq") == 320 * (30 + 4)


@pytest.mark.parametrize("family", ["sd", "sdxl", "pixart"])
def test_export_loads_with_from_pretrained_and_equals_the_simulation(family, tmp_path):
    pipe = TINY_PIPELINES[family]()
    inv = inventory(pipe)
    plan = mixed_plan(inv, "sdnq", seed=3)
    result = export(plan, tmp_path / "q", model=pipe)
    name, den = find_denoiser(pipe)
    params = {n for n, _ in den.named_parameters()}
    with safe_open(str(tmp_path / "q" / name / WEIGHTS_FILE), "pt") as f:
        written = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys()
                      if k in params or f"{k.rpartition('.')[0]}.weight" in params)
    assert written == result.tensor_bytes == result.predicted_bytes == model_bytes(inv, plan.w_bits(), "sdnq")

    # what a user without mpsearch runs: diffusers' from_pretrained, sdnq installed
    qpipe = type(pipe).from_pretrained(str(tmp_path / "q"), torch_dtype=torch.float32)
    qpipe.set_progress_bar_config(disable=True)
    _, qden = find_denoiser(qpipe)
    assert sum(type(m).__name__.startswith("SDNQ") for m in qden.modules()) == result.quantized_layers
    kw = {"height": 16, "width": 16} | ({"use_resolution_binning": False} if family == "pixart" else {})
    got = latents(qpipe, **kw)
    with fake_quantize(pipe, plan):
        want = latents(pipe, **kw)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)  # the same weights; float32 kernels may differ
    assert (want - latents(pipe, **kw)).abs().mean() > 100 * (got - want).abs().mean()


def test_demo_images_agree_with_the_simulation_within_one_level(tmp_path):
    from mpsearch.model import load_pipeline

    pipe = load_pipeline(None)
    plan = mixed_plan(inventory(pipe), "sdnq", seed=4, widths=(4, 5, 6, 8, 16))
    export(plan, tmp_path / "q", model=pipe)
    qpipe = type(pipe).from_pretrained(str(tmp_path / "q"), torch_dtype=torch.float32)
    qpipe.set_progress_bar_config(disable=True)

    def images(p):
        g = [torch.Generator().manual_seed(i) for i in range(2)]
        with torch.inference_mode():
            return p(["red circle at the top", "blue square"], num_inference_steps=4, guidance_scale=3.0,
                     generator=g, output_type="np").images

    got = images(qpipe)
    with fake_quantize(pipe, plan):
        want = images(pipe)
    assert np.abs(got - want).max() <= 1 / 255
