"""Evaluate plans against full precision and baselines on calibration-domain and held-out prompts.

    ev = evaluate("plan.json")                       # demo model, QDiffBench-style split
    ev = evaluate(plan, model=pipe, prompts={"calib": [...], "heldout": [...]})
    write_report(ev, "report/")                      # mpsearch.evaluation.report: Markdown, grid, Pareto, bit map

Every candidate (the plan(s), uniform W8, uniform W4, the uniform width nearest the plan's bytes, a
random allocation at equal bytes) is simulated with `mpsearch.export.simulate.fake_quantize` (the checkpoint's
exact weights, the profiler's activation quantizers) and sampled with the same seeds as the FP model.
Image metrics (every registered `image` metric: SSIM, adherence, user plug-ins) compare with the FP
images of the same prompts and seeds, plus pixel MSE; output metrics (SQNR, MSE) compare denoiser
outputs with the FP ones on the calibration reference. With `checkpoint=True` the first plan is also
exported, reloaded and sampled, with its bytes on disk and the peak memory of loading and generating.
A plan that keeps timesteps (`plan.kept_timesteps`), its baselines (which keep the same ones) and its
checkpoint sample at exactly those timesteps; FP samples at the full `steps`.
"""

from __future__ import annotations

import json
import random
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mpsearch.model import Inventory, find_denoiser, inventory
from mpsearch.options import VerbOptions
from mpsearch.planning.cost import FLOAT_BITS, get_format, layer_bytes, mean_bits, model_bytes
from mpsearch.planning.plan import LayerBits, Plan

SPLITS = ("calib", "heldout")


# --------------------------------------------------------------------------------------------------
# Memory


class PeakRSS:
    """Context manager: resident set size before, and its peak while inside (bytes).

    On Linux the kernel's own high-water mark is reset on entry (`/proc/self/clear_refs`) and read on
    exit (`VmHWM`), so the peak is exact whatever the machine's load; elsewhere a thread polls the RSS
    every `interval` seconds. The process's own RSS, so the numbers include whatever was loaded before;
    `delta` is the growth.
    """

    _STATUS, _CLEAR = Path("/proc/self/status"), Path("/proc/self/clear_refs")

    def __init__(self, interval: float = 0.005):
        self.interval, self.before, self.peak = interval, 0, 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rss(self) -> int:
        try:
            import psutil

            return psutil.Process().memory_info().rss
        except ImportError:  # pragma: no cover - psutil is present wherever matplotlib is
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _kernel_peak(self) -> int | None:
        """The kernel's peak RSS since the last reset (bytes), or None where /proc does not say."""
        try:
            kib = re.search(r"^VmHWM:\s+(\d+) kB", self._STATUS.read_text(), re.M)
        except OSError:
            return None
        return int(kib.group(1)) * 1024 if kib else None

    def _reset_kernel_peak(self) -> bool:
        try:
            self._CLEAR.write_text("5")  # 5 = reset the peak RSS to the current RSS (Linux >= 4.0)
        except OSError:
            return False
        return self._kernel_peak() is not None

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> PeakRSS:
        self.before = self.peak = self._rss()
        if not self._reset_kernel_peak():
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is None:
            self.peak = max(self.peak, self._rss(), self._kernel_peak() or 0)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self._rss())

    @property
    def delta(self) -> int:
        return self.peak - self.before

    def to_dict(self) -> dict[str, int]:
        return {"rss_before": self.before, "rss_peak": self.peak, "rss_delta": self.delta}


# --------------------------------------------------------------------------------------------------
# Baselines


def uniform_plan(inv: Inventory, w_bits: int, like: Plan) -> Plan:
    """Every layer at `w_bits`, activation bits copied from `like`, same format and kept timesteps."""
    plan = Plan({l.name: LayerBits(w_bits, like.layers[l.name].a_bits) for l in inv.layers}, model=inv.model,
                fingerprint=inv.fingerprint, format=like.format, step_overrides=list(like.step_overrides),
                kept_timesteps=like.kept_timesteps)
    plan.solver = {"name": f"uniform-w{w_bits}"}
    plan.predict(inv)
    return plan


def nearest_uniform_bits(inv: Inventory, plan: Plan) -> int:
    """The uniform weight width whose bytes are nearest the plan's (ties go to the smaller size)."""
    target = model_bytes(inv, plan.w_bits(), plan.format)
    fmt = get_format(plan.format)
    return min(fmt.widths, key=lambda b: (abs(model_bytes(inv, dict.fromkeys(inv.names, b), fmt) - target), b))


