"""HunyuanDiT end to end: the rotary `(cos, sin)` tuple passed without a batch dimension (shared by every
row and slot), BERT + T5 conditioning, long-skip blocks as pruning units, the attention pool's projections
found to be used outside `forward` and kept out of the inventory (never profiled as zero), and every
command."""

import pytest
import torch

from mpsearch.model import inventory
from mpsearch.profiling import calibration as cal
from mpsearch.profiling.profiler import profile
from tests.conftest import build_tiny_hunyuandit_pipeline
from tests.mpsearch.pipelines import family_checks as fc

LAYERS = r"(blocks\.0\.attn2\.to_k|blocks\.3\.skip_linear|text_embedder\.linear_1)$"


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_hunyuandit_pipeline()


def test_rotary_tuple_is_shared_and_replayed(pipe):
    ref = cal.reference(pipe, [fc.PROMPT], steps=2, guidance=3.0)
    assert ref.call["tuples"] == ["image_rotary_emb"] and set(ref.shared) == {"image_rotary_emb.0", "image_rotary_emb.1"}
    kw = ref.inputs(ref.rows_of([0]), repeat=3)  # three slots: per-row inputs tiled, the tuple as it is
    assert isinstance(kw["image_rotary_emb"], tuple) and kw["image_rotary_emb"][0].shape == (16, 8)
    assert kw["encoder_hidden_states_t5"].shape[0] == 6
    _, den = cal.find_denoiser(pipe)
    with torch.no_grad():
        first = den(**ref.inputs(ref.rows_of([0])), return_dict=False)[0]
    assert torch.equal(ref.used(first), ref.outputs[0])


def test_projections_used_outside_forward_are_not_quantizable(pipe):
    inv = inventory(pipe)
    pool = {f"time_extra_emb.pooler.{p}_proj" for p in ("q", "k", "v", "c")}
    assert set(inv.excluded) == pool and not pool & set(inv.names)
    _, den = cal.find_denoiser(pipe)
    assert inv.total_params == sum(p.numel() for p in den.parameters())  # they stay in the fixed parameters
    df = profile(pipe, out=None, mode="fisher", prompts=[fc.PROMPT], steps=2, bits=(4,), act_bits=(8, 16)).df
    assert not pool & set(df.layer)


def test_every_command(pipe, tmp_path):
    fc.check_every_command(pipe, tmp_path, LAYERS, units=4, fresh=build_tiny_hunyuandit_pipeline)
