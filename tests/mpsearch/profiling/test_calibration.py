"""The FP reference: replaying it reproduces each pipeline's own denoiser calls and trajectory (SD, SDXL,
PixArt-alpha), slots tile every conditioning tensor, the cache round-trips, stochastic schedulers resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mpsearch.model import find_denoiser
from mpsearch.profiling import calibration as cal
from tests.conftest import TINY_PIPELINES

PROMPTS = cal.demo_prompts(2)
STEPS = 3


@pytest.fixture(scope="module", params=list(TINY_PIPELINES))
def family(request):
    return request.param, TINY_PIPELINES[request.param]()


def _pipeline_run(pipe, ref: cal.Reference, **extra):
    """The pipeline's own `__call__` from the reference's starting noise: every denoiser call's
    (kwargs, output) and the final latents."""
    _, den = find_denoiser(pipe)
    calls = []
    pre = den.register_forward_pre_hook(lambda m, a, kw: calls.append([a, kw]), with_kwargs=True)
    post = den.register_forward_hook(lambda m, a, kw, out: calls[-1].append(out[0]), with_kwargs=True)
    try:
        latents = pipe(PROMPTS, num_inference_steps=ref.steps, guidance_scale=ref.guidance, height=ref.resolution,
                       width=ref.resolution, latents=cal.initial_noise(pipe, ref.seeds, ref.resolution),
                       output_type="latent", **extra).images  # fmt: skip
    finally:
        pre.remove()
        post.remove()
    return calls, latents


def _extra(name: str) -> dict:
    return {"use_resolution_binning": False} if name == "pixart" else {}


def test_replay_equals_the_pipelines_own_denoiser_calls(family):
    name, pipe = family
    ref = cal.reference(pipe, PROMPTS, steps=STEPS, guidance=3.0)
    calls, final = _pipeline_run(pipe, ref, **_extra(name))
    assert len(calls) == STEPS
    _, den = find_denoiser(pipe)
    for i, (args, kwargs, out) in enumerate(calls):
        sample = args[0] if args else kwargs[ref.call["sample"]]
        assert torch.equal(ref.samples[i], sample)  # the same trajectory as the pipeline's
        assert torch.equal(ref.outputs[i], ref.used(out))
        with torch.no_grad():
            replay = den(**ref.inputs(ref.rows_of([i])), return_dict=False)[0]
        assert torch.equal(replay, out)
    assert torch.equal(ref.latents[-1], final)
    expected = {
        "sd": {"encoder_hidden_states"},
        "sdxl": {"encoder_hidden_states", "added_cond_kwargs.text_embeds", "added_cond_kwargs.time_ids"},
        "pixart": {"encoder_hidden_states", "encoder_attention_mask"},
    }[name]
    assert set(ref.cond) == expected and all(v.shape[0] == 2 * len(PROMPTS) for v in ref.cond.values())
    if name == "pixart":  # learned sigma: the sampler (and every metric) reads the noise half
        assert out.shape[1] == 2 * ref.outputs.shape[2]


def test_slots_tile_every_conditioning_tensor(family):
    _, pipe = family
    ref = cal.reference(pipe, PROMPTS, steps=2, guidance=3.0)
    rows = torch.tensor([1, 6, 3])
    one, three = ref.inputs(rows), ref.inputs(rows, repeat=3)

    def leaves(d, prefix=""):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from leaves(v, f"{prefix}{k}.")
            elif isinstance(v, torch.Tensor):
                yield f"{prefix}{k}", v

    a, b = dict(leaves(one)), dict(leaves(three))
    assert a.keys() == b.keys() and len(a) == 2 + len(ref.cond)
    for k, v in a.items():
        assert torch.equal(b[k], torch.cat([v] * 3)), k
    _, den = find_denoiser(pipe)
    with torch.no_grad():
        assert torch.allclose(ref.forward(den, rows, 3), ref.forward(den, rows).repeat(3, 1, 1, 1), atol=1e-5)


def test_cache_round_trips(family, tmp_path):
    _, pipe = family
    ref = cal.reference(pipe, PROMPTS, steps=2, guidance=3.0)
    ref.save(tmp_path / "ref.safetensors")
    back = cal.Reference.load(tmp_path / "ref.safetensors")
    assert back.settings() == ref.settings() and back.call == ref.call
    assert back.cond.keys() == ref.cond.keys() and all(torch.equal(back.cond[k], ref.cond[k]) for k in ref.cond)
    for k in ("samples", "outputs", "latents", "images"):
        assert torch.equal(getattr(back, k), getattr(ref, k))
    _, den = find_denoiser(pipe)
    with torch.no_grad():
        # recomputed in one batch of all rows, so float32 rounding may differ from the per-step batches
        torch.testing.assert_close(back.forward(den, torch.arange(ref.n_rows)), ref.outputs.flatten(0, 1))


def test_cache_is_written_whole_or_not_at_all(tiny_pipe, tmp_path, monkeypatch):
    """A save that dies half way (killed, disk full) leaves the previous file untouched and no torn one."""
    import safetensors.torch

    ref = cal.reference(tiny_pipe, PROMPTS, steps=2, guidance=3.0)
    path = tmp_path / "cache" / "ref.safetensors"
    ref.save(path)
    whole = path.read_bytes()
    real = safetensors.torch.save_file

    def dies_half_way(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        Path(filename).write_bytes(Path(filename).read_bytes()[:1000])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        ref.save(path)
    assert path.read_bytes() == whole and [p.name for p in path.parent.iterdir()] == ["ref.safetensors"]
    with pytest.raises(ValueError, match=r"ref.safetensors: not a readable reference \(SafetensorError"):
        path.write_bytes(whole[:1000])
        cal.Reference.load(path)


def test_format_1_cache_loads_as_sd_conditioning(tiny_pipe, tmp_path):
    from safetensors.torch import save_file

    ref = cal.reference(tiny_pipe, PROMPTS, steps=2, guidance=3.0)
    tensors = {k: getattr(ref, k).contiguous() for k in ("samples", "outputs", "latents", "images", "enc")}
    meta = {"prompts": ref.prompts, "seeds": ref.seeds, "steps": ref.steps, "guidance": ref.guidance,
            "resolution": ref.resolution, "timesteps": ref.timesteps, "extra": {}}  # fmt: skip
    save_file(tensors, str(tmp_path / "v1.safetensors"), metadata={"meta": json.dumps(meta)})
    old = cal.Reference.load(tmp_path / "v1.safetensors")
    with torch.no_grad():
        assert torch.equal(old.forward(tiny_pipe.unet, torch.arange(4)), ref.outputs.flatten(0, 1)[:4])


def test_guidance_rescale_follows_the_pipeline():
    from tests.conftest import build_tiny_sdxl_pipeline

    pipe = build_tiny_sdxl_pipeline()
    ref = cal.reference(pipe, PROMPTS, steps=STEPS, guidance=5.0, guidance_rescale=0.7)
    plain = cal.reference(pipe, PROMPTS, steps=STEPS, guidance=5.0)
    _, final = _pipeline_run(pipe, ref, guidance_rescale=0.7)
    assert torch.equal(ref.latents[-1], final)
    assert not torch.allclose(plain.latents[-1], final)
    assert ref.settings()["guidance_rescale"] == 0.7 and "guidance_rescale" not in plain.settings()


def test_stochastic_scheduler_resumes_with_the_same_noise():
    """SDXL-turbo's ancestral Euler, no CFG: a trajectory resumed at a middle step, alone or in slots,
    ends where the reference does (each prompt's noise at step i comes from its own seeded generator)."""
    from diffusers import EulerAncestralDiscreteScheduler

    from tests.conftest import build_tiny_sdxl_pipeline

    pipe = build_tiny_sdxl_pipeline()
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    ref = cal.reference(pipe, PROMPTS, steps=4, guidance=0.0)
    assert not ref.cfg and ref.rows_per_step == len(PROMPTS) and cal.restartable(pipe)
    again = cal.reference(pipe, PROMPTS, steps=4, guidance=0.0)
    assert torch.equal(again.latents, ref.latents)
    with torch.no_grad():
        resumed = cal.denoise(pipe, ref, ref.latents[2], start=2)
        slots = cal.denoise(pipe, ref, ref.latents[2].repeat(3, 1, 1, 1), start=2, n_slots=3)
    assert torch.equal(resumed, ref.latents[-1])
    assert torch.allclose(slots, ref.latents[-1].repeat(3, 1, 1, 1), atol=1e-5)


def test_quadratic_step_groups_match_tmpq():
    # TMPQ-DM, N=5 over 1000 timesteps: [0,50), [50,200), [200,450), [450,800), [800,1000)
    ts = [999, 900, 700, 500, 300, 100, 40]
    assert cal.quadratic_step_groups(ts, 5) == [[0, 1], [2, 3], [4], [5], [6]]
    assert cal.step_groups([999, 500, 100], "auto") == [[0, 1, 2]]
