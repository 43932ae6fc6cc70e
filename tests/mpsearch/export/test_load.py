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
