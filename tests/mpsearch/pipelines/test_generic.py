"""A pipeline no adapter knows: its denoiser's inputs for the inventory come from the forward signature and
config, everything replayed comes from the pipeline's own `__call__`; a denoiser the generic inputs do not
fit is one clear error naming its class."""

import pytest
import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, StableDiffusion3Pipeline

from mpsearch.export.write import export
from mpsearch.model import ModelError, inventory
from mpsearch.pipelines import adapter_for
from mpsearch.planning.planner import solve
from mpsearch.planning.problem import SearchSpace
from mpsearch.profiling import calibration as cal
from mpsearch.profiling.profiler import profile
from tests.conftest import build_tiny_flux_pipeline, build_tiny_sd3_pipeline
from tests.mpsearch.pipelines import family_checks as fc


class MyTransformer(SD3Transformer2DModel):
    """An SD3-like DiT under a name no adapter knows."""


class MyPipeline(StableDiffusion3Pipeline):
    """A pipeline class no adapter knows."""


class MyFluxLike(FluxTransformer2DModel):
    """Packed latents and position ids: generic inputs cannot fit it."""


def test_an_unknown_pipeline_goes_end_to_end(tmp_path):
    known = build_tiny_sd3_pipeline()
    known.transformer.__class__ = MyTransformer
    pipe = MyPipeline(**known.components)
    pipe.set_progress_bar_config(disable=True)
    assert adapter_for(pipe).name == "generic"
    inv = inventory(pipe)
    assert inv.total_params == sum(p.numel() for p in pipe.transformer.parameters()) and all(l.macs > 0 for l in inv)
    assert "MixDQ" in inv.group_note  # names, not streams: no adapter says this is joint attention
    ref = cal.reference(pipe, [fc.PROMPT], steps=2, guidance=3.0)
    assert ref.call["guidance"] == "cfg_batch"
    own = fc._latents(pipe, ref.resolution, num_inference_steps=2, latents=cal.initial_noise(pipe, [0], ref.resolution))
    assert torch.equal(ref.latents[-1], own)
    kw = dict(prompts=[fc.PROMPT], steps=2, bits=(4, 8), tensors=("weight",), metrics=("sqnr",))
    exact = profile(pipe, out=tmp_path / "p", mode="exact", **kw).df
    batched = profile(pipe, out=None, mode="batched", slots=8, **kw).df
    assert exact.sort_values(fc.KEY)["degradation"].tolist() == pytest.approx(
        batched.sort_values(fc.KEY)["degradation"].tolist(), rel=1e-4, abs=1e-6)
    plan = solve(tmp_path / "p", "6bits", space=SearchSpace(weight_only=True))
    result = export(plan, tmp_path / "q", model=pipe, components=False)
    assert result.tensor_bytes == result.predicted_bytes


def test_a_denoiser_generic_inputs_do_not_fit_is_a_clear_error():
    den = build_tiny_flux_pipeline().transformer
    den.__class__ = MyFluxLike
    with pytest.raises(ModelError, match="MyFluxLike: cannot run its forward on dummy inputs.*generic adapter"):
        inventory(den)
