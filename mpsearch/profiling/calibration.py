"""The full-precision reference: calibration prompts, sampling, stored denoiser inputs/outputs, step groups.

`reference(pipe, prompts)` runs the FP sampler once and keeps, for every denoising step, the denoiser's
inputs and outputs (both classifier-free-guidance halves, as Q-Diffusion calibrates on) plus the latents
before each step and the decoded images. Quantizer calibration, the output metrics (SQNR, MSE) and the
image metrics (SSIM, adherence) all read it, so it is computed once per profile and cached on disk.

Any diffusers text-to-image pipeline whose denoiser takes one row per sample: the conditioning is what the
pipeline's own `__call__` passes to its denoiser (`capture_call`: SD's text embeddings, SDXL's pooled text
and size ids, PixArt's attention mask), and `Sampler` replays the pipelines' loop around it.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mpsearch.model import ModelError, find_denoiser
from mpsearch.pipelines import adapter_for

DEFAULT_STEPS = 8
DEFAULT_GUIDANCE = 3.0
FALLBACK_PROMPTS = (
    "a red circle at the top left",
    "a blue square in the center",
    "a green triangle at the bottom right",
    "a yellow circle at the bottom left",
    "a cyan square at the top right",
    "a magenta triangle in the center",
    "a white circle at the top right",
    "a red square at the bottom left",
)


def demo_settings() -> tuple[int, float]:
    """(steps, guidance) of the demo model: `mpsearch.zoo.DEMO_STEPS/DEMO_GUIDANCE`, else 8 and 3.0."""
    try:
        import mpsearch.zoo as zoo
    except ImportError:  # pragma: no cover
        return DEFAULT_STEPS, DEFAULT_GUIDANCE
    return int(getattr(zoo, "DEMO_STEPS", DEFAULT_STEPS)), float(getattr(zoo, "DEMO_GUIDANCE", DEFAULT_GUIDANCE))


def demo_prompts(n: int, seed: int = 0) -> list[str]:
    """Calibration prompts for the demo model: its own scene sampler (all combinations), else a fixed list."""
    try:
        from mpsearch.zoo.scenes import sample_prompts

        return sample_prompts("all", n, seed)
    except (ImportError, AttributeError):  # pragma: no cover - before the zoo lands
        return [FALLBACK_PROMPTS[i % len(FALLBACK_PROMPTS)] for i in range(n)]


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with '#' are skipped."""
    lines = Path(path).read_text().splitlines()
    prompts = [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def prompts_hash(prompts: list[str]) -> str:
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]


def quadratic_step_groups(timesteps: list[int], n_groups: int, num_train_timesteps: int = 1000) -> list[list[int]]:
    """TMPQ-DM's quadratic grouping of training timesteps, `s_i = floor((i·sqrt(0.8·T)/(N-1))²)`, mapped to
    sampling steps: each group lists the step indices whose timestep falls in it (empty groups dropped),
    ordered as the sampler visits them (group 0 holds step 0, the noisiest)."""
    if n_groups <= 1 or len(timesteps) <= 1:
        return [list(range(len(timesteps)))]
    T = num_train_timesteps
    bounds = [math.floor((i * math.sqrt(0.8 * T) / (n_groups - 1)) ** 2) for i in range(1, n_groups)]
    edges = [0, *bounds, T]
    groups: dict[int, list[int]] = {}
    for step, t in enumerate(timesteps):
        g = next(k for k in range(n_groups) if edges[k] <= t < edges[k + 1]) if t < T else n_groups - 1
        groups.setdefault(g, []).append(step)
    return sorted(groups.values(), key=lambda s: s[0])


def step_groups(timesteps: list[int], spec: int | str = "auto", num_train_timesteps: int = 1000) -> list[list[int]]:
    """`auto`: one group for few-step samplers (≤ 4 steps), else TMPQ-DM's quadratic grouping into 4."""
    if spec == "auto":
        spec = 1 if len(timesteps) <= 4 else 4
    return quadratic_step_groups(timesteps, int(spec), num_train_timesteps)


