"""The committed demo weights: they load offline as a standard pipeline and draw what they are asked."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from mpsearch.pipelines.generate import generate, image_grid
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


def test_generate_is_seeded_and_independent_of_batching(pipe):
    prompts = [
        "a red circle at the top left",
        "a blue square in the center",
        "a green triangle at the bottom right",
    ]
    a = [np.asarray(im, dtype=np.int16) for im in generate(pipe, prompts, seed=7, steps=4, guidance=2.0)]
    b = [np.asarray(im, dtype=np.int16) for im in generate(pipe, prompts, seed=7, steps=4, guidance=2.0)]
    c = [
        np.asarray(im, dtype=np.int16)
        for im in generate(pipe, prompts, seed=7, steps=4, guidance=2.0, batch_size=1)
    ]
    d = [np.asarray(im, dtype=np.int16) for im in generate(pipe, prompts, seed=8, steps=4, guidance=2.0)]
    assert a[0].shape == (32, 32, 3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert max(np.abs(x - y).max() for x, y in zip(a, c, strict=True)) <= 3  # batching: float rounding only
    assert any(np.abs(x - y).mean() > 1 for x, y in zip(a, d, strict=True))


def test_fp_model_follows_prompts(pipe):
    prompts = scenes.sample_prompts("train", 12, seed=3) + scenes.sample_prompts("heldout", 4, seed=3)
    images = generate(pipe, prompts, seed=0, steps=4, guidance=2.0)
    full, per = detector.adherence(images, prompts)
    assert full >= 0.75, (full, per)  # chance is 1/90


def test_image_grid_layout():
    from PIL import Image

    tiles = [Image.new("RGB", (32, 32), c) for c in ("red", "green", "blue")]
    g = image_grid(tiles, rows=2, cols=2, labels=["r", "g", "b"], tile=64)
    assert g.width == 128 and g.height > 128
    assert g.getpixel((10, 10)) == (255, 0, 0) and g.getpixel((70, 10)) == (0, 128, 0)
    with pytest.raises(ValueError):
        image_grid(tiles, rows=1, cols=2)
