"""Sensitivity profiling: the degradation of quantizing one layer's weight or input activation at one
bit-width, per metric and step group (MixDQ's one-layer-at-a-time analysis), stored as a `Profile`.

Quality layers are measured on quality metrics and content layers on content metrics (MixDQ's
metric-decoupled analysis); `all_metrics=True` measures every pair. Modes:

- `exact`: the naive loop, one evaluation per (layer, tensor, bits, step group).
- `batched`: slot batching, several single-layer perturbations in one batched forward (slot `s` of the
  batch has layer `s` quantized); the same numbers as `exact`.
- `fisher`: one forward + backward over the calibration inputs scores every layer × tensor × bits
  (ModelOpt auto_quantize's gradient proxy): with `r ~ N(0, I)` on the denoiser output, `(rᵀ J ΔY)²`
  estimates the output noise power `‖J ΔY‖²` of the perturbation `ΔY` at the layer's output, so metric
  `fisher` is on the scale of `sqnr`'s degradation (relative noise power; value = estimated SQNR dB).

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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mpsearch.model import find_denoiser, inventory, load_pipeline, weights_fingerprint
from mpsearch.profiling import calibration as cal
from mpsearch.profiling.lock import FolderLock
from mpsearch.profiling.metrics import Metric, get_metric
from mpsearch.profiling.quant import ActQuantConfig, Candidates, QuantSession, WeightQuantConfig
from mpsearch.profiling.store import KEY, Profile, ProfileError, Store, merge  # noqa: F401 (re-exported)

MODES = ("exact", "batched", "fisher")
DEFAULT_METRICS = ("sqnr", "mse", "ssim", "adherence")
TENSORS = ("weight", "act")


@dataclass(frozen=True)
class Unit:
    """One evaluation: a layer's tensor at `bits` during step group `group`, read by `metrics` of one stage."""

    layer: str
    tensor: str
    bits: int
    group: int
    stage: str
    metrics: tuple[str, ...]

    def config(self, steps: set[int] | None):
        w, a = (self.bits, None) if self.tensor == "weight" else (None, self.bits)
        return (self.layer, w, a, steps)


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
    return model is None or str(model) == "demo"


def plan_units(layers, groups: list[list[int]], candidates: Candidates, tensors: Sequence[str],
               metrics: Sequence[Metric], all_metrics: bool, stores=None) -> list[Unit]:  # fmt: skip
    """Every evaluation of a profile, in a fixed order (shards take every n-th).

    A layer is measured on the metrics of its group's kind (MixDQ); when none of the chosen metrics has
    that kind (e.g. `--metrics sqnr` only), on all of them, so that every layer is measured. `stores(layer,
    bits)`: the weight format's widths per layer (gguf: Linear rows of whole blocks); others are skipped."""
    units = []
    for layer in layers:
        ms = [m for m in metrics if all_metrics or m.kind == layer.group] or list(metrics)
        for tensor in tensors:
            for bits in candidates.of(tensor):
                if tensor == "weight" and stores is not None and not stores(layer, bits):
                    continue
                for g in range(len(groups)):
                    for stage in ("output", "image"):
                        names = tuple(m.name for m in ms if m.stage == stage)
                        if names:
                            units.append(Unit(layer.name, tensor, bits, g, stage, names))
    return units