def random_plan(inv: Inventory, plan: Plan, seed: int = 0) -> Plan:
    """A random allocation at (at most, and nearly) the plan's bytes: from all layers at the smallest
    width, raise random layers one width at a time while the bytes stay within the plan's."""
    fmt = get_format(plan.format)
    widths = [*fmt.widths, FLOAT_BITS]  # only widths the format stores: a container width is no cheaper
    budget = model_bytes(inv, plan.w_bits(), fmt)
    rng = random.Random(seed)
    bits = dict.fromkeys(inv.names, widths[0])
    total = model_bytes(inv, bits, fmt)
    open_ = list(inv.layers)
    while open_:
        layer = open_[rng.randrange(len(open_))]
        i = widths.index(bits[layer.name])
        step = layer_bytes(layer, widths[i + 1], fmt) - layer_bytes(layer, widths[i], fmt) if i + 1 < len(widths) else None
        if step is None or total + step > budget:
            open_.remove(layer)
            continue
        bits[layer.name] = widths[i + 1]
        total += step
    out = Plan({n: LayerBits(b, plan.layers[n].a_bits) for n, b in bits.items()}, model=inv.model,
               fingerprint=inv.fingerprint, format=plan.format, step_overrides=list(plan.step_overrides),
               kept_timesteps=plan.kept_timesteps)
    out.solver = {"name": "random", "seed": seed}
    out.predict(inv)
    return out


def baselines(inv: Inventory, plan: Plan, *, uniform: tuple[int, ...] = (8, 4), seed: int = 0) -> dict[str, Plan]:
    """`{name: plan}`: uniform widths, the uniform width nearest the plan's bytes, random at equal bytes."""
    out = {f"uniform-w{b}": uniform_plan(inv, b, plan) for b in uniform}
    near = nearest_uniform_bits(inv, plan)
    out.setdefault(f"uniform-w{near}", uniform_plan(inv, near, plan))
    out["random"] = random_plan(inv, plan, seed)
    return out


