"""The bundled DiT (`mpsearch/zoo/demo-dit`, `--model demo-dit`): a standard SD3 pipeline that draws what it
is asked, and the whole chain on it end to end (generate, profile a slice, solve from the shipped profile,
export, load, generate within 1/255 of the simulation). Kept to seconds: few prompts, few steps."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from mpsearch.export.load import load_quantized
from mpsearch.export.simulate import fake_quantize
from mpsearch.export.write import export
from mpsearch.model import find_denoiser, inventory
from mpsearch.pipelines import adapter_for
from mpsearch.pipelines.generate import generate
from mpsearch.pipelines.sampling import sampling_defaults
from mpsearch.planning.planner import solve
from mpsearch.planning.problem import SearchSpace
from mpsearch.profiling.profiler import profile
from mpsearch.zoo import DEMO_DIT_PATH, DIT_T5_TOKENS, bundled_name, detector, load_demo, scenes

PROFILE = DEMO_DIT_PATH.parents[1] / "profiles" / "demo-dit"


@pytest.fixture(scope="module")
def pipe():
    torch.set_flush_denormal(True)  # process-wide: restored after this module (hypothesis refuses floats)
    yield load_demo(name="demo-dit")
    torch.set_flush_denormal(False)


def test_folder_is_a_small_standard_sd3_pipeline():
    from diffusers import DiffusionPipeline, StableDiffusion3Pipeline

    files = [p for p in DEMO_DIT_PATH.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert sum(p.stat().st_size for p in weights) <= 20_000_000
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pkl", ".ckpt")]
    p = DiffusionPipeline.from_pretrained(DEMO_DIT_PATH)  # plain: no arguments beyond the path
    assert isinstance(p, StableDiffusion3Pipeline)
    cfg = p.transformer.config
    assert (cfg.patch_size, cfg.qk_norm, type(p.scheduler).__name__) == (2, "rms_norm", "FlowMatchEulerDiscreteScheduler")


def test_demo_dit_resolves_wherever_demo_does(pipe):
    assert bundled_name("demo-dit") == bundled_name(pipe) == bundled_name(DEMO_DIT_PATH) == "demo-dit"
    assert bundled_name(None) == "demo" and bundled_name("sd15") is None
    a = adapter_for(pipe)
    assert a.name == adapter_for("demo-dit").name == "demo-dit"
    assert a.call_options() == {"max_sequence_length": DIT_T5_TOKENS}
    assert sampling_defaults("demo-dit") == a.sampling_defaults()
    assert inventory("demo-dit").model == "demo-dit"


def test_fp_model_follows_prompts(pipe):
    prompts = scenes.sample_prompts("train", 12, seed=3) + scenes.sample_prompts("heldout", 4, seed=3)
    d = sampling_defaults("demo-dit")
    full, per = detector.adherence(generate(pipe, prompts, steps=d["steps"], guidance=d["guidance"]), prompts)
    assert full >= 0.75, (full, per)  # chance is 1/90


def test_profile_a_slice_measures_adherence_on_demo_captions(pipe, tmp_path):
    prof = profile("demo-dit", out=tmp_path / "p", layers=r"^transformer_blocks\.0\.attn\.to_q$", n_prompts=2,
                   steps=2, bits=(2, 8), tensors=("weight",))  # fmt: skip
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    assert meta["model"] == "demo-dit" and "adherence" in meta["metrics"]
    assert all(scenes.parse_caption(p) for p in meta["sampling"]["prompts"])
    two = prof.df[(prof.df.bits == 2) & (prof.df.metric == "sqnr")]["degradation"].max()
    eight = prof.df[(prof.df.bits == 8) & (prof.df.metric == "sqnr")]["degradation"].max()
    assert two > eight >= 0


def test_solve_export_load_generate_within_1_of_simulation(pipe, tmp_path):
    plan = solve(PROFILE, "4bits", space=SearchSpace(weight_only=True))
    assert plan.model == "demo-dit" and plan.predicted["mean_w_bits"] <= 4.0
    result = export(plan, tmp_path / "q")  # no model given: the plan's own bundled model
    assert result.tensor_bytes == result.predicted_bytes == plan.predicted["bytes"]
    qpipe = load_quantized(tmp_path / "q")
    assert adapter_for(qpipe).name == "demo-dit"  # sampled with the T5 length it was trained with
    prompts = ["a red circle at the top left", "a blue square in the center"]
    got = [np.asarray(im, dtype=np.int16) for im in generate(qpipe, prompts, steps=4)]
    with fake_quantize(pipe, plan):
        want = [np.asarray(im, dtype=np.int16) for im in generate(pipe, prompts, steps=4)]
    assert max(np.abs(g - w).max() for g, w in zip(got, want, strict=True)) <= 1
    _, den = find_denoiser(pipe)
    assert den.transformer_blocks[0].attn.to_q.weight.dtype == torch.float32  # the simulation restored