REFERENCE_FORMAT = 2  # 1: SD-only, text rows stored as `enc`; 2: any denoiser call, `cond` + `call`
SD_CALL = {"sample": "sample", "timestep": "scalar", "static": {}}


@dataclass
class Reference:
    """FP run of the sampler on the calibration prompts. Rows are `(step, cfg half, prompt)`: row
    `r = step·R + j` with `R` rows per step (unconditional prompts first, then conditional, as every
    diffusers pipeline batches them).

    `cond` holds the step-independent denoiser inputs of one step's rows, as the pipeline's own `__call__`
    passes them (`capture_call`), flattened by path: `encoder_hidden_states` for SD; plus
    `added_cond_kwargs.text_embeds` / `.time_ids` for SDXL; plus `encoder_attention_mask` for PixArt.
    `call` says how to call the denoiser: the name of its sample argument, whether the pipeline passes the
    timestep as a scalar or per row, and the non-tensor keyword arguments. `outputs` are the part of the
    denoiser's output that the sampler uses: all of it, or the noise half of learned-sigma models (PixArt)."""

    prompts: list[str]
    seeds: list[int]
    steps: int
    guidance: float
    resolution: int
    timesteps: list[int | float]
    cond: dict[str, torch.Tensor]  # path -> [R, ...] per-row conditioning of one step's rows
    samples: torch.Tensor  # [T, R, C, h, w] denoiser inputs
    outputs: torch.Tensor  # [T, R, C, h, w] denoiser outputs the sampler uses
    latents: torch.Tensor  # [T + 1, N, C, h, w] latents before each step; the last is the final one
    images: torch.Tensor  # [N, 3, H, W] decoded, in [0, 1]
    call: dict = field(default_factory=lambda: copy.deepcopy(SD_CALL))
    guidance_rescale: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def cfg(self) -> bool:
        return self.guidance > 1.0

    @property
    def enc(self) -> torch.Tensor:
        """The text rows `[R, L, D]` (`encoder_hidden_states`)."""
        return self.cond["encoder_hidden_states"]

    @property
    def rows_per_step(self) -> int:
        return len(self.prompts) * (2 if self.cfg else 1)

    @property
    def n_rows(self) -> int:
        return self.steps * self.rows_per_step

    def settings(self) -> dict:
        out = {
            "steps": self.steps, "guidance": self.guidance, "resolution": self.resolution, "seeds": self.seeds,
            "prompts_hash": prompts_hash(self.prompts), "n_prompts": len(self.prompts), "timesteps": self.timesteps,
        }  # fmt: skip
        if self.guidance_rescale:
            out["guidance_rescale"] = self.guidance_rescale
        return out

    def rows_of(self, steps: list[int]) -> torch.Tensor:
        R = self.rows_per_step
        return torch.cat([torch.arange(s * R, (s + 1) * R) for s in steps])

    def conditioning(self, j: torch.Tensor, repeat: int = 1) -> dict:
        """The denoiser's keyword inputs other than sample and timestep for rows `j` of a step (`[0, R)`),
        the whole set repeated `repeat` times along the batch."""
        kw = copy.deepcopy(self.call["static"])
        for path, x in self.cond.items():
            x = x[j]
            if repeat > 1:
                x = x.repeat(repeat, *([1] * (x.dim() - 1)))
            *parents, leaf = path.split(".")
            d = kw
            for p in parents:
                d = d.setdefault(p, {})
            d[leaf] = x
        return kw

    def inputs(self, rows: torch.Tensor, repeat: int = 1) -> dict:
        """Denoiser keyword inputs for flat `rows`, the whole set repeated `repeat` times (slot batching)."""
        R = self.rows_per_step
        steps, j = rows // R, rows % R
        sample = self.samples.flatten(0, 1)[rows]
        t = torch.tensor(self.timesteps)[steps]
        if repeat > 1:
            sample, t = sample.repeat(repeat, 1, 1, 1), t.repeat(repeat)
        return {self.call["sample"]: sample, "timestep": t, **self.conditioning(j, repeat)}

    def used(self, out: torch.Tensor) -> torch.Tensor:
        """The part of a denoiser output the sampler uses: the noise half when the model also predicts its
        variance (twice the latent channels, as PixArt; the pipeline drops the other half)."""
        C = self.latents.shape[2]
        return out[:, :C] if out.shape[1] == 2 * C else out

    def forward(self, denoiser: torch.nn.Module, rows: torch.Tensor, repeat: int = 1) -> torch.Tensor:
        """`used(denoiser(inputs(rows, repeat)))` in float32, on the denoiser's device and dtype."""
        dev = next(denoiser.parameters()).device
        kw = _to(self.inputs(rows, repeat), dev, denoiser.dtype, skip=("timestep",))
        return self.used(denoiser(**kw, return_dict=False)[0]).float()

    # ---- cache
    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        tensors = {k: getattr(self, k).contiguous().cpu() for k in ("samples", "outputs", "latents", "images")}
        tensors.update({f"cond.{k}": v.contiguous().cpu() for k, v in self.cond.items()})
        meta = {"format": REFERENCE_FORMAT, "prompts": self.prompts, "seeds": self.seeds, "steps": self.steps,
                "guidance": self.guidance, "guidance_rescale": self.guidance_rescale, "resolution": self.resolution,
                "timesteps": self.timesteps, "call": self.call, "extra": self.extra}  # fmt: skip
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # atomic: a run killed while writing leaves the old file or none (and a `*.tmp` sibling), never a torn one
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name + ".", suffix=".tmp", delete=False) as f:
            tmp = Path(f.name)
        try:
            save_file(tensors, str(tmp), metadata={"meta": json.dumps(meta)})
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | Path) -> Reference:
        """Read a saved reference. Format 1 files (before other pipelines than SD were sampled) hold the
        text rows as `enc`; they came from SD-style pipelines only, so they convert exactly. A file that
        cannot be read (torn, truncated, not a reference) raises ValueError naming it."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), "pt") as f:
                meta = json.loads(f.metadata()["meta"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not a readable reference ({type(e).__name__}: {e})") from None
        fmt = meta.pop("format", 1)
        if fmt == 1:
            tensors["cond.encoder_hidden_states"] = tensors.pop("enc")
        elif fmt != REFERENCE_FORMAT:
            raise ValueError(f"{path}: reference format {fmt}, this mpsearch reads 1 and {REFERENCE_FORMAT}")
        cond = {k[len("cond."):]: tensors.pop(k) for k in list(tensors) if k.startswith("cond.")}
        return cls(**meta, **tensors, cond=cond)


def _to(obj, device, dtype, skip=()):
    """Tensors of nested kwargs on `device`; floating ones (except keys in `skip`) in `dtype`."""
    if isinstance(obj, dict):
        return {k: obj[k].to(device) if k in skip else _to(v, device, dtype) for k, v in obj.items()}
    if isinstance(obj, torch.Tensor):
        return obj.to(device, dtype) if obj.is_floating_point() else obj.to(device)
    return obj


class _Captured(Exception):
    """Raised by the capture hook to stop the pipeline at its first denoiser call."""


def _split(value, path: str, batch: int, cond: dict, who: str):
    """Non-tensor part of a denoiser argument (tensors moved into `cond` by path)."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0 or value.shape[0] != batch:
            raise ModelError(f"{who} passes {path} of shape {tuple(value.shape)} to its denoiser, not one row "
                             f"per sample ({batch}); the profiler cannot replay it")  # fmt: skip
        cond[path] = value.detach().cpu().float() if value.is_floating_point() else value.detach().cpu()
        return None
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            rest = _split(v, f"{path}.{k}", batch, cond, who)
            if not isinstance(v, torch.Tensor):
                out[k] = rest
        return out
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ModelError(f"{who} passes {path} ({type(value).__name__}) to its denoiser; the profiler cannot store it")