# --------------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class Candidate:
    name: str
    kind: str  # fp | plan | uniform | random | checkpoint
    plan: Plan | None
    bytes: int
    mean_bits: float
    images: dict[str, list] = field(default_factory=dict, repr=False)  # split -> PIL images
    metrics: dict[str, dict[str, float | None]] = field(default_factory=dict)  # split -> name -> value
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Evaluation:
    inventory: Inventory
    plan: Plan
    prompts: dict[str, list[str]]
    settings: dict[str, Any]
    candidates: list[Candidate]
    export: dict[str, Any] | None = None
    memory: dict[str, dict[str, int]] = field(default_factory=dict)
    predicted: dict[str, Any] = field(default_factory=dict)  # {"profile", "loss": {candidate: loss}, "error"}

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per (candidate, split): name, kind, bytes, mean bits, then every metric."""
        out = []
        for c in self.candidates:
            for split, values in c.metrics.items():
                out.append({"name": c.name, "kind": c.kind, "split": split, "bytes": c.bytes,
                            "mean_w_bits": round(c.mean_bits, 3), **values})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "mpsearch.evaluation.evaluator/1", "model": self.inventory.model,
            "fingerprint": self.inventory.fingerprint, "plan": self.plan.to_dict(), "prompts": self.prompts,
            "settings": self.settings, "results": self.rows(), "export": self.export, "memory": self.memory,
            "predicted": self.predicted,
        }


def default_prompts(pipe: Any, n: int, seed: int = 1) -> dict[str, list[str]]:
    """QDiffBench's split for the demo model: captions of training combinations (the calibration domain;
    another seed than the calibration set) and of the held-out combinations the model never saw."""
    try:
        from mpsearch.zoo.scenes import sample_prompts

        return {"calib": sample_prompts("train", n, seed), "heldout": sample_prompts("heldout", n, seed)}
    except (ImportError, AttributeError):
        from mpsearch.profiling.calibration import FALLBACK_PROMPTS

        return {"calib": list(FALLBACK_PROMPTS[:n]), "heldout": []}


def image_metrics(reference: list, candidate: list, prompts: list[str], names: list[str] | None = None) -> dict:
    """Every registered image metric (value, e.g. SSIM itself) plus pixel MSE; None where a metric fails
    (adherence on captions the demo detector cannot parse)."""
    from mpsearch.profiling.metrics import METRICS, images_to_tensor

    ref, cand = images_to_tensor(reference), images_to_tensor(candidate)
    out: dict[str, float | None] = {}
    for name, metric in METRICS.items():
        if metric.stage != "image" or (names is not None and name not in names):
            continue
        try:
            out[name] = metric(ref, cand, prompts=prompts)[0]
        except Exception:  # a metric that does not apply to these prompts: reported as missing
            out[name] = None
    out["pixel_mse"] = float((ref - cand).pow(2).mean())
    return out


def output_metrics(pipe: Any, calib, names: list[str] | None = None) -> dict[str, float]:
    """Every registered output metric of the denoiser on the calibration reference inputs vs FP outputs."""
    from mpsearch.profiling.metrics import METRICS

    _, den = find_denoiser(pipe)
    with torch.no_grad():
        got = calib.forward(den, torch.arange(calib.n_rows))
    ref = calib.outputs.flatten(0, 1)
    return {n: m(ref, got)[0] for n, m in METRICS.items()
            if m.stage == "output" and (names is None or n in names)}


def _generate(pipe, prompts, seed, steps, guidance, plan: Plan | None = None):
    """Images of `prompts`; a plan that keeps timesteps samples at exactly those, others at `steps`."""
    from mpsearch.pipelines.generate import generate

    if not prompts:
        return []
    if plan is not None and plan.kept_timesteps:
        return generate(pipe, prompts, seed=seed, timesteps=plan.kept_timesteps, guidance=guidance)
    return generate(pipe, prompts, seed=seed, steps=steps, guidance=guidance)


@dataclass
class EvaluateOptions(VerbOptions):
    """How `evaluate` works; every field is also a keyword of `evaluate`.

    `model`: the pipeline the plans are for (a pipeline, a hub id / folder / file, or None for the demo).
    `quantized`: a folder written by `export`, evaluated as is (its plan.json is the first plan).
    `prompts`: `{"calib": [...], "heldout": [...]}` (default: the demo's QDiffBench-style split,
    `n_prompts` per split). `seed`: of the first image (image i uses seed + i). `steps` / `guidance`:
    sampler settings (default the demo's). `with_baselines`: also uniform widths `uniform` (bits), the
    uniform width nearest the plan's bytes and a random allocation at equal bytes. `checkpoint`: export the
    first plan (to that folder, or a temporary one for `True`), reload it and generate (bytes on disk, peak
    RSS while loading and while generating, pixel difference to the simulation). `metrics`: the registered
    metrics to report (default all). `log`: receives a line per stage (the candidate, its bytes).
    `progress`: a rich bar on stderr over every image sampled (prompts × candidates, the FP calibration
    reference included) with ETA. `profile`: the profile the plans were solved from (default: the first
    plan's recorded profile folder, when it exists here): every plan's predicted loss (the ILP's additive
    objective, one scale for all) is reported beside its measured image loss.
    """

    model: Any = None
    quantized: str | Path | None = None
    prompts: dict[str, list[str]] | None = None
    n_prompts: int = 8
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    with_baselines: bool = True
    uniform: tuple[int, ...] = (8, 4)
    checkpoint: bool | str | Path = False
    metrics: list[str] | None = None
    log: Callable[[str], None] | None = None
    progress: bool = False
    profile: str | Path | None = None


def evaluate(plans: Plan | str | Path | list, options: EvaluateOptions | None = None, **kwargs: Any) -> Evaluation:
    """Generate with FP, each plan and the baselines; measure every registered metric per split.

    `plans`: one plan or several (all on the Pareto plot; the first gets the baselines). `options` /
    keywords: see `EvaluateOptions` (keywords replace its fields; an unknown keyword is a TypeError).
    """
    from mpsearch.export.simulate import as_pipeline
    from mpsearch.profiling.calibration import demo_settings, reference
    from mpsearch.progress import count_bar
    from mpsearch.zoo import bundled_name

    opts = EvaluateOptions.of(options, **kwargs)
    log = opts.log or (lambda msg: None)
    plans = _plans(plans, opts.quantized)
    pipe = as_pipeline(opts.model, plans[0])
    inv = inventory(pipe)
    main = plans[0]
    d_steps, d_guidance = demo_settings(bundled_name(pipe) or "demo")
    steps, guidance = opts.steps or d_steps, opts.guidance if opts.guidance is not None else d_guidance
    prompts = opts.prompts or default_prompts(pipe, opts.n_prompts)
    prompts = {k: list(v) for k, v in prompts.items() if v}
    calib_prompts = prompts.get("calib") or next(iter(prompts.values()))
    todo = _todo(inv, plans, opts)
    folder = Path(opts.quantized) if opts.quantized is not None else None
    sampled = len(todo) + (folder is not None or bool(opts.checkpoint))  # candidates that generate images
    n_images = len(calib_prompts) + sampled * sum(len(v) for v in prompts.values())

    with count_bar(n_images, opts.progress, "evaluating") as advance:
        sample = _Sampler(advance, opts.seed, steps, guidance)
        log("calibration reference (FP)")
        advance(0, "FP calibration reference")
        calib = reference(pipe, calib_prompts, steps=steps, guidance=guidance)
        advance(len(calib_prompts))
        cands, fp_images = _simulate(pipe, inv, todo, prompts, calib, sample, get_format(main.format), opts.metrics,
                                     log)  # fmt: skip
        ev = Evaluation(inv, main, prompts, {"steps": steps, "kept_timesteps": main.kept_timesteps,
                                             "guidance": guidance, "seed": opts.seed, "format": main.format,
                                             "n_prompts": {k: len(v) for k, v in prompts.items()}}, cands)  # fmt: skip
        _checkpoint(ev, pipe, folder, opts.checkpoint, calib, sample, opts.metrics, log)

    for c in ev.candidates:
        for split, ps in prompts.items():
            c.metrics[split] = image_metrics(fp_images[split], c.images[split], ps, opts.metrics)
        first = "calib" if "calib" in c.metrics else next(iter(c.metrics))
        c.metrics[first].update(c.extra.get("output", {}))  # measured on the calibration inputs only
    ev.predicted = predicted_losses(ev.candidates, opts.profile if opts.profile is not None else _recorded_profile(main))
    return ev


def _recorded_profile(plan: Plan) -> Path | None:
    """The profile folder the plan records (`solve` writes it), when it exists here."""
    name = (plan.solver or {}).get("profile")
    return Path(name) if name and Path(name, "meta.json").is_file() else None


def predicted_losses(candidates: list[Candidate], profile: str | Path | None) -> dict[str, Any]:
    """{"profile", "loss": {candidate: the ILP's additive predicted loss under `profile`}, "missing":
    {candidate: why not}} for every candidate with a plan (a baseline with widths the profile never measured
    has no prediction, and says so); {"error": why} when there is no profile or it cannot be read."""
    from mpsearch.planning.inputs import load_profile
    from mpsearch.planning.planner import predicted_loss

    if profile is None:
        return {"error": "no profile: pass --profile (the plan records none that exists here)"}
    try:
        df, meta, inv = load_profile(profile)
        loaded = (df, inv, meta)
    except (ValueError, OSError) as e:
        return {"profile": str(profile), "error": str(e).splitlines()[0]}
    out: dict[str, Any] = {"profile": str(profile), "loss": {}, "missing": {}}
    for c in candidates:
        if c.plan is not None:
            try:
                out["loss"][c.name] = predicted_loss(loaded, c.plan)["loss"]
            except ValueError as e:
                out["missing"][c.name] = str(e).splitlines()[0]
    return out


def _plans(plans: Plan | str | Path | list, quantized: str | Path | None) -> list[Plan]:
    """The plans to evaluate as `Plan`s: a quantized folder's own plan first, then `plans`."""
    from mpsearch.export.simulate import ExportError, plan_of

    plans = [plans] if not isinstance(plans, (list, tuple)) else list(plans)
    if quantized is not None:
        qplan = Path(quantized) / "plan.json"
        if not qplan.exists():
            raise ExportError(f"{quantized} has no plan.json")
        plans = [Plan.load(qplan), *plans]
    plans = [plan_of(p) for p in plans]
    if not plans:
        raise ValueError("nothing to evaluate: pass a plan or a quantized folder")
    return plans


def _todo(inv: Inventory, plans: list[Plan], opts: EvaluateOptions) -> list[tuple[str, str, Plan | None]]:
    """(name, kind, plan) of every simulated candidate: FP, the plans (names made unique), the baselines."""
    todo: list[tuple[str, str, Plan | None]] = [("fp", "fp", None)]
    for i, p in enumerate(plans):
        name = "plan" if i == 0 else str(p.solver.get("name") or f"plan-{i}")
        todo.append((name if name not in {t[0] for t in todo} else f"{name}-{i}", "plan", p))
    if opts.with_baselines:
        for name, p in baselines(inv, plans[0], uniform=opts.uniform, seed=opts.seed).items():
            todo.append((name, "random" if name == "random" else "uniform", p))
    return todo


@dataclass
class _Sampler:
    """Samples a candidate's images at the evaluation's seed, steps and guidance, moving the progress bar."""

    advance: Callable[..., None]
    seed: int
    steps: int
    guidance: float

    def __call__(self, pipe: Any, prompts: list[str], name: str, split: str, plan: Plan | None = None) -> list:
        self.advance(0, f"{name} ({split})")
        out = _generate(pipe, prompts, self.seed, self.steps, self.guidance, plan)
        self.advance(len(prompts))
        return out


def _simulate(pipe: Any, inv: Inventory, todo: list, prompts: dict[str, list[str]], calib, sample: _Sampler,
              fmt, metrics: list[str] | None, log: Callable[[str], None]) -> tuple[list[Candidate], dict]:  # fmt: skip
    """The simulated candidates (FP, and each plan under `fake_quantize`) with their images and output
    metrics, and the FP images per split."""
    from mpsearch.export.simulate import fake_quantize

    fp_images: dict[str, list] = {}
    cands: list[Candidate] = []
    for name, kind, plan in todo:
        wb = plan.w_bits() if plan else dict.fromkeys(inv.names, FLOAT_BITS)
        c = Candidate(name, kind, plan, model_bytes(inv, wb, fmt if plan is None else plan.format,
                                                    plan.pruned_fixed_params if plan else 0), mean_bits(inv, wb))
        log(f"{name}: {c.bytes:,} bytes, {c.mean_bits:.2f} mean bits")
        t0 = time.perf_counter()
        if plan is None:
            for split, ps in prompts.items():
                fp_images[split] = c.images[split] = sample(pipe, ps, name, split)
            c.extra["output"] = output_metrics(pipe, calib, metrics)
        else:
            with fake_quantize(pipe, plan, inv=inv, calib=calib):
                for split, ps in prompts.items():
                    c.images[split] = sample(pipe, ps, name, split, plan)
                c.extra["output"] = output_metrics(pipe, calib, metrics)
        c.extra["seconds"] = round(time.perf_counter() - t0, 2)
        cands.append(c)
    return cands, fp_images


def _checkpoint(ev: Evaluation, pipe: Any, folder: Path | None, checkpoint: bool | str | Path, calib,
                sample: _Sampler, metrics: list[str] | None, log: Callable[[str], None]) -> None:  # fmt: skip
    """Export the main plan (unless `folder` is a given checkpoint), reload it and sample it: its bytes on
    disk, peak memory and pixel difference to the simulation go into `ev`, the checkpoint into its
    candidates."""
    from mpsearch.export.load import load_quantized
    from mpsearch.export.write import export

    main, cands, prompts = ev.plan, ev.candidates, ev.prompts
    if folder is None and checkpoint:
        folder = Path(tempfile.mkdtemp(prefix="mpsearch-export-") if checkpoint is True else checkpoint)
        log(f"export {main.format} checkpoint to {folder}")
        sample.advance(0, "export")
        ev.export = export(main, folder, model=pipe, overwrite=True).to_dict()  # its own earlier checkpoint
    elif folder is not None and (folder / "export.json").exists():
        ev.export = json.loads((folder / "export.json").read_text())
    if folder is None:
        return
    with PeakRSS() as load_mem:
        qpipe = load_quantized(folder)
    c = Candidate("checkpoint", "checkpoint", main, cands[1].bytes, cands[1].mean_bits)
    with PeakRSS() as gen_mem:
        for split, ps in prompts.items():
            c.images[split] = sample(qpipe, ps, "checkpoint", split, main)
    c.extra["output"] = output_metrics(qpipe, calib, metrics)
    sim = cands[1].images
    c.extra["max_pixel_diff_vs_simulation"] = max(
        (int(np.abs(np.asarray(a, dtype=np.int16) - np.asarray(b, dtype=np.int16)).max())
         for split in prompts for a, b in zip(c.images[split], sim[split], strict=True)), default=0)
    ev.memory = {"load": load_mem.to_dict(), "generate": gen_mem.to_dict()}
    cands.append(c)
    del qpipe