class Profiler:
    """Evaluates units against a cached FP reference with a calibrated `QuantSession`."""

    def __init__(self, pipe, ref: cal.Reference, session: QuantSession, groups: list[list[int]], *,
                 max_batch: int = 1024):  # fmt: skip
        self.pipe, self.ref, self.session, self.groups = pipe, ref, session, groups
        _, self.denoiser = find_denoiser(pipe)
        self.max_batch = max_batch
        self.restart = cal.restartable(pipe)
        self._fp_out: dict[int, torch.Tensor] = {}
        self._prefix_cache: dict = {}  # block outputs on full-precision rows, reused across slot batches

    # ---- output stage
    def _forward_rows(self, rows: torch.Tensor, repeat: int, key=None) -> torch.Tensor:
        """Denoiser outputs for `rows`, tiled `repeat` times: [repeat, len(rows), ...]."""
        chunk = max(1, self.max_batch // repeat)
        outs = []
        for i in range(0, len(rows), chunk):
            self.session.new_batch()  # every chunk starts from full-precision inputs
            self.session._cache_key = (key, i, chunk) if key is not None else None
            outs.append(self.ref.forward(self.denoiser, rows[i : i + chunk], repeat))
        outs = [o.view(repeat, -1, *o.shape[1:]) for o in outs]
        return torch.cat(outs, 1)

    def fp_output(self, g: int) -> torch.Tensor:
        if g not in self._fp_out:
            with torch.no_grad():
                self._fp_out[g] = self._forward_rows(self.ref.rows_of(self.groups[g]), 1)[0].cpu()
        return self._fp_out[g]

    def _outputs(self, units: list[Unit]) -> list[torch.Tensor]:
        g = units[0].group
        rows = self.ref.rows_of(self.groups[g])
        sess = self.session
        with torch.no_grad(), sess.slots([u.config(None) for u in units]):
            sess._cache = self._prefix_cache if len(units) > 1 and not sess._plan else None
            try:
                out = self._forward_rows(rows, len(units), key=g)
            finally:
                sess._cache, sess._cache_key = None, None
        return [o.cpu() for o in out]

    # ---- image stage
    def _images(self, units: list[Unit]) -> list[torch.Tensor]:
        g = units[0].group
        steps = self.groups[g]
        start = steps[0] if self.restart else 0
        S = len(units)
        lat = self.ref.latents[start].to(self.pipe.device).repeat(S, 1, 1, 1)
        with torch.no_grad(), self.session.slots([u.config(set(steps)) for u in units]):
            lat = cal.denoise(self.pipe, self.ref, lat, start=start, n_slots=S)
            # decoded slot by slot: the same batch shape as the one-at-a-time loop, so the same numbers
            images = cal.decode(self.pipe, lat, batch=lat.shape[0] // S).cpu()
        return list(images.view(S, -1, *images.shape[1:]))

    def evaluate(self, units: list[Unit]) -> list[dict]:
        """Rows for units that share stage and step group, evaluated in one batch (slots)."""
        stage = units[0].stage
        assert all(u.stage == stage and u.group == units[0].group for u in units)
        if stage == "output":
            cands, ref = self._outputs(units), self.fp_output(units[0].group)
        else:
            cands, ref = self._images(units), self.ref.images
        rows = []
        for u, cand in zip(units, cands, strict=True):
            for name in u.metrics:
                value, deg = get_metric(name)(ref, cand, prompts=self.ref.prompts)
                rows.append({"layer": u.layer, "tensor": u.tensor, "bits": u.bits, "metric": name,
                             "step_group": u.group, "value": value, "degradation": deg})  # fmt: skip
        return rows

    # ---- fisher
    def fisher(self, layers: Sequence[str], tensors: Sequence[str], *, seed: int = 0, samples: int = 1) -> list[dict]:
        """Gradient proxy for every (layer, tensor, bits, step group) from one backward pass per chunk."""
        sess, ref = self.session, self.ref
        cands = {t: sess.candidates.of(t) for t in tensors}
        G = len(self.groups)
        group_of_step = torch.empty(ref.steps, dtype=torch.long)
        for gi, steps in enumerate(self.groups):
            group_of_step[steps] = gi
        wanted = set(layers)
        acc: dict[tuple, torch.Tensor] = {}
        signal = torch.zeros(G, dtype=torch.float64)
        state = {"groups": None}

        def hook(st, x, g):
            if st.name not in wanted:
                return
            with torch.no_grad():
                for t in tensors:
                    for b in cands[t]:
                        d = st.delta(x, t, b)
                        s = (g.float() * d.float()).flatten(1).sum(1).double().pow(2).cpu()
                        a = acc.setdefault((st.name, t, b), torch.zeros(G, dtype=torch.float64))
                        a.index_add_(0, state["groups"], s)

        rows_all = torch.arange(ref.n_rows)
        gen = torch.Generator().manual_seed(seed)
        was = [p.requires_grad for p in self.denoiser.parameters()]
        self.denoiser.requires_grad_(False)
        sess._fisher = hook
        sess._fisher_anchor = torch.zeros((), requires_grad=True, device=self.pipe.device)
        try:
            for i in range(0, ref.n_rows, self.max_batch):
                rows = rows_all[i : i + self.max_batch]
                state["groups"] = group_of_step[rows // ref.rows_per_step]
                for _ in range(samples):
                    with torch.enable_grad():
                        y = ref.forward(self.denoiser, rows)
                        r = torch.randn(y.shape, generator=gen).to(y.device)
                        (y * r).sum().backward()
                with torch.no_grad():
                    y0 = ref.outputs.flatten(0, 1)[rows].double()
                    signal.index_add_(0, state["groups"], y0.pow(2).flatten(1).sum(1))
        finally:
            sess._fisher, sess._fisher_anchor = None, None
            for p, w in zip(self.denoiser.parameters(), was, strict=True):
                p.requires_grad_(w)
        out = []
        for (name, t, b), a in acc.items():
            for gi in range(G):
                deg = float(a[gi] / samples / max(float(signal[gi]), 1e-300))
                value = -10 * math.log10(deg) if deg > 0 else math.inf
                out.append({"layer": name, "tensor": t, "bits": b, "metric": "fisher", "step_group": gi,
                            "value": value, "degradation": deg})  # fmt: skip
        return out


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


def profile(
    model: Any = None,
    *,
    out: str | Path | None = "profiles/demo",
    bits: Sequence[int] | None = None,
    act_bits: Sequence[int] | None = None,
    tensors: Sequence[str] = TENSORS,
    metrics: Sequence[str] | None = None,
    prompts: Sequence[str] | str | Path | None = None,
    n_prompts: int = 8,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    guidance_rescale: float = 0.0,
    resolution: int | None = None,
    step_groups: int | str | list[list[int]] = "auto",
    mode: str = "exact",
    slots: int = 8,
    shard: str | tuple[int, int] | None = None,
    all_metrics: bool = False,
    prune: bool = False,
    layers: str | Sequence[str] | None = None,
    bos_aware: bool = True,
    split_shortcut: bool = True,
    progressive: bool = False,
    weight_cfg: WeightQuantConfig | None = None,
    act_cfg: ActQuantConfig | None = None,
    device: str = "cpu",
    max_batch: int = 1024,
    cache: bool = True,
    progress: bool = False,
    log=None,
    backend: str = "local",
    address: str | None = None,
    workers: int | None = None,
) -> Profile:
    """Measure a model's per-layer sensitivity and store it at `out` (resuming what is there).

    `model`: a pipeline, a hub id / folder / file, or None for the demo. `bits` / `act_bits`: candidate
    weight / activation bit-widths (default {2,3,4,5,6,8} / {4,6,8,16}; 16 is never measured). `metrics`:
    registered metric names (default sqnr, mse, ssim, plus adherence on the demo). `prompts`: a list or a
    file with one per line (default: the demo's own scene sampler, `n_prompts` of them; seeds are
    `seed + i`). `steps`/`guidance`: sampler settings (demo: `mpsearch.zoo.DEMO_STEPS/DEMO_GUIDANCE`, else
    8 / 3.0); `guidance_rescale`: SD/SDXL's CFG rescale (0 = off). `step_groups`: 'auto' (1 group for
    ≤ 4 steps, else TMPQ-DM's quadratic grouping into 4), a number of groups, or explicit lists of step
    indices. `mode`: exact | batched | fisher. `shard`: 'i/n'.
    `layers`: a regex (or names) selecting layers. `prune`: also score every prunable unit
    (`mpsearch.profiling.pruning`: LAPTOP-Diff's output loss with that unit removed; rows with `tensor="unit"`);
    `tensors=()` with `prune` scores the units only. `out=None` keeps the results in memory only.
    `backend`: where measurements run, 'local' or 'ray' (`address`: the Ray cluster, `workers`: actors;
    see `mpsearch.profiling.backends`); every backend stores the same rows.

    Returns the `Profile` of everything stored at `out` (this shard's part when sharded).
    `mpsearch.profiling.lock.FolderLocked` (a ValueError naming the holder) when another process writes `out`.
    """
    from mpsearch import __version__

    log = log or (lambda msg: None)
    weight_cfg, act_cfg = weight_cfg or WeightQuantConfig(), act_cfg or ActQuantConfig()
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    from mpsearch.profiling.backends import Job, get_backend

    run_units = get_backend(backend, address=address, workers=workers)  # checked before any expensive work
    tensors = [t for t in TENSORS if t in tensors]
    if not tensors and not prune:
        raise ValueError("tensors: choose 'weight' and/or 'act'")
    if prune and mode == "fisher":
        raise ValueError("prune: unit scores are measured, not estimated; use mode exact or batched")
    i_shard, n_shard = parse_shard(shard)
    out_path = Path(out) if out is not None else None
    # one writer per folder, from before the model loads to the last row (see mpsearch.profiling.lock)
    with FolderLock(out_path, "profile") if out_path is not None else contextlib.nullcontext():
        demo = _is_demo(model)
        pipe = model if hasattr(model, "components") else load_pipeline(model, device=device)
        pipe.set_progress_bar_config(disable=True)
        component, denoiser = find_denoiser(pipe)
        inv = inventory(pipe, resolution=resolution)
        fingerprint = weights_fingerprint(denoiser)

        if demo:
            d_steps, d_guid = cal.demo_settings()
            steps, guidance = steps or d_steps, d_guid if guidance is None else guidance
        steps = steps or cal.DEFAULT_STEPS
        guidance = cal.DEFAULT_GUIDANCE if guidance is None else float(guidance)
        if prompts is None:
            prompts = cal.demo_prompts(n_prompts, seed) if demo else None
            if prompts is None:
                raise ValueError("pass prompts (a list or a file, one per line) for a model other than the demo")
        elif isinstance(prompts, (str, Path)):
            prompts = cal.read_prompts(prompts)
        prompts = list(prompts)
        seeds = [seed + i for i in range(len(prompts))]
        metric_names = list(metrics) if metrics else [m for m in DEFAULT_METRICS if demo or m != "adherence"]
        if mode == "fisher":
            metric_names = ["fisher"]
            metric_objs = []
        else:
            metric_objs = [get_metric(m) for m in metric_names]
        candidates = Candidates(tuple(bits) if bits else Candidates.weight, tuple(act_bits) if act_bits else Candidates.act)
        if layers is None:
            chosen = list(inv.layers)
        else:
            import re

            chosen = [l for l in inv.layers if (re.search(layers, l.name) if isinstance(layers, str) else l.name in layers)]
            if not chosen:
                raise ValueError(f"no layer matches {layers!r}")
        ref = _reference(pipe, out_path, fingerprint, prompts, seeds, steps, guidance, resolution, float(guidance_rescale),
                         cache, log)  # fmt: skip
        groups = step_groups if isinstance(step_groups, list) else cal.step_groups(ref.timesteps, step_groups)
        session = QuantSession(pipe, candidates, weight_cfg=weight_cfg, act_cfg=act_cfg, bos_aware=bos_aware,
                               split_shortcut=split_shortcut)  # fmt: skip
        try:
            meta = {
                "schema": "mpsearch.profile/1",
                "tool_version": __version__,
                "model": inv.model if not demo else "demo",
                "component": component,
                "fingerprint": fingerprint,
                "inventory_fingerprint": inv.fingerprint,
                "layers": inv.names,
                "groups": {l.name: l.group for l in inv.layers},
                "candidates": candidates.to_dict(),
                "tensors": tensors,
                "metrics": ({"fisher": {"kind": "quality", "stage": "gradient", "version": "1"}} if mode == "fisher"
                            else {m.name: m.describe() for m in metric_objs}),
                "mode": "fisher" if mode == "fisher" else "exact",  # batched measures the same numbers as exact
                "all_metrics": all_metrics or mode == "fisher",
                "step_groups": groups,
                "sampling": {**ref.settings(), "prompts": prompts, "scheduler": type(pipe.scheduler).__name__},
                "quant": {"bos_aware": bos_aware, "split_shortcut": split_shortcut, "split_weights": False,
                          "progressive": progressive, "weight": weight_cfg.to_dict(), "act": asdict(act_cfg)},
                "shard": f"{i_shard}/{n_shard}" if n_shard > 1 else None,
                "baseline": {},
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }  # fmt: skip
            for m in metric_objs:
                base = ref.images if m.stage == "image" else ref.outputs
                value, deg = m(base, base, prompts=prompts)
                meta["baseline"][m.name] = {"value": value if math.isfinite(value) else None, "degradation": deg}
            if prune:
                from mpsearch.profiling.pruning import find_units, unit_meta

                units = find_units(pipe, inv)
                meta["units"] = unit_meta(units)
            store = Store(out_path, meta) if out_path is not None else _MemoryStore(meta)
            if out_path is not None:  # so `solve` needs no model: profile on a GPU box, solve on a laptop
                inv.save(Path(out_path) / "inventory.json")
            with store:
                if "act" in tensors:
                    t0 = time.perf_counter()
                    session.calibrate(ref, progressive=progressive)
                    log(f"calibrated activation ranges in {time.perf_counter() - t0:.1f} s")
                else:
                    session.timesteps = list(ref.timesteps)
                prof = Profiler(pipe, ref, session, groups, max_batch=max_batch)
                if prune:
                    _run_prune(prof, store, units, metric_objs, log)
                if mode == "fisher":
                    _run_fisher(prof, store, chosen, tensors, candidates, groups, seed, log)
                else:
                    units = plan_units(chosen, groups, candidates, tensors, metric_objs, all_metrics,
                                       stores=_format_stores(weight_cfg))
                    units = [u for k, u in enumerate(units) if k % n_shard == i_shard]
                    todo = [u for u in units if any((u.layer, u.tensor, u.bits, m, u.group) not in store.done
                                                    for m in u.metrics)]  # fmt: skip
                    log(f"{len(units)} evaluations in this shard, {len(units) - len(todo)} already stored")
                    run_units(Job(prof, store, todo, 1 if mode == "exact" else slots, model, progress, log))
                result = store.profile()
        finally:
            session.remove()
        return result


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


def unit_batches(units: list[Unit], size: int) -> list[list[Unit]]:
    by: dict[tuple, list[Unit]] = {}
    for u in units:
        by.setdefault((u.stage, u.group), []).append(u)
    out = []
    for us in by.values():
        out += [us[i : i + size] for i in range(0, len(us), size)]
    return out


def _run_fisher(prof: Profiler, store, layers, tensors, candidates, groups, seed, log) -> None:
    names = [l.name for l in layers]
    needed = {(n, t, b, "fisher", g) for n in names for t in tensors for b in candidates.of(t) for g in range(len(groups))}
    if needed <= store.done:
        return
    t0 = time.perf_counter()
    rows = prof.fisher(names, tensors, seed=seed)
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
