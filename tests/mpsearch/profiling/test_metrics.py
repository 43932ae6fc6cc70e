"""Metric registry and built-in metrics: values, degradations ≥ 0, 0 for identical inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mpsearch.profiling.metrics import METRICS, get_metric, register_metric


def test_sqnr_and_mse():
    y = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noisy = y + 0.01 * torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
    value, deg = get_metric("sqnr")(y, noisy)
    assert 35 < value < 45 and math.isclose(deg, 10 ** (-value / 10), rel_tol=1e-12)
    assert get_metric("sqnr")(y, y) == (math.inf, 0.0)
    v, d = get_metric("mse")(y, noisy)
    assert v == d and math.isclose(d, float((noisy - y).pow(2).mean()), rel_tol=1e-6)


def test_ssim_is_one_minus_ssim():
    img = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert get_metric("ssim")(img, img) == (1.0, 0.0)
    value, deg = get_metric("ssim")(img, (img + 0.1 * torch.rand(img.shape)).clamp(0, 1))
    assert 0 < value < 1 and math.isclose(deg, 1 - value)


def test_adherence_counts_what_is_lost_against_fp():
    from mpsearch.zoo import scenes

    prompts = [scenes.caption("circle", "red", "top left"), scenes.caption("square", "blue", "center")]
    images = torch.stack([torch.from_numpy(scenes.render(*scenes.parse_caption(p))).permute(2, 0, 1).float() / 255
                          for p in prompts])  # fmt: skip
    assert get_metric("adherence")(images, images, prompts=prompts) == (1.0, 0.0)
    blank = torch.zeros_like(images)
    assert get_metric("adherence")(images, blank, prompts=prompts) == (0.0, 1.0)
    assert get_metric("adherence")(blank, blank, prompts=prompts) == (0.0, 0.0)


def test_register_validates():
    with pytest.raises(ValueError, match="kind"):
        register_metric("x", kind="style", stage="image")
    with pytest.raises(ValueError, match="stage"):
        register_metric("x", kind="content", stage="latent")
    with pytest.raises(ValueError, match="already registered"):
        register_metric("sqnr", kind="quality", stage="output")(lambda a, b: 0.0)

    @register_metric("negative", kind="quality", stage="output")
    def negative(reference, candidate):
        return -1.0

    try:
        with pytest.raises(ValueError, match="≥ 0"):
            get_metric("negative")(torch.zeros(1), torch.zeros(1))
    finally:
        METRICS.pop("negative")
    with pytest.raises(KeyError, match="registered"):
        get_metric("nope")
    assert np.isfinite(get_metric("mse")(torch.zeros(2), torch.ones(2))[1])


def _skimage_ssim(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    """Mean SSIM as the profiler computed it before the torch port: skimage per image, float64."""
    from skimage.metrics import structural_similarity

    from mpsearch.profiling.metrics import ssim_window

    ref = reference.permute(0, 2, 3, 1).double().numpy()
    cand = candidate.permute(0, 2, 3, 1).double().numpy()
    win = ssim_window(*ref.shape[1:3])
    return float(np.mean([structural_similarity(r, c, channel_axis=2, data_range=1.0, win_size=win)
                          for r, c in zip(ref, cand, strict=True)]))  # fmt: skip


@pytest.mark.parametrize("shape", [(3, 32, 32), (2, 16, 24), (2, 5, 5), (2, 3, 8), (1, 4, 6), (2, 64, 48)])
def test_torch_ssim_matches_skimage(shape):
    """Same values as skimage within 1e-4 (here ~1e-12), incl. images smaller than the 7-pixel window."""
    n, h, w = shape
    gen = torch.Generator().manual_seed(h * w)
    ref = torch.rand(n, 3, h, w, generator=gen)
    cand = (ref + 0.2 * torch.randn(ref.shape, generator=gen)).clamp(0, 1)
    value, deg = get_metric("ssim")(ref, cand)
    assert abs(value - _skimage_ssim(ref, cand)) < 1e-10 and deg == pytest.approx(1 - value)


def test_torch_ssim_on_demo_images_batched_over_candidates():
    """Demo-scene renders and noisy versions of them: one batched call over 3 candidates gives each one's
    skimage SSIM (and the same as scoring them one by one)."""
    from mpsearch.zoo import scenes

    rng = np.random.default_rng(0)
    prompts = [scenes.caption(*c) for c in scenes.all_combinations()[:6]]
    ref = torch.stack([torch.from_numpy(scenes.render(*scenes.parse_caption(p), rng)).permute(2, 0, 1).float() / 255
                       for p in prompts])  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    cands = torch.stack([(ref + s * torch.randn(ref.shape, generator=gen)).clamp(0, 1) for s in (0.01, 0.05, 0.2)])
    many = get_metric("ssim").many(ref, cands)
    for (value, deg), cand in zip(many, cands, strict=True):
        assert abs(value - _skimage_ssim(ref, cand)) < 1e-10
        assert (value, deg) == get_metric("ssim")(ref, cand)
    assert many[0][0] > many[1][0] > many[2][0]


def test_batched_adherence_equals_one_by_one():
    from mpsearch.zoo import scenes

    prompts = [scenes.caption("circle", "red", "top left"), scenes.caption("square", "blue", "center")]
    images = torch.stack([torch.from_numpy(scenes.render(*scenes.parse_caption(p))).permute(2, 0, 1).float() / 255
                          for p in prompts])  # fmt: skip
    cands = torch.stack([images, torch.zeros_like(images), images.flip(0)])
    many = get_metric("adherence").many(images, cands, prompts=prompts)
    assert many == [get_metric("adherence")(images, c, prompts=prompts) for c in cands]
    assert many[:2] == [(1.0, 0.0), (0.0, 1.0)]
