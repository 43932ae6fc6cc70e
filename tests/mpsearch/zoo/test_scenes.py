import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpsearch.zoo import scenes


def test_split_sizes_and_disjoint():
    train, held = scenes.train_combinations(), scenes.heldout_combinations()
    assert len(scenes.all_combinations()) == 90
    assert len(train) == 76 and len(held) == 14
    assert not set(train) & set(held)
    assert set(train) | set(held) == set(scenes.all_combinations())


def test_heldout_is_deterministic_and_every_attribute_is_trained():
    assert scenes.heldout_combinations() == scenes.heldout_combinations()
    train = scenes.train_combinations()
    assert {c.shape for c in train} == set(scenes.SHAPES)
    assert {c.color for c in train} == set(scenes.COLORS)
    assert {c.position for c in train} == set(scenes.POSITIONS)
    for h in scenes.heldout_combinations():  # every pair of a held-out combination is also trained
        assert any(c.shape == h.shape and c.color == h.color for c in train)
        assert any(c.color == h.color and c.position == h.position for c in train)
        assert any(c.shape == h.shape and c.position == h.position for c in train)


def test_render_is_a_coloured_shape_on_black():
    img = scenes.render("circle", "red", "top left", np.random.default_rng(0))
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert img[..., 1:].max() == 0 and img[..., 0].max() == 255
    ys, xs = np.nonzero(img[..., 0] > 128)
    assert xs.mean() < 16 and ys.mean() < 16  # top left
    assert img[31, 31].sum() == 0  # background black


def test_render_is_seeded():
    a = scenes.render("triangle", "cyan", "center", np.random.default_rng(3))
    b = scenes.render("triangle", "cyan", "center", np.random.default_rng(3))
    c = scenes.render("triangle", "cyan", "center", np.random.default_rng(4))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_caption_examples():
    assert scenes.caption("circle", "red", "top left") == "a red circle at the top left"
    assert scenes.caption("square", "blue", "center") == "a blue square in the center"


@given(st.sampled_from(scenes.all_combinations()))
def test_parse_caption_inverts_caption(combo):
    assert scenes.parse_caption(scenes.caption(*combo)) == combo


@pytest.mark.parametrize("bad", ["a purple circle at the top left", "a red blob in the center", "red circle"])
def test_parse_caption_rejects_unknown(bad):
    with pytest.raises(ValueError):
        scenes.parse_caption(bad)


def test_sample_prompts_cover_split_before_repeating():
    held = scenes.sample_prompts("heldout", 28, seed=1)
    want = {scenes.caption(*c) for c in scenes.heldout_combinations()}
    assert set(held[:14]) == want and set(held[14:]) == want
    assert scenes.sample_prompts("train", 5, seed=1) == scenes.sample_prompts("train", 5, seed=1)
    assert set(scenes.sample_prompts("train", 76)) == {
        scenes.caption(*c) for c in scenes.train_combinations()
    }
    with pytest.raises(ValueError):
        scenes.sample_prompts("test", 3)
