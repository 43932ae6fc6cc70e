"""The full-precision reference: calibration prompts, sampling, stored denoiser inputs/outputs, step groups.

`reference(pipe, prompts)` runs the FP sampler once and keeps, for every denoising step, the denoiser's
inputs and outputs (both classifier-free-guidance halves, as Q-Diffusion calibrates on) plus the latents
before each step and the decoded images. Quantizer calibration, the output metrics (SQNR, MSE) and the
image metrics (SSIM, adherence) all read it, so it is computed once per profile and cached on disk.

Any diffusers text-to-image pipeline: what its denoiser gets is what the pipeline's own `__call__` passes
(`capture_call`, through `mpsearch.pipelines.capture`: SD's text embeddings, SDXL's pooled text and size
ids, PixArt's attention mask, Flux's packed latents, position ids and embedded guidance, HunyuanDiT's
rotary tuples), its schedule is the one the pipeline sets up (flow matching's shifted sigmas included), and
`Sampler` replays the pipelines' loop around it (CFG in one batch, two calls or none, as the pipeline does).
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
from mpsearch.pipelines.capture import record

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


def demo_settings(name: str = "demo") -> tuple[int, float]:
    """(steps, guidance) of bundled model `name` (`mpsearch.zoo.sampling`: "demo" or "demo-dit"), else 8
    and 3.0."""
    try:
        import mpsearch.zoo as zoo
    except ImportError:  # pragma: no cover
        return DEFAULT_STEPS, DEFAULT_GUIDANCE
    s = zoo.sampling(name)
    return int(s["steps"]), float(s["guidance"])


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


REFERENCE_FORMAT = 3  # 1: SD-only, text rows stored as `enc`; 2: any denoiser call, `cond` + `call`;
# 3: also `shared` tensors, the guidance style, the timestep the denoiser gets and the pipeline's schedule
SD_CALL = {"sample": "sample", "timestep": "scalar", "static": {}}
IDENTITY = {"divide": 1, "flip": False}
GUIDANCE_STYLES = ("cfg_batch", "separate", "single")


@dataclass
class Reference:
    """FP run of the sampler on the calibration prompts. Rows are `(step, cfg half, prompt)`: row
    `r = step·R + j` with `R` rows per step (unconditional prompts first, then conditional, as every
    diffusers pipeline batches them; one row per prompt when the pipeline runs no CFG).

    `cond` holds the step-independent denoiser inputs of one step's rows, as the pipeline's own `__call__`
    passes them (`capture_call`), flattened by path: `encoder_hidden_states` for SD; plus
    `added_cond_kwargs.text_embeds` / `.time_ids` for SDXL; plus `encoder_attention_mask` for PixArt;
    Flux's `pooled_projections` and embedded `guidance`, LCM's `timestep_cond`. `shared` holds inputs
    without a batch dimension, passed unchanged to every call (Flux's `img_ids` / `txt_ids`, HunyuanDiT's
    rotary `image_rotary_emb.0` / `.1`, a tuple in `call["tuples"]`).
    `call` says how to call the denoiser: the name of its sample argument, whether the pipeline passes the
    timestep as a scalar or per row and how it maps the scheduler's timestep (`timestep_map`: Flux
    divides by 1000, Lumina 2 passes `1 - t/1000`), the non-tensor keyword arguments (`static`), the
    guidance style the pipeline showed (`cfg_batch`: both halves in one batch; `separate`: one call per
    half, replayed as one batch; `single`: one call, no CFG or guidance embedded as an input) and the
    keyword arguments of its `set_timesteps` call (`schedule`, e.g. Flux's `sigmas` and `mu`).
    `outputs` are the part of the denoiser's output that the sampler uses: all of it, or the noise half of
    learned-sigma models (PixArt, HunyuanDiT)."""

    prompts: list[str]
    seeds: list[int]
    steps: int
    guidance: float
    resolution: int
    timesteps: list[int | float]
    cond: dict[str, torch.Tensor]  # path -> [R, ...] per-row conditioning of one step's rows
    samples: torch.Tensor  # [T, R, *latent] denoiser inputs
    outputs: torch.Tensor  # [T, R, *latent] denoiser outputs the sampler uses
    latents: torch.Tensor  # [T + 1, N, *latent] latents before each step; the last is the final one
    images: torch.Tensor  # [N, 3, H, W] decoded, in [0, 1]
    call: dict = field(default_factory=lambda: copy.deepcopy(SD_CALL))
    guidance_rescale: float = 0.0
    extra: dict = field(default_factory=dict)
    shared: dict[str, torch.Tensor] = field(default_factory=dict)  # path -> tensor given to every call

    @property
    def cfg(self) -> bool:
        """Whether a step holds both guidance halves (as captured; older references: guidance > 1)."""
        style = self.call.get("guidance")
        return self.guidance > 1.0 if style is None else style != "single"

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

    def timestep_values(self, t: torch.Tensor) -> torch.Tensor:
        """Scheduler timesteps `t` as the pipeline passes them to its denoiser (`call["timestep_map"]`)."""
        m = self.call.get("timestep_map", IDENTITY)
        if self.call.get("timestep_dtype") == "float" or m["divide"] != 1 or m["flip"]:
            t = t.float()
        if m["divide"] != 1:
            t = t / m["divide"]
        return 1 - t if m["flip"] else t

    @property
    def model_timesteps(self) -> list[int | float]:
        """The timestep the denoiser gets at each step (what `QuantSession` matches calls to steps by)."""
        return [_number(v) for v in self.timestep_values(torch.tensor(self.timesteps))]

    def conditioning(self, j: torch.Tensor, repeat: int = 1) -> dict:
        """The denoiser's keyword inputs other than sample and timestep for rows `j` of a step (`[0, R)`),
        the per-row ones repeated `repeat` times along the batch; shared ones as they are."""
        kw = copy.deepcopy(self.call["static"])
        leaves = [(p, x[j].repeat(repeat, *([1] * (x.dim() - 1))) if repeat > 1 else x[j]) for p, x in self.cond.items()]
        for path, x in leaves + list(self.shared.items()):
            *parents, leaf = path.split(".")
            d = kw
            for p in parents:
                d = d.setdefault(p, {})
            d[leaf] = x
        for path in sorted(self.call.get("tuples", []), key=lambda p: -p.count(".")):
            *parents, leaf = path.split(".")
            d = kw
            for p in parents:
                d = d[p]
            d[leaf] = tuple(d[leaf][k] for k in sorted(d[leaf], key=int))
        return kw

    def inputs(self, rows: torch.Tensor, repeat: int = 1) -> dict:
        """Denoiser keyword inputs for flat `rows`, the whole set repeated `repeat` times (slot batching)."""
        R = self.rows_per_step
        steps, j = rows // R, rows % R
        sample = self.samples.flatten(0, 1)[rows]
        t = self.timestep_values(torch.tensor(self.timesteps)[steps])
        if repeat > 1:
            sample, t = sample.repeat(repeat, *([1] * (sample.dim() - 1))), t.repeat(repeat)
        return {self.call["sample"]: sample, "timestep": t, **self.conditioning(j, repeat)}

    def used(self, out: torch.Tensor) -> torch.Tensor:
        """The part of a denoiser output the sampler uses: the noise half when the model also predicts its
        variance (twice the latent channels, as PixArt; the pipeline drops the other half)."""
        C = self.latents.shape[2]
        return out[:, :C] if out.dim() == 4 and out.shape[1] == 2 * C else out

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
        tensors.update({f"shared.{k}": v.contiguous().cpu() for k, v in self.shared.items()})
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
        elif fmt not in (2, REFERENCE_FORMAT):
            raise ValueError(f"{path}: reference format {fmt}, this mpsearch reads 1 to {REFERENCE_FORMAT}")
        parts = {p: {k[len(p) + 1:]: tensors.pop(k) for k in list(tensors) if k.startswith(p + ".")} for p in ("cond", "shared")}
        return cls(**meta, **tensors, **parts)


def _to(obj, device, dtype, skip=()):
    """Tensors of nested kwargs on `device`; floating ones (except keys in `skip`) in `dtype`."""
    if isinstance(obj, dict):
        return {k: obj[k].to(device) if k in skip else _to(v, device, dtype) for k, v in obj.items()}
    if isinstance(obj, tuple):
        return tuple(_to(v, device, dtype) for v in obj)
    if isinstance(obj, torch.Tensor):
        return obj.to(device, dtype) if obj.is_floating_point() else obj.to(device)
    return obj


_TENSOR = object()  # `_split`'s mark for a value moved out entirely (a tensor, or a tuple of tensors)


@dataclass
class _Split:
    """A denoiser call taken apart: per-row tensors, shared tensors, tuple paths and the rest (`static`)."""

    rows: dict[str, torch.Tensor] = field(default_factory=dict)
    shared: dict[str, torch.Tensor] = field(default_factory=dict)
    tuples: list[str] = field(default_factory=list)
    static: dict = field(default_factory=dict)


def _stored(x: torch.Tensor) -> torch.Tensor:
    return x.detach().cpu().float() if x.is_floating_point() else x.detach().cpu()


def _split(value, path: str, batch: int, out: _Split, shared_names: tuple[str, ...], who: str):
    """The non-tensor skeleton of a denoiser argument; its tensors go to `out.rows` (first dimension the
    call's batch) or `out.shared` (no batch dimension, or named by the family's `shared_args`)."""
    if isinstance(value, torch.Tensor):
        per_row = value.dim() > 0 and value.shape[0] == batch and path.split(".")[0] not in shared_names
        (out.rows if per_row else out.shared)[path] = _stored(value)
        return _TENSOR
    if isinstance(value, dict):
        kept = {}
        for k, v in value.items():
            rest = _split(v, f"{path}.{k}", batch, out, shared_names, who)
            if rest is not _TENSOR:
                kept[k] = rest
        return kept
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, torch.Tensor) for v in value):
        out.tuples.append(path)
        for i, v in enumerate(value):
            _split(v, f"{path}.{i}", batch, out, shared_names, who)
        return _TENSOR
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ModelError(f"{who} passes {path} ({type(value).__name__}) to its denoiser; the profiler cannot store it")


def _split_call(args: dict, batch: int, shared_names: tuple[str, ...], who: str) -> _Split:
    out = _Split()
    for k, v in args.items():
        rest = _split(v, k, batch, out, shared_names, who)
        if rest is not _TENSOR:
            out.static[k] = rest
    return out


def _timestep_map(value, t0: float, T: int, who: str) -> dict:
    """How the pipeline maps the scheduler's timestep `t0` to what its denoiser got (`value`): as it is,
    divided by the training timesteps `T`, or `1 - t/T`; anything else is refused by name."""
    v = float(torch.as_tensor(value).reshape(-1)[0])
    for m in (IDENTITY, {"divide": T, "flip": False}, {"divide": T, "flip": True}):
        expect = t0 / m["divide"]
        expect = 1 - expect if m["flip"] else expect
        if abs(v - expect) <= 1e-5 * max(1.0, abs(expect)):
            return dict(m)
    raise ModelError(f"{who} passes timestep {v:g} to its denoiser at scheduler timestep {t0:g}: not t, t/{T} or "
                     f"1 - t/{T}; the profiler cannot replay it")  # fmt: skip


def _guidance_style(calls: list[dict], sample_name: str, n: int, who: str) -> str:
    """What the pipeline did in one step: one call of 2N rows (CFG batch), two of N (one per half) or one of N."""
    batches = [c[sample_name].shape[0] for c in calls]
    if batches == [2 * n]:
        return "cfg_batch"
    if batches == [n]:
        return "single"
    if batches == [n, n]:
        return "separate"
    raise ModelError(f"{who} calls its denoiser {len(calls)} time(s) in a step with batches {batches} for {n} "
                     "prompt(s); the profiler replays one CFG batch, two calls (one per guidance half) or one call")


def _merge_halves(first: _Split, second: _Split, order: tuple[str, str], who: str) -> _Split:
    """The two calls of separate guidance as one CFG batch (unconditional rows first)."""
    uncond, cond = (first, second) if order[0] == "uncond" else (second, first)
    if uncond.static != cond.static or uncond.tuples != cond.tuples or set(uncond.rows) != set(cond.rows):
        raise ModelError(f"{who}'s conditional and unconditional denoiser calls differ in their arguments")
    for path in uncond.shared.keys() | cond.shared.keys():
        a, b = uncond.shared.get(path), cond.shared.get(path)
        if a is None or b is None or a.shape != b.shape or not torch.equal(a, b):
            raise ModelError(f"{who} passes a different {path} to its conditional and unconditional calls")
    for path, a in uncond.rows.items():
        if a.shape[1:] != cond.rows[path].shape[1:]:
            raise ModelError(f"{who} passes {path} of shapes {tuple(a.shape)} and {tuple(cond.rows[path].shape)} "
                             "to its two guidance calls; the profiler replays them as one batch")  # fmt: skip
    rows = {p: torch.cat([a, cond.rows[p]]) for p, a in uncond.rows.items()}
    return _Split(rows, cond.shared, cond.tuples, cond.static)


@torch.no_grad()
def capture_call(pipe, prompts: list[str], *, noise: torch.Tensor | None = None, steps: int, guidance: float,
                 resolution: int, guidance_rescale: float = 0.0) -> tuple[dict, dict, dict]:  # fmt: skip
    """Run the pipeline's own `__call__` through its first denoising step and return what it passes to its
    denoiser: `(cond, call, shared)` as stored in a `Reference`. So every pipeline's own conditioning,
    guidance style, timestep convention and schedule are used without re-implementing them.

    The pipeline gets `noise` as its latents (no random draw), the family's call options (PixArt: no
    resolution binning) and its own scheduler untouched (a copy runs)."""
    adapter, who = adapter_for(pipe), type(pipe).__name__
    _, den = find_denoiser(pipe)
    wanted = {"prompt": prompts, "num_inference_steps": steps, "guidance_scale": guidance, "height": resolution,
              "width": resolution, "output_type": "latent", "guidance_rescale": guidance_rescale}  # fmt: skip
    if noise is not None:
        wanted["latents"] = noise.to(den.dtype)  # as the pipeline draws them (it runs its first step here)
    if guidance_rescale and "guidance_rescale" not in inspect.signature(pipe.__call__).parameters:
        raise ModelError(f"{who} has no guidance_rescale")
    rec = record(pipe, wanted)
    if not rec.calls:
        raise ModelError(f"{who}.__call__ never called its denoiser; the profiler cannot sample it")
    sample_name = next(iter(inspect.signature(den.forward).parameters))
    style = _guidance_style(rec.calls, sample_name, len(prompts), who)
    samples, times = [c.pop(sample_name) for c in rec.calls], [c.pop("timestep", None) for c in rec.calls]
    for c in rec.calls:
        c.pop("return_dict", None)
    if times[0] is None:
        raise ModelError(f"{who} calls its denoiser without a timestep; the profiler cannot sample it")
    if noise is not None and samples[0].shape[1:] != noise.shape[1:]:
        raise ModelError(f"{who}'s denoiser takes latents of shape {tuple(samples[0].shape[1:])}, the {adapter.name} "
                         f"adapter drew {tuple(noise.shape[1:])}")  # fmt: skip
    parts = [_split_call(c, s.shape[0], adapter.shared_args, who) for c, s in zip(rec.calls, samples, strict=True)]
    if style == "separate":
        if not (torch.equal(samples[0], samples[1]) and torch.equal(torch.as_tensor(times[0]), torch.as_tensor(times[1]))):
            raise ModelError(f"{who}'s two denoiser calls in a step see different latents or timesteps")
        parts = [_merge_halves(parts[0], parts[1], adapter.separate_order, who)]
    got = parts[0]
    adapter.check_conditioning({**got.rows, **got.shared}, who)
    t, sched = times[0], rec.scheduler
    tmap = _timestep_map(t, float(sched.timesteps[0]), int(sched.config.num_train_timesteps), who)
    floating = t.is_floating_point() if isinstance(t, torch.Tensor) else isinstance(t, float)
    call = {"sample": sample_name, "timestep": "batch" if isinstance(t, torch.Tensor) and t.dim() > 0 else "scalar",
            "timestep_map": tmap, "timestep_dtype": "float" if floating else "int", "static": got.static,
            "guidance": style, "tuples": got.tuples, "schedule": rec.schedule}  # fmt: skip
    return got.rows, call, got.shared


def scheduler_for(pipe, schedule: dict | None, steps: int):
    """A copy of the pipeline's scheduler set up as its `__call__` sets it up (`schedule`: the keyword
    arguments captured from it, e.g. Flux's `sigmas` and `mu`), else with `set_timesteps(steps)`."""
    sched = copy.deepcopy(pipe.scheduler)
    if schedule:
        sched.set_timesteps(**schedule, device=pipe.device)
    else:
        sched.set_timesteps(steps, device=pipe.device)
    return sched


