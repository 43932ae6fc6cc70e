"""The committed demo weights: they load offline as a standard pipeline and draw what they are asked."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from mpsearch.pipelines.generate import generate
from mpsearch.zoo import DEMO_PATH, detector, load_demo, scenes


@pytest.fixture(scope="module")
def pipe():
    # as the training recipe samples (denormals make CPU sampling slow); process-wide, so restored after
    # this module: hypothesis refuses float strategies while it is on
    torch.set_flush_denormal(True)
    yield load_demo()
    torch.set_flush_denormal(False)


def test_folder_is_a_small_standard_pipeline():
    files = [p for p in DEMO_PATH.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 20_000_000
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pkl", ".ckpt")]  # safetensors only
    assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= {p.parent.name for p in files}


def test_loads_offline_in_float32(pipe):
    from diffusers import StableDiffusionPipeline

    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.safety_checker is None
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        assert {p.dtype for p in m.parameters()} == {torch.float32}
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    names = [n for n, _ in pipe.unet.named_modules()]
    assert any(".attn2." in n for n in names) and any(".ff." in n for n in names)


def test_plain_from_pretrained_gives_one_dtype():
    from diffusers import DiffusionPipeline

    p = DiffusionPipeline.from_pretrained(DEMO_PATH, local_files_only=True)
    assert {q.dtype for m in (p.unet, p.vae, p.text_encoder) for q in m.parameters()} == {torch.float32}


def test_tokenizer_is_word_level(pipe):
    ids = pipe.tokenizer("a magenta triangle at the bottom right").input_ids
    assert len(ids) == 7 + 2  # one token per word, plus start and end


def test_fp_model_follows_prompts(pipe):
    prompts = scenes.sample_prompts("train", 12, seed=3) + scenes.sample_prompts("heldout", 4, seed=3)
    images = generate(pipe, prompts, seed=0, steps=4, guidance=2.0)
    full, per = detector.adherence(images, prompts)
    assert full >= 0.75, (full, per)  # chance is 1/90