@torch.no_grad()
def capture_call(pipe, prompts: list[str], *, noise: torch.Tensor, steps: int, guidance: float, resolution: int,
                 guidance_rescale: float = 0.0) -> tuple[dict[str, torch.Tensor], dict]:  # fmt: skip
    """Run the pipeline's own `__call__` up to its first denoiser call and return what it passes there:
    `(cond, call)` as stored in a `Reference`. So every pipeline's own conditioning is used (SDXL's pooled
    text and size ids, PixArt's attention mask and size conditions) without re-implementing it.

    The pipeline gets `noise` as its latents (no random draw), no resolution binning (PixArt: sample at
    `resolution` exactly) and its own scheduler untouched (a copy runs)."""
    _, den = find_denoiser(pipe)
    who = type(pipe).__name__
    sig = inspect.signature(den.forward)
    got: dict = {}

    def hook(module, args, kwargs):
        got.update(sig.bind(*args, **kwargs).arguments)
        raise _Captured

    adapter = adapter_for(pipe)
    wanted = {"prompt": prompts, "num_inference_steps": steps, "guidance_scale": guidance, "height": resolution,
              "width": resolution, "latents": noise, "output_type": "latent", "guidance_rescale": guidance_rescale,
              **adapter.call_options()}  # fmt: skip
    accepted = inspect.signature(pipe.__call__).parameters
    kwargs = {k: v for k, v in wanted.items() if k in accepted}
    if guidance_rescale and "guidance_rescale" not in accepted:
        raise ModelError(f"{who} has no guidance_rescale")
    handle = den.register_forward_pre_hook(hook, with_kwargs=True)
    scheduler = pipe.scheduler
    pipe.scheduler = copy.deepcopy(scheduler)
    try:
        pipe(**kwargs)
    except _Captured:
        pass
    finally:
        handle.remove()
        pipe.scheduler = scheduler
    if not got:
        raise ModelError(f"{who}.__call__ never called its denoiser; the profiler cannot sample it")
    names = list(sig.parameters)
    sample, t = got.pop(names[0]), got.pop("timestep", None)
    got.pop("return_dict", None)
    if t is None:
        raise ModelError(f"{who} calls its denoiser without a timestep; the profiler cannot sample it")
    cond: dict[str, torch.Tensor] = {}
    static = {k: _split(v, k, sample.shape[0], cond, who) for k, v in got.items()}
    static = {k: v for k, v in static.items() if not isinstance(got[k], torch.Tensor)}
    adapter.check_conditioning(cond, who)
    timestep = "batch" if isinstance(t, torch.Tensor) and t.dim() > 0 else "scalar"
    return cond, {"sample": names[0], "timestep": timestep, "static": static}


