"""The full-precision reference: calibration prompts, sampling, stored denoiser inputs/outputs, step groups.

`reference(pipe, prompts)` runs the FP sampler once and keeps, for every denoising step, the denoiser's
inputs and outputs (both classifier-free-guidance halves, as Q-Diffusion calibrates on) plus the latents
before each step and the decoded images. Quantizer calibration, the output metrics (SQNR, MSE) and the
image metrics (SSIM, adherence) all read it, so it is computed once per profile and cached on disk.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mpsearch.model import ModelError, find_denoiser

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


@dataclass
class Reference:
    """FP run of the sampler on the calibration prompts. Rows are `(step, cfg half, prompt)`: row
    `r = step·R + j` with `R` rows per step (unconditional prompts first, then conditional)."""

    prompts: list[str]
    seeds: list[int]
    steps: int
    guidance: float
    resolution: int
    timesteps: list[int]
    enc: torch.Tensor  # [R, L, D] text embeddings of one step's rows
    samples: torch.Tensor  # [T, R, C, h, w] denoiser inputs
    outputs: torch.Tensor  # [T, R, C, h, w] denoiser outputs
    latents: torch.Tensor  # [T + 1, N, C, h, w] latents before each step; the last is the final one
    images: torch.Tensor  # [N, 3, H, W] decoded, in [0, 1]
    extra: dict = field(default_factory=dict)

    @property
    def cfg(self) -> bool:
        return self.guidance > 1.0

    @property
    def rows_per_step(self) -> int:
        return self.enc.shape[0]

    @property
    def n_rows(self) -> int:
        return self.steps * self.rows_per_step

    def settings(self) -> dict:
        return {
            "steps": self.steps, "guidance": self.guidance, "resolution": self.resolution, "seeds": self.seeds,
            "prompts_hash": prompts_hash(self.prompts), "n_prompts": len(self.prompts), "timesteps": self.timesteps,
        }  # fmt: skip

    def rows_of(self, steps: list[int]) -> torch.Tensor:
        R = self.rows_per_step
        return torch.cat([torch.arange(s * R, (s + 1) * R) for s in steps])

    def inputs(self, rows: torch.Tensor, repeat: int = 1) -> dict:
        """Denoiser keyword inputs for flat `rows`, the whole set repeated `repeat` times (slot batching)."""
        R = self.rows_per_step
        steps, j = rows // R, rows % R
        sample = self.samples.flatten(0, 1)[rows]
        t = torch.tensor(self.timesteps)[steps]
        enc = self.enc[j]
        if repeat > 1:
            sample, t, enc = sample.repeat(repeat, 1, 1, 1), t.repeat(repeat), enc.repeat(repeat, 1, 1)
        return {"sample": sample, "timestep": t, "encoder_hidden_states": enc}

    def forward(self, denoiser: torch.nn.Module, rows: torch.Tensor, repeat: int = 1) -> torch.Tensor:
        dev = next(denoiser.parameters()).device
        kw = {k: v.to(dev) for k, v in self.inputs(rows, repeat).items()}
        kw["sample"] = kw["sample"].to(denoiser.dtype)
        kw["encoder_hidden_states"] = kw["encoder_hidden_states"].to(denoiser.dtype)
        return denoiser(**kw, return_dict=False)[0].float()

    # ---- cache
    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        tensors = {k: getattr(self, k).contiguous().cpu() for k in ("enc", "samples", "outputs", "latents", "images")}
        meta = {"prompts": self.prompts, "seeds": self.seeds, "steps": self.steps, "guidance": self.guidance,
                "resolution": self.resolution, "timesteps": self.timesteps, "extra": self.extra}  # fmt: skip
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata={"meta": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | Path) -> Reference:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = json.loads(f.metadata()["meta"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        return cls(**meta, **tensors)


def _encode(pipe, prompts: list[str], cfg: bool) -> torch.Tensor:
    if not hasattr(pipe, "encode_prompt"):
        raise ModelError(f"{type(pipe).__name__} has no encode_prompt; the profiler samples SD-style pipelines")
    try:
        cond, uncond = pipe.encode_prompt(prompts, pipe.device, 1, cfg, negative_prompt=None)
    except (TypeError, ValueError) as e:
        raise ModelError(f"{type(pipe).__name__}.encode_prompt is not SD-style ({e}); not supported yet") from e
    return torch.cat([uncond, cond]) if cfg else cond


def _scheduler(pipe, steps: int):
    sched = copy.deepcopy(pipe.scheduler)
    sched.set_timesteps(steps, device=pipe.device)
    return sched


def restartable(pipe) -> bool:
    """Whether sampling can resume at a middle step from stored latents (single-step schedulers)."""
    return getattr(pipe.scheduler, "order", 1) == 1 and not hasattr(pipe.scheduler, "model_outputs")


def denoise(pipe, enc: torch.Tensor, latents: torch.Tensor, steps: int, guidance: float, *, start: int = 0,
            n_slots: int = 1, on_step=None) -> torch.Tensor:  # fmt: skip
    """Run sampling steps `start..steps-1` from `latents` ([S·N, C, h, w], slot-major) with text rows
    `enc` ([R, L, D], shared by every slot). `on_step(i, model_input, t, output)` sees each denoiser call."""
    _, denoiser = find_denoiser(pipe)
    sched = _scheduler(pipe, steps)
    cfg = guidance > 1.0
    N = latents.shape[0] // n_slots
    enc_all = enc.repeat(n_slots, 1, 1).to(denoiser.dtype)
    for i in range(start, steps):
        t = sched.timesteps[i]
        lat = latents.view(n_slots, N, *latents.shape[1:])
        x = torch.stack([lat, lat], 1) if cfg else lat[:, None]
        x = sched.scale_model_input(x.flatten(0, 2), t)
        out = denoiser(x.to(denoiser.dtype), t, encoder_hidden_states=enc_all, return_dict=False)[0]
        if on_step is not None:
            on_step(i, x, t, out)
        eps = out.float().view(n_slots, 2 if cfg else 1, N, *out.shape[1:])
        eps = eps[:, 0] + guidance * (eps[:, 1] - eps[:, 0]) if cfg else eps[:, 0]
        latents = sched.step(eps.flatten(0, 1), t, latents, return_dict=False)[0]
    return latents


def decode(pipe, latents: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Latents → images in [0, 1], [N, 3, H, W] float32."""
    vae = pipe.vae
    out = []
    for i in range(0, latents.shape[0], batch):
        z = latents[i : i + batch].to(vae.dtype) / vae.config.scaling_factor
        out.append((vae.decode(z, return_dict=False)[0].float() / 2 + 0.5).clamp(0, 1))
    return torch.cat(out)