def restartable(pipe) -> bool:
    """Whether sampling can resume at a middle step from stored latents (single-step schedulers)."""
    return getattr(pipe.scheduler, "order", 1) == 1 and not hasattr(pipe.scheduler, "model_outputs")


def _noise_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % 2**63


class Sampler:
    """The pipeline's denoising loop, replayed from a `Reference`'s conditioning on `n_slots` copies of the
    prompts (slot-major latents `[S·N, ...]`), as the diffusers pipelines run it: both CFG halves in one
    batch (also where the pipeline makes two calls), combined by the family's rule (`u + g·(c - u)`;
    Lumina 2 renormalises), guidance rescale (SD/SDXL's `rescale_noise_cfg`) when set, the noise half of
    learned-sigma outputs, the timestep as the pipeline passes it, the scheduler set up as the pipeline
    sets it up, its `scale_model_input` (where it has one) and `step` (PixArt's one-step rule included).

    Stochastic schedulers (ancestral Euler, as SDXL-turbo ships; LCM) draw their noise for prompt `n` at
    step `i` from a generator seeded with `(seeds[n], i)`, so a trajectory resumed at a middle step, or run
    in any slot, gets the same noise as the reference's."""

    def __init__(self, pipe, ref: Reference, n_slots: int = 1):
        _, self.denoiser = find_denoiser(pipe)
        self.pipe, self.ref, self.n_slots = pipe, ref, n_slots
        self.adapter = adapter_for(pipe)
        self.sched = scheduler_for(pipe, ref.call.get("schedule"), ref.steps)
        R = ref.rows_per_step
        self.cond = _to(ref.conditioning(torch.arange(R), n_slots), pipe.device, self.denoiser.dtype)
        params = inspect.signature(self.sched.step).parameters
        self._eta, self._gen = "eta" in params, "generator" in params
        self._denoised = ref.steps == 1 and self.adapter.one_step_denoised(pipe)

    def _call(self, latents: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(model input, scheduler timestep, denoiser output) of step `i` from `latents`."""
        ref, S = self.ref, self.n_slots
        N = latents.shape[0] // S
        t = self.sched.timesteps[i]
        lat = latents.view(S, N, *latents.shape[1:])
        x = (torch.stack([lat, lat], 1) if ref.cfg else lat[:, None]).flatten(0, 2)
        if hasattr(self.sched, "scale_model_input"):
            x = self.sched.scale_model_input(x, t)
        tt = ref.timestep_values(t)
        tt = tt.reshape(1).expand(x.shape[0]) if ref.call["timestep"] == "batch" else tt
        out = self.denoiser(x.to(self.denoiser.dtype), timestep=tt.to(x.device), **self.cond, return_dict=False)[0]
        return x, t, out

    def step(self, latents: torch.Tensor, i: int, on_step=None, advance: bool = True) -> torch.Tensor:
        """Sampling step `i` from `latents`; `on_step(i, model_input, t, output)` sees the denoiser call."""
        ref, S = self.ref, self.n_slots
        x, t, out = self._call(latents, i)
        if on_step is not None:
            on_step(i, x, t, out)
        if not advance:
            return latents
        N = latents.shape[0] // S
        eps = ref.used(out).float().view(S, 2 if ref.cfg else 1, N, *latents.shape[1:])
        if ref.cfg:
            u, c = eps[:, 0], eps[:, 1]
            eps = self.adapter.guide(u, c, ref.guidance)
            if ref.guidance_rescale > 0:
                from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

                eps = rescale_noise_cfg(eps.flatten(0, 1), c.flatten(0, 1), ref.guidance_rescale).view_as(eps)
        else:
            eps = eps[:, 0]
        eps = self.adapter.prediction(eps)
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
    """Run sampling steps `start..steps-1` from `latents` ([S·N, ...], slot-major) with the
    reference's conditioning (shared by every slot). `on_step(i, model_input, t, output)` sees each call."""
    return Sampler(pipe, ref, n_slots).run(latents, start, on_step)


def decode(pipe, latents: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Latents → images in [0, 1], [N, 3, H, W] float32, as the pipeline decodes them: unpacked by the
    family's adapter (Flux), SDXL's latent mean/std when its VAE has them, else `z / scaling + shift`
    (SD3, Flux, Lumina 2 shift), and the float32 upcast of an fp16 VAE marked `force_upcast`."""
    vae, adapter = pipe.vae, adapter_for(pipe)
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False) and hasattr(pipe, "upcast_vae")
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    shift = getattr(vae.config, "shift_factor", None)
    dtype = torch.float32 if upcast else vae.dtype
    if upcast:
        vae.to(torch.float32)
    try:
        out = []
        for i in range(0, latents.shape[0], batch):
            z = adapter.vae_latents(pipe, latents[i : i + batch]).to(dtype)
            if mean is not None and std is not None:
                shape = (1, -1, 1, 1)
                z = z * torch.tensor(std).view(shape).to(z) / vae.config.scaling_factor + torch.tensor(mean).view(shape).to(z)
            else:
                z = z / vae.config.scaling_factor
                z = z + shift if shift is not None else z
            out.append((vae.decode(z, return_dict=False)[0].float() / 2 + 0.5).clamp(0, 1))
    finally:
        if upcast:
            vae.to(torch.float16)
    return torch.cat(out)


def initial_noise(pipe, seeds: list[int], resolution: int) -> torch.Tensor:
    """Unscaled starting noise, one CPU generator per seed, in the layout the denoiser takes (the family's
    `latent_shape`: `[N, C, h, w]`, Flux's packed `[N, tokens, C·4]`) on the pipeline's device."""
    shape = adapter_for(pipe).latent_shape(pipe, resolution)
    z = [torch.randn(1, *shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
    return torch.cat(z).to(pipe.device)


def default_resolution(pipe) -> int:
    """The pipeline's native resolution in pixels, as its adapter reads it."""
    _, denoiser = find_denoiser(pipe)
    return adapter_for(pipe).default_resolution(denoiser, pipe.vae_scale_factor, pipe)


def _number(t: torch.Tensor) -> int | float:
    v = t.item()
    return int(v) if float(v).is_integer() else float(v)


@torch.no_grad()
def reference(pipe, prompts: list[str], *, seeds: list[int] | None = None, steps: int = DEFAULT_STEPS,
              guidance: float = DEFAULT_GUIDANCE, resolution: int | None = None,
              guidance_rescale: float = 0.0) -> Reference:  # fmt: skip
    """Sample `prompts` (one image each, seed `seeds[i]`, default `0..N-1`) in full precision and keep
    everything the profiler compares against. The conditioning, guidance style and schedule are what the
    pipeline's own `__call__` does (`capture_call`); the loop is `Sampler`'s."""
    seeds = list(seeds) if seeds is not None else list(range(len(prompts)))
    if len(seeds) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    resolution = resolution or default_resolution(pipe)
    noise = initial_noise(pipe, seeds, resolution)
    cond, call, shared = capture_call(pipe, list(prompts), noise=noise, steps=steps, guidance=guidance,
                                      resolution=resolution, guidance_rescale=guidance_rescale)  # fmt: skip
    sched = scheduler_for(pipe, call["schedule"], steps)
    lat = noise * getattr(sched, "init_noise_sigma", 1.0)
    ref = Reference(
        prompts=list(prompts), seeds=seeds, steps=steps, guidance=float(guidance), resolution=resolution,
        timesteps=[_number(t) for t in sched.timesteps], cond=cond, samples=torch.empty(0), outputs=torch.empty(0),
        latents=lat.float().cpu()[None], images=torch.empty(0), call=call, guidance_rescale=float(guidance_rescale),
        shared=shared,
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
