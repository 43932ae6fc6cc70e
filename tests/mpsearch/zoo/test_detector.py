import numpy as np
import pytest
from PIL import Image

from mpsearch.zoo import detector, scenes


def _renders(n: int, seed: int):
    rng = np.random.default_rng(seed)
    combos = scenes.all_combinations()
    picks = [combos[i] for i in rng.integers(0, len(combos), n)]
    return [scenes.render(*c, rng) for c in picks], [scenes.caption(*c) for c in picks]


def test_reads_clean_renders():
    imgs, prompts = _renders(600, seed=11)
    full, per = detector.adherence(imgs, prompts)
    assert full >= 0.99
    assert min(per.values()) >= 0.99


def test_robust_to_noise_and_dimming():
    imgs, prompts = _renders(300, seed=12)
    rng = np.random.default_rng(0)
    noisy = [np.clip(im / 255.0 + rng.normal(0, 0.08, im.shape), 0, 1) for im in imgs]
    assert detector.adherence(noisy, prompts)[0] >= 0.97
    dim = [(im * 0.6).astype(np.uint8) for im in imgs]
    assert detector.adherence(dim, prompts)[0] >= 0.99


def test_accepts_pil_and_larger_images():
    img = scenes.render("square", "magenta", "bottom right", np.random.default_rng(1))
    want = {"shape": "square", "color": "magenta", "position": "bottom right"}
    assert detector.detect(Image.fromarray(img)) == want
    assert detector.detect(Image.fromarray(img).resize((128, 128), Image.NEAREST)) == want


def test_empty_image_has_no_attributes_and_scores_zero():
    black = np.zeros((32, 32, 3), np.uint8)
    assert detector.detect(black) == {"shape": None, "color": None, "position": None}
    full, per = detector.adherence([black], ["a red circle in the center"])
    assert full == 0 and per == {"shape": 0, "color": 0, "position": 0}


def test_wrong_prompt_is_caught():
    img = scenes.render("circle", "green", "top right", np.random.default_rng(2))
    full, per = detector.adherence([img], ["a green square at the top right"])
    assert full == 0 and per == {"shape": 0, "color": 1, "position": 1}


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        detector.adherence([np.zeros((32, 32, 3), np.uint8)], [])