def initial_latents(pipe, seeds: list[int], resolution: int) -> torch.Tensor:
    _, denoiser = find_denoiser(pipe)
    side = resolution // pipe.vae_scale_factor
    sched = _scheduler(pipe, 1)
    z = [torch.randn(1, denoiser.config.in_channels, side, side, generator=torch.Generator().manual_seed(s)) for s in seeds]
    return (torch.cat(z) * sched.init_noise_sigma).to(pipe.device)


def default_resolution(pipe) -> int:
    _, denoiser = find_denoiser(pipe)
    side = denoiser.config.sample_size
    side = side[0] if isinstance(side, (list, tuple)) else side
    return int(side) * pipe.vae_scale_factor


@torch.no_grad()
def reference(pipe, prompts: list[str], *, seeds: list[int] | None = None, steps: int = DEFAULT_STEPS,
              guidance: float = DEFAULT_GUIDANCE, resolution: int | None = None) -> Reference:  # fmt: skip
    """Sample `prompts` (one image each, seed `seeds[i]`, default `0..N-1`) in full precision and keep
    everything the profiler compares against."""
    seeds = list(seeds) if seeds is not None else list(range(len(prompts)))
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    resolution = resolution or default_resolution(pipe)
    enc = _encode(pipe, prompts, guidance > 1.0)
    lat0 = initial_latents(pipe, seeds, resolution)
    samples, outputs, latents = [], [], [lat0.float().cpu()]

    def keep(i, x, t, out):
        samples.append(x.float().cpu())
        outputs.append(out.float().cpu())

    sched = _scheduler(pipe, steps)
    lat = lat0
    for i in range(steps):  # one step at a time to keep the latents before every step
        lat = _one_step(pipe, sched, enc, lat, i, guidance, keep)
        latents.append(lat.float().cpu())
    images = decode(pipe, lat)
    return Reference(
        prompts=list(prompts), seeds=seeds, steps=steps, guidance=float(guidance), resolution=resolution,
        timesteps=[int(t) for t in sched.timesteps], enc=enc.float().cpu(), samples=torch.stack(samples),
        outputs=torch.stack(outputs), latents=torch.stack(latents), images=images.cpu(),
    )  # fmt: skip


def _one_step(pipe, sched, enc, latents, i, guidance, on_step=None, advance=True):
    _, denoiser = find_denoiser(pipe)
    cfg = guidance > 1.0
    t = sched.timesteps[i]
    x = torch.cat([latents, latents]) if cfg else latents
    x = sched.scale_model_input(x, t)
    out = denoiser(x.to(denoiser.dtype), t, encoder_hidden_states=enc.to(denoiser.dtype), return_dict=False)[0]
    if on_step is not None:
        on_step(i, x, t, out)
    if not advance:
        return latents
    eps = out.float()
    if cfg:
        u, c = eps.chunk(2)
        eps = u + guidance * (c - u)
    return sched.step(eps, t, latents, return_dict=False)[0]


@torch.no_grad()
def progressive_ranges(session, calib: Reference) -> None:
    """PCR: for each candidate activation width `b`, sample the calibration prompts with every
    activation quantized at `b`; step `i`'s ranges are fitted on the input that the already-quantized
    steps `0..i-1` produced (observed in one full-precision pass), then step `i` runs quantized."""
    pipe, steps = session.pipe, calib.steps
    sched = _scheduler(pipe, steps)
    names = list(session.layers)
    saved_plan, saved_steps = dict(session._plan), dict(session._step_plans)
    enc = calib.enc.to(pipe.device)
    try:
        for b in session.candidates.of("act"):
            for st in session.layers.values():
                st.step_range[b] = st.range.unsqueeze(0).repeat(steps, 1, 1).clone()
            session.apply({n: (None, b) for n in names})
            lat = calib.latents[0].to(pipe.device)
            for i in range(steps):
                session._collect, session._collect_step = True, i
                try:
                    _one_step(pipe, sched, enc, lat, i, calib.guidance, advance=False)
                finally:
                    session._collect, session._collect_step = None, None
                for st in session.layers.values():
                    st.step_range[b][i] = st._obs.pop(i)
                lat = _one_step(pipe, sched, enc, lat, i, calib.guidance)
    finally:
        session._plan, session._step_plans = saved_plan, saved_steps
