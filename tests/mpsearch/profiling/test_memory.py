"""Memory plan: byte parsing, the CPU peak tracker, the probed model against measured peaks, batches that
fit a ceiling (or one line when none does), and a profile under --max-memory equal to one without it."""

from __future__ import annotations

import pytest
import torch

from mpsearch.profiling import calibration as cal
from mpsearch.profiling.engine import Profiler
from mpsearch.profiling.memory import Line, LiveBytes, MemoryModel, fit, parse_bytes, peak_bytes, probe
from mpsearch.profiling.profiler import profile
from mpsearch.profiling.session import Candidates, QuantSession

PROMPTS = cal.demo_prompts(2)


@pytest.fixture(scope="module")
def pipe(tiny_pipe_factory):
    return tiny_pipe_factory()


def test_parse_bytes():
    assert parse_bytes("22GiB") == 22 * 2**30 and parse_bytes("24GB") == 24 * 10**9
    assert parse_bytes("512 MiB") == 512 * 2**20 and parse_bytes("8000") == parse_bytes(8000) == 8000
    for bad in ("lots", "-3GB", "0"):
        with pytest.raises(ValueError, match="--max-memory"):
            parse_bytes(bad)


def test_live_bytes_counts_the_peak_not_the_total():
    with LiveBytes() as mode:
        a = torch.ones(1000, 1000)  # 4 MB
        b = a[:10]  # a view: no new storage
        del a, b
        c = torch.ones(500, 1000)  # 2 MB, after the first was freed
        d = c * 2  # 2 MB more: 4 MB live again
        del c, d
    assert mode.peak == 4_000_000 and mode.live == 0


@pytest.fixture(scope="module")
def prof(pipe):
    ref = cal.reference(pipe, PROMPTS, steps=2)
    session = QuantSession(pipe, Candidates(weight=(4,), act=(8, 16))).calibrate(ref)
    yield Profiler(pipe, ref, session, [[0, 1]])
    session.remove()


def test_probed_model_predicts_measured_peaks(prof):
    """The line through 2 and 4 rows predicts the peak at 8 rows within 15% (forward, Fisher, decode)."""
    layers = list(prof.session.layers)
    model = probe(prof, fisher=True, images=True, layers=layers, tensors=("weight", "act"))
    den, ref, dev = prof.denoiser, prof.ref, torch.device("cpu")
    with torch.no_grad():
        fwd = peak_bytes(lambda: ref.forward(den, torch.arange(8)), dev)
    fisher = peak_bytes(lambda: prof.fisher(layers, ("weight", "act"), rows=8), dev)
    lat = ref.latents[-1][:1].repeat(8, 1, 1, 1)
    with torch.no_grad():
        dec = peak_bytes(lambda: cal.decode(prof.pipe, lat, batch=8), dev)
    for kind, measured in (("forward", fwd), ("fisher", fisher), ("decode", dec)):
        predicted = model.lines[kind].at(8)
        assert abs(predicted - measured) <= 0.15 * measured, (kind, predicted, measured)
    assert model.lines["fisher"].per_row > model.lines["forward"].per_row > 0
    weights = sum(p.numel() * p.element_size() for c in prof.pipe.components.values()
                  if isinstance(c, torch.nn.Module) for p in [*c.parameters(), *c.buffers()])  # fmt: skip
    cache = sum(st.module.weight.numel() * 4 for st in prof.session.layers.values())  # 1 weight candidate
    assert (model.fixed, model.weight_cache) == (weights, cache)


def test_fit_chunks_to_the_ceiling_and_refuses_in_one_line():
    model = MemoryModel(1000, {"forward": Line(100, 10), "fisher": Line(100, 50), "decode": Line(0, 20)})
    plan = fit(model, 1000 + 100 + 10 * 40, rows_per_step=4, max_batch=1024, slots=8, fisher=False, images=True)
    assert (plan.max_batch, plan.image_slots) == (40, 8) and plan.decode_batch == 25
    assert all(p <= 1500 for p in plan.predicted.values())
    plan = fit(model, 1000 + 100 + 10 * 12, rows_per_step=4, max_batch=1024, slots=8, fisher=False, images=True)
    assert (plan.max_batch, plan.image_slots) == (12, 3)
    assert fit(model, 1000 + 100 + 50 * 3, rows_per_step=4, max_batch=2, slots=8, fisher=True, images=False).max_batch == 2
    cached = MemoryModel(1000, model.lines, weight_cache=300)
    plan = fit(cached, 1000 + 140 + 200, rows_per_step=4, max_batch=1024, slots=8, fisher=False, images=True)
    assert plan.weight_cache_limit == 100 and plan.max_batch == 14  # half of what one slot leaves, then rows
    with pytest.raises(ValueError, match=r"^--max-memory .*: nothing fits; the smallest batch needs") as e:
        fit(model, 1000 + 100 + 10 * 3, rows_per_step=4, max_batch=1024, slots=8, fisher=False, images=True)
    assert "\n" not in str(e.value)


def test_profile_under_max_memory_equals_unconstrained(pipe, tmp_path):
    kw = dict(prompts=PROMPTS, steps=2, bits=(2, 8), act_bits=(8, 16), metrics=["sqnr", "ssim"], out=None,
              all_metrics=True, slots=4, layers=r"^(conv_in|down_blocks\.0\.attentions\.0\.proj_in|conv_out)$")  # fmt: skip
    free = profile(pipe, **kw).df
    notes: list[str] = []
    tight = profile(pipe, max_memory=40 * 2**20, log=notes.append, **kw).df
    pd_cols = ["layer", "tensor", "bits", "metric", "step_group", "value", "degradation"]
    assert free[pd_cols].equals(tight[pd_cols])
    assert any(n.startswith("memory plan for") for n in notes)
    with pytest.raises(ValueError, match="nothing fits"):
        profile(pipe, max_memory="1MiB", **kw)