def _scheduler(pipe, steps: int):
    sched = copy.deepcopy(pipe.scheduler)
    sched.set_timesteps(steps, device=pipe.device)
    return sched


def restartable(pipe) -> bool:
    """Whether sampling can resume at a middle step from stored latents (single-step schedulers)."""
    return getattr(pipe.scheduler, "order", 1) == 1 and not hasattr(pipe.scheduler, "model_outputs")


def _noise_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % 2**63


class Sampler:
    """The pipeline's denoising loop, replayed from a `Reference`'s conditioning on `n_slots` copies of the
    prompts (slot-major latents `[S·N, C, h, w]`), as the diffusers pipelines run it: both CFG halves in one
    batch, `u + g·(c - u)`, guidance rescale (SD/SDXL's `rescale_noise_cfg`) when set, the noise half of
    learned-sigma outputs, the scheduler's `scale_model_input` and `step` (PixArt's one-step rule included).

    Stochastic schedulers (ancestral Euler, as SDXL-turbo ships) draw their noise for prompt `n` at step `i`
    from a generator seeded with `(seeds[n], i)`, so a trajectory resumed at a middle step, or run in any
    slot, gets the same noise as the reference's."""

    def __init__(self, pipe, ref: Reference, n_slots: int = 1):
        _, self.denoiser = find_denoiser(pipe)
        self.pipe, self.ref, self.n_slots = pipe, ref, n_slots
        self.sched = _scheduler(pipe, ref.steps)
        R = ref.rows_per_step
        self.cond = _to(ref.conditioning(torch.arange(R), n_slots), pipe.device, self.denoiser.dtype)
        params = inspect.signature(self.sched.step).parameters
        self._eta, self._gen = "eta" in params, "generator" in params
        self._denoised = ref.steps == 1 and adapter_for(pipe).one_step_denoised(pipe)

    def step(self, latents: torch.Tensor, i: int, on_step=None, advance: bool = True) -> torch.Tensor:
        """Sampling step `i` from `latents`; `on_step(i, model_input, t, output)` sees the denoiser call."""
        ref, S = self.ref, self.n_slots
        cfg = ref.cfg
        N = latents.shape[0] // S
        t = self.sched.timesteps[i]
        lat = latents.view(S, N, *latents.shape[1:])
        x = torch.stack([lat, lat], 1) if cfg else lat[:, None]
        x = self.sched.scale_model_input(x.flatten(0, 2), t)
        tt = t[None].expand(x.shape[0]) if ref.call["timestep"] == "batch" else t
        out = self.denoiser(x.to(self.denoiser.dtype), timestep=tt, **self.cond, return_dict=False)[0]
        if on_step is not None:
            on_step(i, x, t, out)
        if not advance:
            return latents
        eps = ref.used(out).float().view(S, 2 if cfg else 1, N, *latents.shape[1:])
        if cfg:
            u, c = eps[:, 0], eps[:, 1]
            eps = u + ref.guidance * (c - u)
            if ref.guidance_rescale > 0:
                from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

                eps = rescale_noise_cfg(eps.flatten(0, 1), c.flatten(0, 1), ref.guidance_rescale).view_as(eps)
        else:
            eps = eps[:, 0]
        kw: dict = {}
        if self._eta:
            kw["eta"] = 0.0  # the pipelines' default
        if self._gen:
            kw["generator"] = [torch.Generator().manual_seed(_noise_seed(s, i)) for _ in range(S) for s in ref.seeds]
        res = self.sched.step(eps.flatten(0, 1), t, latents, **kw, return_dict=False)
        return res[1] if self._denoised and len(res) > 1 else res[0]

    def run(self, latents: torch.Tensor, start: int = 0, on_step=None) -> torch.Tensor:
        for i in range(start, self.ref.steps):
            latents = self.step(latents, i, on_step)
        return latents


