"""Sensitivity profiling: the degradation of quantizing one layer's weight or input activation at one
bit-width, per metric and step group (MixDQ's one-layer-at-a-time analysis), stored as a `Profile`.

Quality layers are measured on quality metrics and content layers on content metrics (MixDQ's
metric-decoupled analysis); `all_metrics=True` measures every pair. Modes:

- `exact`: the naive loop, one evaluation per (layer, tensor, bits, step group).
- `batched` (the default): slot batching, several single-layer perturbations in one batched forward (slot
  `s` of the batch has layer `s` quantized); the same numbers as `exact` (tested bitwise on CPU).
- `fisher`: one forward + backward over the calibration inputs scores every layer × tensor × bits
  (ModelOpt auto_quantize's gradient proxy): with `r ~ N(0, I)` on the denoiser output, `(rᵀ J ΔY)²`
  estimates the output noise power `‖J ΔY‖²` of the perturbation `ΔY` at the layer's output, so metric
  `fisher` is on the scale of `sqnr`'s degradation (relative noise power; value = estimated SQNR dB).

Image triage (`image_widths`, `mpsearch.profiling.triage`): by default a layer's image metrics are not
measured at its highest candidate width but estimated from the next width down, in rows marked
`"estimated": true` (schema `mpsearch.profile/2`); `image_widths="all"` measures every width.

A measurement of an output metric is one denoiser forward over the calibration inputs of the step group;
of an image metric, sampling from the first step of the group with the layer quantized during the
group's steps only (from the cached FP latents where the scheduler allows), then decoding.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from mpsearch import zoo
from mpsearch.model import Inventory, Layer, find_denoiser, inventory, load_pipeline, weights_fingerprint
from mpsearch.options import VerbOptions
from mpsearch.profiling import calibration as cal
from mpsearch.profiling import triage
from mpsearch.profiling.engine import Profiler, plan_units
from mpsearch.profiling.lock import FolderLock
from mpsearch.profiling.metrics import Metric, get_metric
from mpsearch.profiling.quantizers import ActQuantConfig, WeightQuantConfig
from mpsearch.profiling.session import Candidates, QuantSession
from mpsearch.profiling.store import KEY, SCHEMA, SCHEMA_ESTIMATES, Profile, Store, read_meta

MODES = ("exact", "batched", "fisher")
DEFAULT_METRICS = ("sqnr", "mse", "ssim", "adherence")
TENSORS = ("weight", "act")
GROUP_RULES = ("rule", "measured")


def parse_shard(shard: str | tuple[int, int] | None) -> tuple[int, int]:
    """'i/n' → (i, n) with 0 ≤ i < n."""
    if shard is None:
        return 0, 1
    if isinstance(shard, str):
        try:
            i, n = (int(s) for s in shard.split("/"))
        except ValueError:
            raise ValueError(f"--shard {shard!r}: expected i/n, e.g. 0/4") from None
    else:
        i, n = shard
    if not 0 <= i < n:
        raise ValueError(f"shard {i}/{n}: need 0 ≤ i < n")
    return i, n


def _is_demo(model) -> bool:
    return model is None or str(model) in zoo.BUNDLED


def _reference(pipe, out: Path | None, fingerprint: str, prompts, seeds, steps, guidance, resolution,
               guidance_rescale, cache: bool, log) -> cal.Reference:  # fmt: skip
    settings = [fingerprint, prompts, seeds, steps, guidance, resolution, guidance_rescale, cal.REFERENCE_FORMAT]
    key = hashlib.sha256(json.dumps(settings).encode())
    path = out / "cache" / f"reference-{key.hexdigest()[:16]}.safetensors" if (out and cache) else None
    if path is not None:
        for tmp in path.parent.glob("reference-*.tmp"):  # left by a run killed while saving (we hold the lock)
            tmp.unlink()
    if path is not None and path.exists():
        try:
            return cal.Reference.load(path)
        except ValueError as e:  # torn or truncated: measure it again rather than fail every resume
            log(f"warning: {e}; computing it again")
    t0 = time.perf_counter()
    ref = cal.reference(pipe, prompts, seeds=seeds, steps=steps, guidance=guidance, resolution=resolution,
                        guidance_rescale=guidance_rescale)  # fmt: skip
    log(f"FP reference: {len(prompts)} prompts × {steps} steps in {time.perf_counter() - t0:.1f} s")
    if path is not None:
        ref.save(path)
    return ref


@dataclass
class ProfileOptions(VerbOptions):
    """How `profile` measures; every field is also a keyword of `profile` (and an option of `mpsearch profile`).

    Where: `out`, the profile folder (resumed when it holds one; None keeps the results in memory only).
    What: `bits` / `act_bits`, candidate weight / activation bit-widths (default {2,3,4,5,6,8} / {4,6,8,16};
    16 is never measured); `tensors`, 'weight' and/or 'act'; `metrics`, registered metric names (default
    sqnr, mse, ssim, plus adherence on the demo), each layer measured on those of its group's kind unless
    `all_metrics`; `layers`, a regex (or names) selecting layers; `prune`, also score every prunable unit
    (`mpsearch.profiling.pruning`: LAPTOP-Diff's output loss with that unit removed; rows with
    `tensor="unit"`), and with `tensors=()` the units only.
    On which inputs: `prompts`, a list or a file with one per line (default: the demo's own scene sampler,
    `n_prompts` of them); seeds are `seed + i`; `steps` / `guidance`, sampler settings (demo:
    `mpsearch.zoo.DEMO_STEPS/DEMO_GUIDANCE`, else 8 / 3.0); `guidance_rescale`, SD/SDXL's CFG rescale (0 =
    off); `resolution`, image side in pixels (default the model's); `step_groups`, 'auto' (1 group for ≤ 4
    steps, else TMPQ-DM's quadratic grouping into 4), a number of groups, or explicit lists of step indices.
    Content vs quality: `groups`, 'rule' (the family's rule: MixDQ's names on UNets, the measured text stream
    on joint attention) or 'measured' (`mpsearch.profiling.grouping`: one output and one image measurement
    per layer at W4 decide, in a pass of its own stored under `out/grouping`); `group_overrides`,
    `{regex: "content" | "quality"}` (or pairs) tried first, before either.
    With which quantizers: `bos_aware` (MixDQ's BOS-aware cross-attention K/V), `split_shortcut`
    (Q-Diffusion's split-shortcut activation ranges), `progressive` (PCR's per-step activation
    calibration), `weight_cfg` / `act_cfg` (quantizer settings; default `WeightQuantConfig()` /
    `ActQuantConfig()`).
    How: `image_widths`, which widths the image metrics measure: 'triage' (every width but a tensor's
    highest, which is estimated from the next one down and marked so; `mpsearch.profiling.triage`) or 'all';
    None: 'triage' for a new profile, and when resuming, the setting the folder was measured with (an
    explicit other one is refused). `mode`, exact | batched (default; the same numbers as exact) | fisher; `slots`, perturbations per
    batched forward; `max_batch`, rows per denoiser forward; `max_memory`, a ceiling on the profiler's peak
    memory on its device ('22GiB', '24GB' or bytes): rows, slots and decodes are chunked to fit it by a
    measured model of the peak (`mpsearch.profiling.memory`), refused in one line when nothing fits; `shard`, 'i/n' (every n-th evaluation from the i-th); `device`; `cache`, keep the
    FP reference in `out/cache`; `backend`, where measurements run, 'local' or 'ray' (`address`: the Ray
    cluster, `workers`: actors; see `mpsearch.profiling.backends`), every backend storing the same rows.
    Reporting: `progress`, a rich bar on stderr; `log`, where one-line notes go.
    """

    out: str | Path | None = "profiles/demo"
    bits: Sequence[int] | None = None
    act_bits: Sequence[int] | None = None
    tensors: Sequence[str] = TENSORS
    metrics: Sequence[str] | None = None
    prompts: Sequence[str] | str | Path | None = None
    n_prompts: int = 8
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    guidance_rescale: float = 0.0
    resolution: int | None = None
    step_groups: int | str | list[list[int]] = "auto"
    groups: str = "rule"
    group_overrides: Sequence[tuple[str, str]] | dict[str, str] | None = None
    image_widths: str | None = None
    mode: str = "batched"
    slots: int = 8
    shard: str | tuple[int, int] | None = None
    all_metrics: bool = False
    prune: bool = False
    layers: str | Sequence[str] | None = None
    bos_aware: bool = True
    split_shortcut: bool = True
    progressive: bool = False
    weight_cfg: WeightQuantConfig | None = None
    act_cfg: ActQuantConfig | None = None
    device: str = "cpu"
    max_batch: int = 1024
    max_memory: str | int | None = None
    cache: bool = True
    progress: bool = False
    log: Callable[[str], None] | None = None
    backend: str = "local"
    address: str | None = None
    workers: int | None = None


def profile(model: Any = None, options: ProfileOptions | None = None, **kwargs: Any) -> Profile:
    """Measure a model's per-layer sensitivity and store it at `options.out` (resuming what is there).

    >>> prof = profile(pipe, out="profiles/mine", prompts="prompts.txt", steps=20)        # doctest: +SKIP
    >>> prof = profile(pipe, ProfileOptions(out=None, mode="batched"), layers=r"attn2")    # doctest: +SKIP

    `model`: a pipeline, a hub id / folder / file, or None for the demo. `options` / keywords: see
    `ProfileOptions` (keywords replace its fields; an unknown keyword is a TypeError naming it).

    Returns the `Profile` of everything stored at `out` (this shard's part when sharded).
    `mpsearch.profiling.lock.FolderLocked` (a ValueError naming the holder) when another process writes `out`.
    """
    return _profile(model, ProfileOptions.of(options, **kwargs))


def measure_groups(model: Any = None, options: ProfileOptions | None = None, **kwargs: Any) -> dict[str, str]:
    """`{layer: "content" | "quality"}` measured (`mpsearch.profiling.grouping`): the pass `profile` runs
    with `groups="measured"`, alone, stored (and resumed) at `out/grouping` when `out` is set.

    >>> groups = measure_groups(pipe, out="profiles/mine", prompts="prompts.txt")          # doctest: +SKIP
    """
    return _profile(model, ProfileOptions.of(options, **{**kwargs, "groups": "measured"}), groups_only=True)


def _profile(model: Any, opts: ProfileOptions, *, groups_only: bool = False) -> Any:
    log = opts.log or (lambda msg: None)
    run_units = _checked(opts)  # before any expensive work
    out = Path(opts.out) if opts.out is not None else None
    # one writer per folder, from before the model loads to the last row (see mpsearch.profiling.lock)
    with FolderLock(out, "profile") if out is not None else contextlib.nullcontext():
        run = _settle(model, opts, out, log)
        session = QuantSession(run.pipe, run.candidates, weight_cfg=run.weight_cfg, act_cfg=run.act_cfg,
                               bos_aware=opts.bos_aware, split_shortcut=opts.split_shortcut)  # fmt: skip
        try:
            if opts.groups == "measured":
                run = _measured_groups(run, session, out, run_units, log)
            if groups_only:
                return {l.name: l.group for l in run.inv.layers}
            meta = _meta(run)
            units = _prunable_units(run, meta) if opts.prune else None
            store = Store(out, meta) if out is not None else _MemoryStore(meta)
            if out is not None:  # so `solve` needs no model: profile on a GPU box, solve on a laptop
                run.inv.save(out / "inventory.json")
            with store:
                _measure(run, session, store, units, run_units, log)
                return store.profile()
        finally:
            session.remove()


def _checked(opts: ProfileOptions) -> Callable[[Any], None]:
    """The backend's runner, once the options that need no model are known to be valid."""
    if opts.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {opts.mode!r}")
    if opts.groups not in GROUP_RULES:
        raise ValueError(f"groups must be one of {GROUP_RULES}, got {opts.groups!r}")
    from mpsearch.profiling.backends import get_backend

    run_units = get_backend(opts.backend, address=opts.address, workers=opts.workers)
    if not _tensors(opts) and not opts.prune:
        raise ValueError("tensors: choose 'weight' and/or 'act'")
    if opts.prune and opts.mode == "fisher":
        raise ValueError("prune: unit scores are measured, not estimated; use mode exact or batched")
    parse_shard(opts.shard)
    if opts.image_widths is not None:
        triage.RULES.lookup(opts.image_widths)
    if opts.max_memory is not None:
        from mpsearch.profiling.memory import parse_bytes

        parse_bytes(opts.max_memory)
    return run_units


def _tensors(opts: ProfileOptions) -> list[str]:
    return [t for t in TENSORS if t in opts.tensors]


@dataclass
class _Run:
    """A profile run as settled before measuring: the model, the inputs, the reference and what to measure."""

    opts: ProfileOptions
    model: Any  # as `profile` received it: the Ray backend rebuilds the pipeline from it
    demo: bool
    pipe: Any
    component: str
    inv: Inventory
    fingerprint: str
    prompts: list[str]
    metrics: list[Metric]
    candidates: Candidates
    layers: list[Layer]
    ref: cal.Reference
    groups: list[list[int]]
    weight_cfg: WeightQuantConfig
    act_cfg: ActQuantConfig
    image_widths: str = "all"

    @property
    def tensors(self) -> list[str]:
        return _tensors(self.opts)

    @property
    def shard(self) -> tuple[int, int]:
        return parse_shard(self.opts.shard)


def _settle(model: Any, opts: ProfileOptions, out: Path | None, log: Callable[[str], None]) -> _Run:
    """Load the model, settle the sampling settings, metrics, candidates and layers, and compute (or load
    from `out/cache`) the FP reference."""
    demo = _is_demo(model)
    pipe = model if hasattr(model, "components") else load_pipeline(model, device=opts.device)
    pipe.set_progress_bar_config(disable=True)
    component, denoiser = find_denoiser(pipe)
    inv = inventory(pipe, resolution=opts.resolution, groups=opts.group_overrides)
    fingerprint = weights_fingerprint(denoiser)
    prompts, steps, guidance = _sampling(opts, zoo.bundled_name(model) if demo else None)
    seeds = [opts.seed + i for i in range(len(prompts))]
    names = list(opts.metrics) if opts.metrics else [m for m in DEFAULT_METRICS if demo or m != "adherence"]
    metrics = [] if opts.mode == "fisher" else [get_metric(m) for m in names]
    candidates = Candidates(tuple(opts.bits) if opts.bits else Candidates.weight,
                            tuple(opts.act_bits) if opts.act_bits else Candidates.act)  # fmt: skip
    layers = _chosen_layers(inv, opts.layers)
    ref = _reference(pipe, out, fingerprint, prompts, seeds, steps, guidance, opts.resolution,
                     float(opts.guidance_rescale), opts.cache, log)  # fmt: skip
    groups = opts.step_groups
    if not isinstance(groups, list):
        groups = cal.step_groups(ref.timesteps, groups)
    return _Run(opts, model, demo, pipe, component, inv, fingerprint, prompts, metrics, candidates, layers, ref,
                groups, opts.weight_cfg or WeightQuantConfig(), opts.act_cfg or ActQuantConfig(),
                _image_widths(opts, out, metrics))  # fmt: skip


def _image_widths(opts: ProfileOptions, out: Path | None, metrics: list[Metric]) -> str:
    """The image triage rule of this run: 'all' when nothing is measured on an image metric; else the
    option's; else (None) the folder's own when resuming, 'triage' for a new profile."""
    if not any(m.stage == "image" for m in metrics):
        return "all"
    if opts.image_widths is not None:
        return opts.image_widths
    if out is not None and (out / "meta.json").is_file():
        return triage.rule_of(read_meta(out))
    return "triage"


def _sampling(opts: ProfileOptions, demo: str | None) -> tuple[list[str], int, float]:
    """(prompts, steps, guidance): the options', else bundled model `demo`'s own, else the defaults."""
    steps, guidance = opts.steps, opts.guidance
    if demo:
        d_steps, d_guid = cal.demo_settings(demo)
        steps, guidance = steps or d_steps, d_guid if guidance is None else guidance
    steps = steps or cal.DEFAULT_STEPS
    guidance = cal.DEFAULT_GUIDANCE if guidance is None else float(guidance)
    prompts = opts.prompts
    if prompts is None:
        prompts = cal.demo_prompts(opts.n_prompts, opts.seed) if demo else None
        if prompts is None:
            raise ValueError("pass prompts (a list or a file, one per line) for a model other than the demo")
    elif isinstance(prompts, (str, Path)):
        prompts = cal.read_prompts(prompts)
    return list(prompts), steps, guidance


def _chosen_layers(inv: Inventory, layers: str | Sequence[str] | None) -> list[Layer]:
    """The layers `layers` selects (a regex searched in each name, or names); all of them for None."""
    if layers is None:
        return list(inv.layers)
    import re

    chosen = [l for l in inv.layers if (re.search(layers, l.name) if isinstance(layers, str) else l.name in layers)]
    if not chosen:
        raise ValueError(f"no layer matches {layers!r}")
    return chosen


def _measured_groups(run: _Run, session: QuantSession, out: Path | None, run_units: Callable[[Any], None],
                     log: Callable[[str], None]) -> _Run:  # fmt: skip
    """`groups="measured"`: every layer measured alone at W4 on sqnr and ssim over all steps (a profile of its
    own at `out/grouping`, resumed like this one), then each layer's group from `grouping.assign_groups`.
    The user's overrides still come first."""
    from mpsearch.profiling.backends import Job
    from mpsearch.profiling.grouping import MEASURED_BITS, MEASURED_METRICS, MEASURED_NOTE, assign_groups

    opts = run.opts
    sub_opts = replace(opts, tensors=("weight",), all_metrics=True, prune=False, shard=None, layers=None,
                       mode="exact" if opts.mode == "exact" else "batched")  # fmt: skip
    every_step = [list(range(run.ref.steps))]
    sub = replace(run, opts=sub_opts, metrics=[get_metric(m) for m in MEASURED_METRICS], layers=list(run.inv.layers),
                  candidates=Candidates((MEASURED_BITS,), run.candidates.act), groups=every_step,
                  image_widths="all")  # fmt: skip
    meta = {**_meta(sub), "groups": {}, "group_note": "every layer on both kinds' metrics: the groups are the outcome"}
    store = Store(out / "grouping", meta) if out is not None else _MemoryStore(meta)
    if out is not None:
        run.inv.save(out / "grouping" / "inventory.json")
    session.timesteps = run.ref.model_timesteps
    prof = Profiler(run.pipe, run.ref, session, every_step, max_batch=opts.max_batch)
    if opts.max_memory is not None:
        _fit_memory(sub, prof, log)
    todo = plan_units(sub.layers, every_step, sub.candidates, ["weight"], sub.metrics, True,
                      stores=_format_stores(run.weight_cfg))  # a format without W4 for a layer: its rule stays
    measured_layers = {u.layer for u in todo}
    with store:
        missing = [u for u in todo if any((u.layer, u.tensor, u.bits, m, u.group) not in store.done for m in u.metrics)]
        log(f"measuring content vs quality: {len(todo)} evaluations at W{MEASURED_BITS}, "
            f"{len(todo) - len(missing)} already stored")  # fmt: skip
        run_units(Job(prof, store, missing, 1 if opts.mode == "exact" else opts.slots, run.model, opts.progress, log))
        measured = assign_groups(store.profile(), {l.name: l.group for l in run.inv.layers if l.name in measured_layers})
    user = _overridden(run.inv.names, opts.group_overrides)
    groups = {n: g for n, g in measured.items() if n not in user}
    inv = run.inv.with_groups(groups, MEASURED_NOTE + ("; user overrides first" if user else ""))
    counts = {g: sum(l.group == g for l in inv.layers) for g in ("content", "quality")}
    log(f"measured groups: {counts['content']} content, {counts['quality']} quality layers")
    return replace(run, inv=inv, layers=_chosen_layers(inv, opts.layers))


def _overridden(names: list[str], overrides: Sequence[tuple[str, str]] | dict[str, str] | None) -> set[str]:
    """The layers a user's `{regex: group}` override decides (they keep the inventory's group)."""
    import re

    pairs = list(overrides.items()) if isinstance(overrides, dict) else list(overrides or [])
    return {n for n in names if any(re.search(p, n) for p, _ in pairs)}


def _meta(run: _Run) -> dict[str, Any]:
    """The profile's header (meta.json): model, candidates, metrics, step groups, sampling and quantizer
    settings, and every metric's value on the FP reference itself (`baseline`)."""
    from mpsearch import __version__

    opts, inv, ref, fisher = run.opts, run.inv, run.ref, run.opts.mode == "fisher"
    i_shard, n_shard = run.shard
    meta = {
        "schema": SCHEMA if run.image_widths == "all" else SCHEMA_ESTIMATES,
        "tool_version": __version__,
        "model": inv.model if not run.demo else zoo.bundled_name(run.model),
        "component": run.component,
        "fingerprint": run.fingerprint,
        "inventory_fingerprint": inv.fingerprint,
        "layers": inv.names,
        "groups": {l.name: l.group for l in inv.layers},
        "group_note": inv.group_note,
        "candidates": run.candidates.to_dict(),
        "tensors": run.tensors,
        "metrics": ({"fisher": {"kind": "quality", "stage": "gradient", "version": "1"}} if fisher
                    else {m.name: m.describe() for m in run.metrics}),
        "mode": "fisher" if fisher else "exact",  # batched measures the same numbers as exact
        "all_metrics": opts.all_metrics or fisher,
        "image_widths": triage.describe(run.image_widths),
        "step_groups": run.groups,
        "sampling": {**ref.settings(), "prompts": run.prompts, "scheduler": type(run.pipe.scheduler).__name__},
        "quant": {"bos_aware": opts.bos_aware, "split_shortcut": opts.split_shortcut, "split_weights": False,
                  "progressive": opts.progressive, "weight": run.weight_cfg.to_dict(), "act": asdict(run.act_cfg)},
        "shard": f"{i_shard}/{n_shard}" if n_shard > 1 else None,
        "baseline": {},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    for m in run.metrics:
        base = ref.images if m.stage == "image" else ref.outputs
        value, deg = m(base, base, prompts=run.prompts)
        meta["baseline"][m.name] = {"value": value if math.isfinite(value) else None, "degradation": deg}
    return meta


def _prunable_units(run: _Run, meta: dict[str, Any]) -> list:
    """The model's prunable units (`mpsearch.profiling.pruning`), described in `meta["units"]`."""
    from mpsearch.profiling.pruning import find_units, unit_meta

    units = find_units(run.pipe, run.inv)
    meta["units"] = unit_meta(units)
    return units


def _measure(run: _Run, session: QuantSession, store, units: list | None, run_units: Callable[[Any], None],
             log: Callable[[str], None]) -> None:  # fmt: skip
    """Calibrate the activation quantizers, then measure what `store` lacks: unit scores, then the fisher
    proxy or every evaluation of this shard through the backend."""
    from mpsearch.profiling.backends import Job

    opts = run.opts
    if "act" in run.tensors:
        t0 = time.perf_counter()
        session.calibrate(run.ref, progressive=opts.progressive)
        log(f"calibrated activation ranges in {time.perf_counter() - t0:.1f} s")
    else:
        session.timesteps = run.ref.model_timesteps  # as the denoiser gets them
    prof = Profiler(run.pipe, run.ref, session, run.groups, max_batch=opts.max_batch)
    if opts.max_memory is not None:
        _fit_memory(run, prof, log)
    if units is not None:
        _run_prune(prof, store, units, run.metrics, log)
    if opts.mode == "fisher":
        _run_fisher(prof, store, run, log)
        return
    i_shard, n_shard = run.shard
    todo = plan_units(run.layers, run.groups, run.candidates, run.tensors, run.metrics, opts.all_metrics,
                      stores=_format_stores(run.weight_cfg))
    todo, estimates = triage.split(todo, run.image_widths, run.candidates.of)
    todo = [u for k, u in enumerate(todo) if k % n_shard == i_shard]
    mine = set(todo)
    estimates = [e for e in estimates if e.source in mine]  # written by the shard that measures the source
    missing = [u for u in todo if any((u.layer, u.tensor, u.bits, m, u.group) not in store.done for m in u.metrics)]
    log(f"{len(todo)} evaluations in this shard, {len(todo) - len(missing)} already stored"
        + (f"; {len(estimates)} image evaluations estimated ({run.image_widths})" if estimates else ""))
    run_units(Job(prof, store, missing, 1 if opts.mode == "exact" else opts.slots, run.model, opts.progress, log))
    if estimates:
        df = store.profile().df
        measured = dict(zip(zip(*(df[c] for c in KEY), strict=True), df["degradation"], strict=True))
        store.append(triage.estimated_rows(estimates, measured))


def _fit_memory(run: _Run, prof: Profiler, log: Callable[[str], None]) -> None:
    """Chunk rows, image slots, decodes and the prefix cache to fit `max_memory` (see `memory.fit`)."""
    from mpsearch.profiling.memory import fit, parse_bytes, probe

    opts, fisher = run.opts, run.opts.mode == "fisher"
    images = any(m.stage == "image" for m in run.metrics)
    model = probe(prof, fisher=fisher, images=images, layers=[l.name for l in run.layers], tensors=tuple(run.tensors))
    slots = 1 if opts.mode == "exact" else opts.slots
    plan = fit(model, parse_bytes(opts.max_memory), rows_per_step=run.ref.rows_per_step, max_batch=opts.max_batch,
               slots=slots, fisher=fisher, images=images)  # fmt: skip
    prof.max_batch, prof.decode_batch, prof.image_slots = plan.max_batch, plan.decode_batch, plan.image_slots
    prof.session.cache_limit, prof.session.weight_cache_limit = plan.cache_limit, plan.weight_cache_limit
    peak = max(plan.predicted.values())
    log(f"memory plan for {opts.max_memory}: {plan.max_batch} rows per forward, {plan.image_slots} image slots, "
        f"{plan.decode_batch} images per decode, {plan.weight_cache_limit / 2**30:.2f} of "
        f"{model.weight_cache / 2**30:.2f} GiB fake-quant weights cached; predicted peak {peak / 2**30:.2f} GiB")  # fmt: skip


def _format_stores(weight_cfg: WeightQuantConfig):
    """The per-layer widths of the weight format whose quantizer `weight_cfg` names (None: every width)."""
    if weight_cfg.format is None:
        return None
    from mpsearch.export.formats import get_format

    return get_format(weight_cfg.format).stores


def _run_prune(prof: Profiler, store, units, metrics, log) -> None:
    from mpsearch.profiling.pruning import score_units

    t0 = time.perf_counter()
    for rows in score_units(prof.pipe, prof.ref, prof.groups, units, metrics, done=store.done):
        store.append(rows)
    log(f"pruning: {len(units)} units scored in {time.perf_counter() - t0:.1f} s")


def _run_fisher(prof: Profiler, store, run: _Run, log) -> None:
    """Fisher scores of every option of the chosen layers the weight format stores (all of them when none)."""
    stores, layer = _format_stores(run.weight_cfg), {l.name: l for l in run.layers}

    def keep(name: str, tensor: str, bits: int) -> bool:
        return tensor != "weight" or stores is None or stores(layer[name], bits)

    needed = {(n, t, b, "fisher", g) for n in layer for t in run.tensors for b in run.candidates.of(t)
              for g in range(len(run.groups)) if keep(n, t, b)}  # fmt: skip
    if needed <= store.done:
        return
    t0 = time.perf_counter()
    rows = prof.fisher(list(layer), run.tensors, seed=run.opts.seed, keep=keep)
    store.append(rows)
    log(f"fisher: {len(rows)} scores in {time.perf_counter() - t0:.1f} s")


class _MemoryStore:
    def __init__(self, meta: dict):
        self.meta, self.rows, self.done = meta, [], set()

    def append(self, rows: list[dict]) -> None:
        for r in rows:
            k = tuple(r[c] for c in KEY)
            if k not in self.done:
                self.done.add(k)
                self.rows.append(r)

    def profile(self) -> Profile:
        import pandas as pd

        return Profile(self.meta, pd.DataFrame(self.rows))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass
