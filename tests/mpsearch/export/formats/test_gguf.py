"""The `gguf` format: llama.cpp block layouts to the byte, diffusers loads the file with no mpsearch code,
and the loaded denoiser computes exactly mpsearch's simulation of the plan."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from mpsearch.export.formats.gguf import GGUF_FILE, TYPE_BYTES, decode, encode, type_name
from mpsearch.export.simulate import ExportError, fake_quantize
from mpsearch.export.write import export
from mpsearch.model import Layer, find_denoiser, inventory
from mpsearch.planning.cost import get_format, layer_bytes, model_bytes
from mpsearch.planning.plan import LayerBits, Plan, PlanError
from tests.conftest import TINY_PIPELINES
from tests.mpsearch.export.plans import latents, mixed_plan

ORDER = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"]


def test_encoders_write_the_layout_the_gguf_library_decodes():
    """Our K-quant encoders (the library has none) against the library's own decoder: sizes are gguf's
    table, gguf's fp32 decoding equals diffusers' (the simulation) to fp16 rounding, errors fall with bits."""
    w = torch.randn(6, 512, generator=torch.Generator().manual_seed(0)) * 0.05
    w[0] = 0
    errors = {}
    for qtype in [*ORDER, "Q4_0", "Q5_0"]:
        data = encode(w, qtype)
        per, size = TYPE_BYTES[qtype]
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]] == (per, size)
        assert data.dtype == np.uint8 and data.shape == (6, 512 // per * size)
        sim = decode(data, qtype, (6, 512))
        lib = torch.from_numpy(gguf.quants.dequantize(data, gguf.GGMLQuantizationType[qtype]))
        assert (sim - lib).abs().max() <= 2**-8 * w.abs().max()  # fp16 arithmetic vs fp32: a few fp16 steps
        assert not sim[0].any()  # an all-zero row stays zero
        errors[qtype] = float((sim - w).norm() / w.norm())
    ordered = [errors[t] for t in ORDER]
    assert ordered == sorted(ordered, reverse=True)  # 2 → 8 bits: every width more accurate than the last
    assert errors["Q4_K"] < 0.1 and errors["Q8_0"] < 0.01  # a layout error would decode to noise (~1)


def test_widths_depend_on_the_layer():
    """Linear rows of whole 256-weight super blocks get every width; rows of 32-weight blocks only 4, 5
    and 8 (Q4_0, Q5_0, Q8_0); convs none (diffusers' GGUF loader quantizes Linear layers only)."""
    fmt = get_format("gguf")
    lin = lambda row: Layer(f"l{row}", "linear", 4 * row, 4, 4, row, (), 0, "quality", "unet")  # noqa: E731
    conv = Layer("c", "conv2d", 8 * 64 * 9, 8, 8, 64, (3, 3), 0, "quality", "unet")
    assert [b for b in (2, 3, 4, 5, 6, 8, 16) if fmt.stores(lin(512), b)] == [2, 3, 4, 5, 6, 8, 16]
    assert [b for b in (2, 3, 4, 5, 6, 8, 16) if fmt.stores(lin(320), b)] == [4, 5, 8, 16]
    assert [b for b in (2, 3, 4, 5, 6, 8, 16) if fmt.stores(lin(48), b)] == [16]
    assert [b for b in (2, 3, 4, 5, 6, 8, 16) if fmt.stores(conv, b)] == [16]
    # bytes by hand: 4 rows of 512 at Q4_K = 8 super blocks of 144 bytes; Q4_0 for rows of 320: 40 x 18
    assert layer_bytes(lin(512), 4, "gguf") == 8 * 144 + 4 * 2
    assert layer_bytes(lin(320), 4, "gguf") == 40 * 18 + 4 * 2 and type_name("linear", 320, 4) == "Q4_0"
    assert layer_bytes(lin(512), 2, "gguf") == 8 * 84 + 8 and layer_bytes(lin(512), 8, "gguf") == 64 * 34 + 8
    with pytest.raises(ValueError, match="Linear layers only"):
        layer_bytes(conv, 4, "gguf")


def test_solve_offers_only_the_widths_gguf_stores():
    from mpsearch.planning.planner import solve
    from tests.mpsearch.planning.profiles import synthetic_profile

    inv = inventory("sd15")
    plan = solve((synthetic_profile(inv), inv), "80%", fmt="gguf")  # convs stay fp16: ≥ 74% of fp16
    fmt = get_format("gguf")
    assert all(fmt.stores(l, plan.layers[l.name].w_bits) for l in inv.layers)
    assert {plan.layers[l.name].w_bits for l in inv.layers if l.kind == "conv2d"} == {16}
    assert any(b.w_bits < 16 for b in plan.layers.values())
    assert model_bytes(inv, plan.w_bits(), "gguf") <= 0.8 * inv.total_params * 2


def _load_natively(pipe, out, dtype=torch.float32):
    """What a user without mpsearch runs: diffusers' own GGUF loading, then the pipeline around it."""
    from diffusers import GGUFQuantizationConfig

    name, den = find_denoiser(pipe)
    qden = type(den).from_single_file(str(out / name / GGUF_FILE), config=str(out / name),
                                      quantization_config=GGUFQuantizationConfig(compute_dtype=dtype), torch_dtype=dtype)
    qpipe = type(pipe).from_pretrained(str(out), torch_dtype=dtype, **{name: qden})
    qpipe.set_progress_bar_config(disable=True)
    return qpipe


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_export_loads_in_diffusers_and_equals_the_simulation(family, tmp_path):
    pipe = TINY_PIPELINES[family]()
    inv = inventory(pipe)
    plan = mixed_plan(inv, "gguf", seed=1)
    assert sum(b.w_bits < 16 for b in plan.layers.values()) > 10
    result = export(plan, tmp_path / "q", model=pipe)
    reader = gguf.GGUFReader(str(tmp_path / "q" / "unet" / GGUF_FILE))
    params = {n for n, _ in pipe.unet.named_parameters()}
    written = sum(int(t.n_bytes) for t in reader.tensors if t.name in params)
    assert written == result.tensor_bytes == result.predicted_bytes == model_bytes(inv, plan.w_bits(), "gguf")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    arch = reader.get_field("general.architecture")
    # ComfyUI-GGUF's architecture names; it maps diffusers' tensor names itself (benchmarks/comfyui_gguf.py)
    assert bytes(arch.parts[arch.data[-1]]).decode() == {"sd": "sd1", "sdxl": "sdxl"}[family]
    assert set(types) == set(pipe.unet.state_dict())
    assert {types[f"{n}.weight"] for n, b in plan.layers.items() if b.w_bits < 16} <= set(TYPE_BYTES)

    qpipe = _load_natively(pipe, tmp_path / "q")
    assert any(type(m).__name__ == "GGUFLinear" for m in qpipe.unet.modules())
    kw = {"height": 16, "width": 16}
    got = latents(qpipe, **kw)
    with fake_quantize(pipe, plan):
        want = latents(pipe, **kw)
    assert torch.equal(got, want)  # diffusers dequantizes exactly what the simulation computes
    assert (want - latents(pipe, **kw)).abs().mean() > 1e-3


def test_demo_images_agree_with_the_simulation_within_one_level(tmp_path):
    from mpsearch.model import load_pipeline

    pipe = load_pipeline(None)
    plan = mixed_plan(inventory(pipe), "gguf", seed=2, widths=(4, 5, 6, 8, 16))
    export(plan, tmp_path / "q", model=pipe)
    qpipe = _load_natively(pipe, tmp_path / "q")

    def images(p):
        g = [torch.Generator().manual_seed(i) for i in range(2)]
        with torch.inference_mode():
            return p(["red circle at the top", "blue square"], num_inference_steps=4, guidance_scale=3.0,
                     generator=g, output_type="np").images

    got = images(qpipe)
    with fake_quantize(pipe, plan):
        want = images(pipe)
    assert np.abs(got - want).max() <= 1 / 255


def test_pixart_and_unstorable_plans_are_refused_before_writing(tmp_path):
    pipe = TINY_PIPELINES["pixart"]()
    inv = inventory(pipe)
    with pytest.raises(ExportError, match="from_single_file"):
        export(mixed_plan(inv, "gguf"), tmp_path / "p", model=pipe)
    sd = TINY_PIPELINES["sd"]()
    sd_inv = inventory(sd)
    conv = next(l for l in sd_inv.layers if l.kind == "conv2d")
    plan = Plan({l.name: LayerBits(16) for l in sd_inv.layers}, format="gguf")
    plan.layers[conv.name] = LayerBits(4)
    with pytest.raises(PlanError, match=conv.name.replace(".", r"\.") + ".*Linear layers only"):
        export(plan, tmp_path / "s", model=sd)
    assert list(tmp_path.iterdir()) == []


def test_profiling_with_the_gguf_quantizer_measures_only_what_gguf_stores():
    """`profile --format gguf`: weights rounded by gguf's quantizer, layers measured only at the widths
    GGUF has for them (conv_in: none), and the metadata names the quantizer."""
    from mpsearch.planning.quantizer import weight_config
    from mpsearch.profiling.profiler import profile

    pipe = TINY_PIPELINES["sd"]()
    k = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"  # Linear, rows of 32: Q4_0, Q8_0
    prof = profile(pipe, out=None, layers=rf"^(conv_in|{k.replace('.', '[.]')})$", tensors=["weight"],
                   bits=(2, 4, 8), metrics=["sqnr"], prompts=["red circle", "blue square"], steps=2,
                   bos_aware=False, weight_cfg=weight_config("gguf"))
    measured = sorted({(r.layer, r.bits) for r in prof.df.itertuples()})
    assert measured == [(k, 4), (k, 8)]
    assert prof.meta["quant"]["weight"] == {**weight_config("packed").to_dict(), "format": "gguf"}
    d = prof.df.set_index("bits")["degradation"]
    assert d[4] > d[8] > 0


def test_fisher_scores_only_what_gguf_stores():
    """`profile --format gguf --mode fisher`: the gradient proxy too scores only the widths GGUF has per layer."""
    from mpsearch.planning.quantizer import weight_config
    from mpsearch.profiling.profiler import profile

    pipe = TINY_PIPELINES["sd"]()
    k = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"  # Linear, rows of 32: Q4_0, Q8_0
    prof = profile(pipe, out=None, layers=rf"^(conv_in|{k.replace('.', '[.]')})$", tensors=["weight"],
                   bits=(2, 4, 8), mode="fisher", prompts=["red circle", "blue square"], steps=2,
                   bos_aware=False, weight_cfg=weight_config("gguf"))  # fmt: skip
    assert sorted({(r.layer, r.bits) for r in prof.df.itertuples()}) == [(k, 4), (k, 8)]
    d = prof.df.set_index("bits")["degradation"]
    assert d[4] > d[8] > 0
