"""Seeded, batched generation and image grids (`mpsearch/pipelines/generate.py`): on the demo model (its
real sampling setting, 32 px) and on the tiny SD pipeline (its native resolution, kept timesteps)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from mpsearch.pipelines.generate import generate, image_grid
from mpsearch.zoo import load_demo

PROMPT = "a red circle at the top left"


@pytest.fixture(scope="module")
def pipe():
    # as the training recipe samples (denormals make CPU sampling slow); process-wide, so restored after
    # this module: hypothesis refuses float strategies while it is on
    torch.set_flush_denormal(True)
    yield load_demo()
    torch.set_flush_denormal(False)


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


def pixels(images) -> list[np.ndarray]:
    return [np.asarray(im, dtype=np.int16) for im in images]


def test_a_prompt_at_the_family_s_native_resolution(tiny_pipe):
    """One string is one prompt; without height/width the tiny SD draws at its native 16 px (8x8 latents
    through a 2x VAE), as `profile` samples."""
    images = generate(tiny_pipe, PROMPT, steps=1)
    assert len(images) == 1 and images[0].size == (16, 16) and images[0].mode == "RGB"
    assert generate(tiny_pipe, [PROMPT], steps=1, height=24, width=32)[0].size == (32, 24)


def test_kept_timesteps_are_the_steps_they_name(tiny_pipe):
    """Sampling at [999, 499] is trailing DDIM's own 2-step schedule: the same pixels; other timesteps,
    other pixels; steps and timesteps together are refused."""
    two = pixels(generate(tiny_pipe, [PROMPT], steps=2))
    assert np.array_equal(pixels(generate(tiny_pipe, [PROMPT], timesteps=[999, 499]))[0], two[0])
    assert not np.array_equal(pixels(generate(tiny_pipe, [PROMPT], timesteps=[999, 249]))[0], two[0])
    with pytest.raises(ValueError, match="pass steps or timesteps, not both"):
        generate(tiny_pipe, [PROMPT], steps=2, timesteps=[999, 499])


def test_image_grid_layout():
    from PIL import Image

    tiles = [Image.new("RGB", (32, 32), c) for c in ("red", "green", "blue")]
    g = image_grid(tiles, rows=2, cols=2, labels=["r", "g", "b"], tile=64)
    assert g.width == 128 and g.height > 128
    assert g.getpixel((10, 10)) == (255, 0, 0) and g.getpixel((70, 10)) == (0, 128, 0)
    with pytest.raises(ValueError):
        image_grid(tiles, rows=1, cols=2)


def test_image_grid_sizes_and_label_count():
    tiles = [Image.new("RGB", (32, 20), c) for c in ("red", "green", "blue")]
    grid = image_grid(tiles, rows=1, cols=3)  # no labels: no caption band, tiles at the first image's size
    assert grid.size == (96, 20) and grid.getpixel((70, 10)) == (0, 0, 255)
    assert image_grid(tiles, rows=2, cols=2).getpixel((40, 30)) == (255, 255, 255)  # the empty cell
    with pytest.raises(ValueError, match="2 labels for 3 images"):
        image_grid(tiles, rows=1, cols=3, labels=["r", "g"])
