"""The measurement engine: `Unit` (one evaluation), `plan_units` (every evaluation of a profile, in a fixed
order), `Profiler` (evaluates units against the cached FP reference with a calibrated `QuantSession`:
one at a time, slot-batched, or all at once by the Fisher proxy) and `unit_batches`. Backends
(`mpsearch.profiling.backends`) run it locally or on Ray; `mpsearch.profiling.profiler.profile` drives it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from mpsearch.model import find_denoiser
from mpsearch.profiling import calibration as cal
from mpsearch.profiling.metrics import Metric, get_metric
from mpsearch.profiling.session import Candidates, QuantSession


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
                 max_batch: int = 1024, decode_batch: int | None = 64):  # fmt: skip
        self.pipe, self.ref, self.session, self.groups = pipe, ref, session, groups
        _, self.denoiser = find_denoiser(pipe)
        self.max_batch = max_batch
        self.decode_batch = decode_batch  # images per VAE decode, across slots (None: one slot at a time)
        self.image_slots: int | None = None  # at most this many slots per image batch (a memory plan's)
        self._ref_images: torch.Tensor | None = None
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
    def _images(self, units: list[Unit]) -> torch.Tensor:
        """Images `[S, N, 3, H, W]` (on the pipeline's device) sampled with each unit's layer quantized
        during its group's steps, decoded `decode_batch` images at a time across slots."""
        g = units[0].group
        steps = self.groups[g]
        start = steps[0] if self.restart else 0
        S = len(units)
        lat = self.ref.latents[start].to(self.pipe.device)
        lat = lat.repeat(S, *([1] * (lat.dim() - 1)))  # packed latents (Flux) are [N, tokens, C]
        with torch.no_grad(), self.session.slots([u.config(set(steps)) for u in units]):
            lat = cal.denoise(self.pipe, self.ref, lat, start=start, n_slots=S)
            images = cal.decode(self.pipe, lat, batch=self.decode_batch or lat.shape[0] // S)
        return images.view(S, -1, *images.shape[1:])

    def _fp_images(self, device) -> torch.Tensor:
        """The reference's FP images on `device` (copied once)."""
        if self._ref_images is None or self._ref_images.device != torch.device(device):
            self._ref_images = self.ref.images.to(device)
        return self._ref_images

    def evaluate(self, units: list[Unit]) -> list[dict]:
        """Rows for units that share stage and step group, evaluated in one batch (slots); each metric
        scores every unit that asks for it in one call (`Metric.many`)."""
        stage = units[0].stage
        assert all(u.stage == stage and u.group == units[0].group for u in units)
        k = self.image_slots
        if stage == "image" and k and len(units) > k:  # a memory plan's smaller image batches
            return [r for i in range(0, len(units), k) for r in self.evaluate(units[i : i + k])]
        if stage == "output":
            cands, ref = torch.stack(self._outputs(units)), self.fp_output(units[0].group)
        else:
            cands = self._images(units)
            ref = self._fp_images(cands.device)
        scores: dict[tuple[int, str], tuple[float, float]] = {}
        for name in dict.fromkeys(m for u in units for m in u.metrics):
            idx = [i for i, u in enumerate(units) if name in u.metrics]
            got = get_metric(name).many(ref, cands[idx], prompts=self.ref.prompts)
            scores.update({(i, name): r for i, r in zip(idx, got, strict=True)})
        rows = []
        for i, u in enumerate(units):
            for name in u.metrics:
                value, deg = scores[i, name]
                rows.append({"layer": u.layer, "tensor": u.tensor, "bits": u.bits, "metric": name,
                             "step_group": u.group, "value": value, "degradation": deg})  # fmt: skip
        return rows

    # ---- fisher
    def fisher(self, layers: Sequence[str], tensors: Sequence[str], *, seed: int = 0, samples: int = 1,
               rows: int | None = None, keep=None) -> list[dict]:  # fmt: skip
        """Gradient proxy for every (layer, tensor, bits, step group) from one backward pass per chunk of
        `max_batch` rows (`rows`: only the first chunk of that many rows, as the memory probe measures;
        `keep(layer, tensor, bits)`: False for an option not to score, e.g. a width the format lacks there)."""
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
                        if keep is not None and not keep(st.name, t, b):
                            continue
                        d = st.delta(x, t, b)
                        s = (g.float() * d.float()).flatten(1).sum(1).double().pow(2).cpu()
                        a = acc.setdefault((st.name, t, b), torch.zeros(G, dtype=torch.float64))
                        a.index_add_(0, state["groups"], s)

        rows_all = torch.arange(ref.n_rows) if rows is None else torch.arange(rows) % ref.n_rows
        chunk = self.max_batch if rows is None else rows
        gen = torch.Generator().manual_seed(seed)
        was = [p.requires_grad for p in self.denoiser.parameters()]
        self.denoiser.requires_grad_(False)
        sess._fisher = hook
        sess._fisher_anchor = torch.zeros((), requires_grad=True, device=self.pipe.device)
        try:
            for i in range(0, len(rows_all), chunk):
                batch = rows_all[i : i + chunk]
                state["groups"] = group_of_step[batch // ref.rows_per_step]
                for _ in range(samples):
                    with torch.enable_grad():
                        y = ref.forward(self.denoiser, batch)
                        r = torch.randn(y.shape, generator=gen).to(y.device)
                        (y * r).sum().backward()
                with torch.no_grad():
                    y0 = ref.outputs.flatten(0, 1)[batch].double()
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


def unit_batches(units: list[Unit], size: int) -> list[list[Unit]]:
    by: dict[tuple, list[Unit]] = {}
    for u in units:
        by.setdefault((u.stage, u.group), []).append(u)
    out = []
    for us in by.values():
        out += [us[i : i + size] for i in range(0, len(us), size)]
    return out
