"""Export: packed checkpoints hold exactly the cost model's bytes and reload into the fake-quant simulation."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors import safe_open

from mpsearch.exporter import (
    WEIGHTS_FILE,
    ExportError,
    export,
    fake_quantize,
    load_quantized,
    safetensors_header_bytes,
)
from mpsearch.model import find_denoiser, inventory
from mpsearch.packing import pack_bits, packed_nbytes, unpack_bits
from mpsearch.planning.cost import model_bytes
from mpsearch.planning.plan import LayerBits, Plan, PlanError
from mpsearch.quant import fake_quant_weight
from mpsearch.storage import get_storage


def mixed_plan(inv, fmt: str, seed: int = 0, widths=(2, 3, 4, 5, 6, 8, 16)) -> Plan:
    rng = random.Random(seed)
    plan = Plan({l.name: LayerBits(rng.choice(widths)) for l in inv.layers}, model=inv.model,
                fingerprint=inv.fingerprint, format=fmt)
    plan.predict(inv)
    return plan


def latents(pipe, prompts=("red circle", "blue square at the top"), steps=3):
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    with torch.inference_mode():
        return pipe(list(prompts), num_inference_steps=steps, guidance_scale=3.0, generator=gens,
                    output_type="latent").images.float()


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_roundtrip_and_size(bits):
    for n in (0, 1, 7, 8, 13, 1000):
        codes = torch.randint(0, 1 << bits, (n,), dtype=torch.uint8)
        packed = pack_bits(codes, bits)
        assert packed.numel() == packed_nbytes(n, bits)
        assert torch.equal(unpack_bits(packed, bits, n), codes)


def test_pack_layout_is_little_endian_bitstream():
    assert pack_bits(torch.tensor([1, 2, 3, 0], dtype=torch.uint8), 2).tolist() == [1 | 2 << 2 | 3 << 4]
    # 3-bit codes 0b101, 0b011, 0b111 → stream 101 110 111 (LSB first) → bytes 0b11_011_101, 0b1
    assert pack_bits(torch.tensor([5, 3, 7], dtype=torch.uint8), 3).tolist() == [0b11011101, 0b1]
    with pytest.raises(ValueError):
        pack_bits(torch.tensor([8], dtype=torch.uint8), 3)


@pytest.mark.parametrize("fmt", ["packed", "quanto"])
@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_storage_decodes_the_quantizer_integers(fmt, bits):
    from mpsearch.exporter import weight_config
    from mpsearch.quant import quantize_weight

    storage = get_storage(fmt)
    stored = {"packed": bits, "quanto": {3: 4, 5: 8, 6: 8}.get(bits, bits)}[fmt]
    w = torch.randn(6, 5, 3, 3)  # 6 output channels: not a multiple of quanto's 4 codes per byte
    q, scale, _ = quantize_weight(w, bits, weight_config(fmt))
    tensors = storage.encode(q, scale, stored)
    assert sum(t.numel() * t.element_size() for t in tensors.values()) == packed_nbytes(w.numel(), stored) + 6 * 2
    q2, scale2 = storage.decode(tensors, stored, tuple(w.shape))
    assert torch.equal(q2.to(torch.int32), q)
    if fmt == "packed":  # the zero point the quantization map records is the offset actually stored
        codes = unpack_bits(tensors["_packed"], stored, w.numel()).to(torch.int32) - storage.zero_point(stored)
        assert torch.equal(codes.reshape(q.shape), q)
    assert torch.equal((q2.float() * scale2).reshape(w.shape), fake_quant_weight(w, bits))


@pytest.mark.parametrize("fmt,layout", [("packed", "blobs"), ("quanto", "blobs"), ("packed", "tensors")])
def test_roundtrip_equals_fake_quant_and_bytes_equal_prediction(tiny_pipe, tmp_path, fmt, layout):
    pipe = tiny_pipe
    inv = inventory(pipe)
    plan = mixed_plan(inv, fmt)
    result = export(plan, tmp_path / "q", model=pipe, layout=layout)

    # bytes: tensors written == cost model, exactly; the file adds only the safetensors header
    predicted = model_bytes(inv, plan.w_bits(), fmt)
    path = tmp_path / "q" / "unet" / WEIGHTS_FILE
    with safe_open(str(path), "pt") as f:
        written = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())
    assert written == predicted == result.tensor_bytes == result.predicted_bytes
    assert path.stat().st_size == written + safetensors_header_bytes(path) == result.file_bytes
    assert json.loads((tmp_path / "q" / "export.json").read_text())["matches_prediction"]
    if layout == "blobs":  # one tensor per dtype: the file is the prediction plus a tiny header
        assert path.stat().st_size <= 1.005 * predicted

    # reload: quanto modules holding the codes; images equal the fake-quant simulation
    qpipe = load_quantized(tmp_path / "q")
    _, qden = find_denoiser(qpipe)
    kinds = {type(m).__name__ for m in qden.modules()}
    assert {"QLinear", "QConv2d"} <= kinds
    got = latents(qpipe)
    with fake_quantize(pipe, plan):
        want = latents(pipe)
    fp = latents(pipe)
    # quanto runs matmul + bias instead of addmm: float32 rounding only, far below the plan's own effect
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)
    assert (got - want).abs().mean() < 1e-3 * want.abs().mean()
    assert (want - fp).abs().mean() > 100 * (got - want).abs().mean()


def test_dequantized_load_is_bit_exact(tiny_pipe, tmp_path):
    pipe = tiny_pipe
    inv = inventory(pipe)
    plan = mixed_plan(inv, "packed", seed=3)
    export(plan, tmp_path / "q", model=pipe)
    qpipe = load_quantized(tmp_path / "q", dequantize=True)
    with fake_quantize(pipe, plan):
        _, den = find_denoiser(pipe)
        _, qden = find_denoiser(qpipe)
        qparams = dict(qden.named_parameters())
        for name, p in den.named_parameters():
            assert torch.equal(p, qparams[name]), name
        assert torch.equal(latents(qpipe), latents(pipe))


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


def test_plan_for_another_model_is_refused_naming_the_layer(tiny_pipe, tmp_path):
    inv = inventory(tiny_pipe)
    plan = Plan.uniform(inv, 8)
    other = dict(plan.layers)
    other["down_blocks.9.attentions.0.proj_in"] = LayerBits(8)
    with pytest.raises(PlanError, match=r"down_blocks\.9\.attentions\.0\.proj_in"):
        export(Plan(other, fingerprint="0123456789abcdef"), tmp_path / "x", model=tiny_pipe)
    missing = dict(plan.layers)
    gone = inv.layers[5].name
    del missing[gone]
    with pytest.raises(PlanError, match=gone.replace(".", r"\.")):
        fake_quantize(tiny_pipe, Plan(missing))
    with pytest.raises(PlanError, match="fingerprint"):
        export(Plan(dict(plan.layers), fingerprint="0123456789abcdef"), tmp_path / "y", model=tiny_pipe)


def test_unknown_layout_is_refused_before_anything_is_written(tiny_pipe, tmp_path):
    with pytest.raises(ValueError, match="layout"):
        export(Plan.uniform(inventory(tiny_pipe), 8), tmp_path / "q", model=tiny_pipe, layout="zip")
    assert not (tmp_path / "q").exists()


def test_budget_is_a_hard_ceiling(tiny_pipe, tmp_path):
    inv = inventory(tiny_pipe)
    plan = Plan.uniform(inv, 4, budget=f"{Plan.uniform(inv, 4).predicted['bytes'] - 1}B")
    with pytest.raises(ExportError, match="over the budget"):
        export(plan, tmp_path / "q", model=tiny_pipe, components=False)
    plan.budget = f"{plan.predicted['bytes']}B"
    assert export(plan, tmp_path / "q", model=tiny_pipe, components=False).budget_bytes == plan.predicted["bytes"]


def test_checkpoint_shape_mismatch_names_the_layer(tiny_pipe, tmp_path):
    inv = inventory(tiny_pipe)
    export(Plan.uniform(inv, 8), tmp_path / "q", model=tiny_pipe)
    qmap_path = tmp_path / "q" / "unet" / "quantization_map.json"
    qmap = json.loads(qmap_path.read_text())
    name = inv.layers[3].name
    qmap["modules"][name]["shape"][0] += 1
    qmap_path.write_text(json.dumps(qmap))
    with pytest.raises(ExportError, match=name.replace(".", r"\.")):
        load_quantized(tmp_path / "q")


def test_activation_bits_and_step_overrides_use_the_profiler_quantizers(tiny_pipe):
    from mpsearch.calibration import reference

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
