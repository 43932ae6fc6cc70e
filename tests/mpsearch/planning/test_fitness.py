"""The sampled fitness on the bundled demo model (2 prompts, 4 steps): full precision at the full schedule
scores 0 against itself, fewer kept steps or fewer bits score worse, W2 worse than W8; bad metrics and
uncalibrated activation candidates are refused, and `close()` gives the pipeline back."""

from __future__ import annotations

import pytest
import torch

from mpsearch.model import inventory
from mpsearch.pipelines.generate import generate
from mpsearch.planning.fitness import TIE_BREAK, Fitness
from mpsearch.profiling.metrics import images_to_tensor
from mpsearch.profiling.session import Candidates
from mpsearch.zoo import load_demo

PROMPTS = ["a red circle at the top left", "a blue square in the center"]
POOL = [999, 749, 499, 249]  # the demo's trailing schedule at 4 steps


@pytest.fixture(scope="module")
def demo():
    return load_demo()  # no torch.set_flush_denormal here: it is process-wide and breaks hypothesis' floats


def patched(pipe) -> bool:
    return any(hasattr(m, "_mpsearch_orig_forward") for m in pipe.unet.modules())


@pytest.fixture(scope="module")
def fit(demo):
    f = Fitness.build(demo, PROMPTS, pool=POOL, metric="ssim", guidance=3.0, seed=0,
                      candidates=Candidates(weight=(2, 8), act=(16,)))  # fmt: skip
    yield f
    f.close()


def test_full_precision_at_the_full_schedule_scores_zero(fit):
    assert fit.reference.shape[0] == len(PROMPTS) and 0 <= fit.reference.min() <= fit.reference.max() <= 1
    rec = fit.score(None, POOL)
    assert rec["degradation"] == pytest.approx(0.0, abs=1e-6) and rec["pixel_mse"] == 0.0
    assert rec["fitness"] == pytest.approx(0.0, abs=1e-6)
    assert fit({}, POOL) == pytest.approx(0.0, abs=1e-6)  # no layer named: full precision too


def test_two_bits_score_worse_than_eight(fit, demo):
    names = inventory(demo).names
    w8 = fit.score(dict.fromkeys(names, (8, None)), POOL)
    w2 = fit.score(dict.fromkeys(names, (2, None)), POOL)
    assert 0 < w8["fitness"] < w2["fitness"]
    assert w8["pixel_mse"] < w2["pixel_mse"] and w8["value"] > w2["value"]  # SSIM: higher is closer
    assert w2["fitness"] == pytest.approx(w2["degradation"] + TIE_BREAK * w2["pixel_mse"])
    assert fit.log[-2:] == [w8, w2] and w2["timesteps"] == POOL
    assert fit.score(None, POOL)["pixel_mse"] == 0.0  # the bits applied for a call are reset after it


def test_fewer_kept_steps_score_worse_than_the_full_schedule(fit):
    assert fit(None, [999, 499]) > 0


def test_bad_metric_and_uncalibrated_activations_are_refused():
    pipe = load_demo()
    with pytest.raises(ValueError, match="metric 'sqnr' reads 'output'"):
        Fitness.build(pipe, PROMPTS[:1], pool=POOL, metric="sqnr", guidance=3.0)
    with pytest.raises(ValueError, match="activation candidates need calibrated ranges"):
        Fitness.build(pipe, PROMPTS[:1], pool=POOL, metric="ssim", guidance=3.0,
                      candidates=Candidates(weight=(8,), act=(8, 16)))  # fmt: skip
    assert not patched(pipe)  # the session it opened is removed again


def test_the_reference_is_plain_sampling_and_close_restores_the_pipeline():
    pipe = load_demo()
    f = Fitness.build(pipe, PROMPTS[:1], pool=POOL[::2], metric="ssim", guidance=3.0, seed=5,
                      candidates=Candidates(weight=(8,), act=(16,)))  # fmt: skip
    assert patched(pipe)
    f.close()
    assert not patched(pipe)
    plain = generate(pipe, PROMPTS[:1], seed=5, guidance=3.0, timesteps=POOL[::2])
    assert torch.equal(f.reference, images_to_tensor(plain))