def denoise(pipe, ref: Reference, latents: torch.Tensor, *, start: int = 0, n_slots: int = 1,
            on_step=None) -> torch.Tensor:  # fmt: skip
    """Run sampling steps `start..steps-1` from `latents` ([S·N, C, h, w], slot-major) with the
    reference's conditioning (shared by every slot). `on_step(i, model_input, t, output)` sees each call."""
    return Sampler(pipe, ref, n_slots).run(latents, start, on_step)


def decode(pipe, latents: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Latents → images in [0, 1], [N, 3, H, W] float32, as the pipeline decodes them: SDXL's latent
    mean/std when its VAE has them, and its float32 upcast of an fp16 VAE marked `force_upcast`."""
    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False) and hasattr(pipe, "upcast_vae")
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    dtype = torch.float32 if upcast else vae.dtype
    if upcast:
        vae.to(torch.float32)
    try:
        out = []
        for i in range(0, latents.shape[0], batch):
            z = latents[i : i + batch].to(dtype)
            if mean is not None and std is not None:
                shape = (1, -1, 1, 1)
                z = z * torch.tensor(std).view(shape).to(z) / vae.config.scaling_factor + torch.tensor(mean).view(shape).to(z)
            else:
                z = z / vae.config.scaling_factor
            out.append((vae.decode(z, return_dict=False)[0].float() / 2 + 0.5).clamp(0, 1))
    finally:
        if upcast:
            vae.to(torch.float16)
    return torch.cat(out)


def initial_noise(pipe, seeds: list[int], resolution: int) -> torch.Tensor:
    """Unscaled starting noise, one CPU generator per seed: `[N, C, h, w]` on the pipeline's device."""
    _, denoiser = find_denoiser(pipe)
    side = resolution // pipe.vae_scale_factor
    z = [torch.randn(1, denoiser.config.in_channels, side, side, generator=torch.Generator().manual_seed(s)) for s in seeds]
    return torch.cat(z).to(pipe.device)


def default_resolution(pipe) -> int:
    """The pipeline's native resolution in pixels, as its adapter reads it."""
    _, denoiser = find_denoiser(pipe)
    return adapter_for(pipe).default_resolution(denoiser, pipe.vae_scale_factor)


def _number(t: torch.Tensor) -> int | float:
    v = t.item()
    return int(v) if float(v).is_integer() else float(v)


@torch.no_grad()
def reference(pipe, prompts: list[str], *, seeds: list[int] | None = None, steps: int = DEFAULT_STEPS,
              guidance: float = DEFAULT_GUIDANCE, resolution: int | None = None,
              guidance_rescale: float = 0.0) -> Reference:  # fmt: skip
    """Sample `prompts` (one image each, seed `seeds[i]`, default `0..N-1`) in full precision and keep
    everything the profiler compares against. The conditioning is what the pipeline's own `__call__`
    passes to its denoiser (`capture_call`); the loop is `Sampler`'s."""
    seeds = list(seeds) if seeds is not None else list(range(len(prompts)))
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    resolution = resolution or default_resolution(pipe)
    noise = initial_noise(pipe, seeds, resolution)
    cond, call = capture_call(pipe, list(prompts), noise=noise, steps=steps, guidance=guidance, resolution=resolution,
                              guidance_rescale=guidance_rescale)  # fmt: skip
    sched = _scheduler(pipe, steps)
    lat = noise * sched.init_noise_sigma
    ref = Reference(
        prompts=list(prompts), seeds=seeds, steps=steps, guidance=float(guidance), resolution=resolution,
        timesteps=[_number(t) for t in sched.timesteps], cond=cond, samples=torch.empty(0), outputs=torch.empty(0),
        latents=lat.float().cpu()[None], images=torch.empty(0), call=call, guidance_rescale=float(guidance_rescale),
    )  # fmt: skip
    samples, outputs, latents = [], [], [lat.float().cpu()]

    def keep(i, x, t, out):
        samples.append(x.float().cpu())
        outputs.append(ref.used(out).float().cpu())

    sampler = Sampler(pipe, ref)
    for i in range(steps):  # one step at a time to keep the latents before every step
        lat = sampler.step(lat, i, keep)
        latents.append(lat.float().cpu())
    ref.samples, ref.outputs, ref.latents = torch.stack(samples), torch.stack(outputs), torch.stack(latents)
    ref.images = decode(pipe, lat).cpu()
    return ref


@torch.no_grad()
def progressive_ranges(session, calib: Reference) -> None:
    """PCR: for each candidate activation width `b`, sample the calibration prompts with every
    activation quantized at `b`; step `i`'s ranges are fitted on the input that the already-quantized
    steps `0..i-1` produced (observed in one full-precision pass), then step `i` runs quantized."""
    pipe, steps = session.pipe, calib.steps
    names = list(session.layers)
    saved_plan, saved_steps = dict(session._plan), dict(session._step_plans)
    try:
        for b in session.candidates.of("act"):
            for st in session.layers.values():
                st.step_range[b] = st.range.unsqueeze(0).repeat(steps, 1, 1).clone()
            session.apply({n: (None, b) for n in names})
            sampler = Sampler(pipe, calib)  # a fresh scheduler per trajectory
            lat = calib.latents[0].to(pipe.device)
            for i in range(steps):
                session._collect, session._collect_step = True, i
                try:
                    sampler.step(lat, i, advance=False)
                finally:
                    session._collect, session._collect_step = None, None
                for st in session.layers.values():
                    st.step_range[b][i] = st._obs.pop(i)
                lat = sampler.step(lat, i)
    finally:
        session._plan, session._step_plans = saved_plan, saved_steps
