"""Loading a checkpoint: bit-exact dequantized weights; a damaged quantization map names the layer."""

import json

import pytest
import torch

from mpsearch.export.load import load_quantized
from mpsearch.export.simulate import ExportError, fake_quantize
from mpsearch.export.write import export
from mpsearch.model import find_denoiser, inventory
from mpsearch.planning.plan import Plan
from tests.mpsearch.export.plans import latents, mixed_plan


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


@pytest.mark.parametrize("fmt", ["packed", "quanto", "gguf", "sdnq"])
def test_every_format_loads_in_half_precision(fmt, tmp_path):
    """float16 and bfloat16 loads hold no float32 tensor (sdnq's scales excepted: float32 by design,
    `dequantize_fp32`), and generate where the CPU has the kernels. Before, packed and quanto left float32
    parameters (accelerate cast the loaded values back to the meta model's float32) and a float16 run
    failed on a GPU (`Input type (c10::Half) and bias type (float) should be the same`)."""
    import os

    os.environ.setdefault("SDNQ_USE_TORCH_COMPILE", "0")
    from tests.conftest import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    export(mixed_plan(inventory(pipe), fmt, seed=5), tmp_path / "q", model=pipe)
    for dtype in (torch.float16, torch.bfloat16):
        qpipe = load_quantized(tmp_path / "q", dtype=dtype)
        _, den = find_denoiser(qpipe)
        tensors = [*den.named_parameters(), *den.named_buffers()]
        wrong = {n: t.dtype for n, t in tensors if t.is_floating_point() and t.dtype != dtype
                 and not (fmt == "sdnq" and n.endswith(".scale"))}
        assert wrong == {}
        if dtype == torch.bfloat16 and fmt in ("packed", "quanto"):
            continue  # optimum-quanto's CPU int8 kernel (torch._weight_int8pack_mm) segfaults in bfloat16
        out = latents(qpipe)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_loaded_tensors_own_their_memory(tiny_pipe, tmp_path):
    """No loaded tensor is a view into the file's memory map or into another tensor (a view would keep the
    whole file, packed codes included, resident for as long as the model lives)."""
    from mpsearch.export.load import load_denoiser

    export(mixed_plan(inventory(tiny_pipe), "packed", seed=1), tmp_path / "q", model=tiny_pipe, components=False)
    den = load_denoiser(tmp_path / "q" / "unet", dtype=torch.float16, device="cpu")
    seen = {}
    for name, t in [*den.named_parameters(), *den.named_buffers()]:
        data = getattr(t, "_data", t)  # quanto weights: their codes
        data = getattr(data, "_data", data)
        ptr = data.untyped_storage().data_ptr()
        assert ptr not in seen, f"{name} shares its storage with {seen.get(ptr)}"
        assert data.untyped_storage().nbytes() == data.numel() * data.element_size(), name
        seen[ptr] = name
