"""Switchable fake quantizers on a pipeline's denoiser: `QuantSession` (every candidate width's quantizer
computed once, any layer switched to any width, several single-layer configurations evaluated in one
batched forward as slots) and `quantize_pipeline`, which builds and calibrates one. The quantizer math is
in `mpsearch.profiling.quantizers`, the slot rows in `mpsearch.profiling.rows`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import torch

from mpsearch.pipelines import adapter_for
from mpsearch.pipelines.timesteps import step_indices
from mpsearch.profiling.quantizers import ActQuantConfig, WeightQuantConfig, fake_quant_act, fake_quant_weight
from mpsearch.profiling.rows import CONTAINER_PATTERN, assemble, batch_size, nbytes, take_rows


@dataclass(frozen=True)
class Candidates:
    """Candidate bit-widths. 16 means full precision (never measured; degradation 0 by definition)."""

    weight: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
    act: tuple[int, ...] = (4, 6, 8, 16)

    def __post_init__(self) -> None:
        from mpsearch.planning.cost import ACT_BITS, WEIGHT_BITS

        for kind, widths, allowed in (("weight", self.weight, WEIGHT_BITS), ("activation", self.act, ACT_BITS)):
            for b in widths:  # a width no plan can hold (1 bit: NaN scales; 7: no format stores it) is not measured
                if b not in allowed:
                    raise ValueError(f"candidate {kind} bit-width {b!r}: plans and checkpoints hold only "
                                     f"{', '.join(map(str, allowed))} (16 = full precision)")
        object.__setattr__(self, "weight", tuple(sorted({int(b) for b in self.weight})))
        object.__setattr__(self, "act", tuple(sorted({int(b) for b in self.act})))

    def of(self, tensor: str) -> tuple[int, ...]:
        """Bit-widths to measure for `tensor` ('weight' | 'act'): the candidates below 16."""
        return tuple(b for b in (self.weight if tensor == "weight" else self.act) if b < 16)

    def to_dict(self) -> dict[str, list[int]]:
        return {"weight": list(self.weight), "act": list(self.act)}


def bos_layers(denoiser: torch.nn.Module, pipe=None) -> list[str]:
    """Layers whose first text token (BOS) is kept in full precision, as the pipeline's adapter says
    (cross-attention `to_k` / `to_v` with a causal CLIP text encoder; none with another encoder)."""
    return adapter_for(pipe if pipe is not None else denoiser).bos_layers(denoiser, pipe)


def split_points(denoiser: torch.nn.Module) -> dict[str, int]:
    """`{conv_shortcut name: channels of the decoder half}` for up-block ResNets whose input is
    `cat([hidden_states, skip])` (Q-Diffusion's split shortcut). Empty for models without up blocks."""
    out: dict[str, int] = {}
    ups = getattr(denoiser, "up_blocks", None)
    if ups is None:
        return out
    mid = getattr(denoiser, "mid_block", None)
    prev = None
    if mid is not None and getattr(mid, "resnets", None):
        prev = mid.resnets[-1].out_channels
    for b, block in enumerate(ups):
        for i, res in enumerate(getattr(block, "resnets", [])):
            first = prev if i == 0 else res.out_channels
            shortcut = getattr(res, "conv_shortcut", None)
            if first is not None and shortcut is not None and 0 < first < res.in_channels:
                out[f"up_blocks.{b}.resnets.{i}.conv_shortcut"] = int(first)
        if getattr(block, "resnets", None):
            prev = block.resnets[-1].out_channels
    return out


class _LayerQuant:
    """Quantizer state of one Linear/Conv2d: cached fake-quant weights per bit-width, activation ranges
    (shared, and per step when calibrated progressively), BOS and split handling."""

    def __init__(self, session: QuantSession, name: str, module: torch.nn.Module, bos: bool, split: int | None):
        self.session, self.name, self.module = session, name, module
        self.bos, self.split = bos, split
        self.conv = isinstance(module, torch.nn.Conv2d)
        self.w_cache: dict[int, torch.Tensor] = {}
        # ranges: [parts, 2] (lo, hi) per part (1 part, or 2 for a split input); step ranges per bits
        self.range: torch.Tensor | None = None
        self.step_range: dict[int, torch.Tensor] = {}  # bits -> [n_steps, parts, 2]
        self._obs: dict = {}

    # ---- weights
    def weight(self, bits: int | None) -> torch.Tensor:
        w = self.module.weight
        if bits is None or bits >= 16:
            return w
        if bits in self.w_cache:
            return self.w_cache[bits]
        sess, cfg = self.session, self.session.weight_cfg
        with torch.no_grad():
            if self.split and sess.split_weights:
                s = self.split
                wq = torch.cat([fake_quant_weight(w[:, :s], bits, cfg), fake_quant_weight(w[:, s:], bits, cfg)], 1)
            else:
                wq = fake_quant_weight(w, bits, cfg)
        n = wq.numel() * wq.element_size()
        if sess.weight_cache_limit is None or sess._weight_cache_bytes + n <= sess.weight_cache_limit:
            self.w_cache[bits] = wq.detach()  # past the limit (a memory plan's), computed again at each use
            sess._weight_cache_bytes += n
        return wq.detach()

    def op(self, x: torch.Tensor, w: torch.Tensor, bias) -> torch.Tensor:
        if self.conv:
            return self.module._conv_forward(x, w, bias)
        return torch.nn.functional.linear(x, w, bias)

    # ---- activations
    def _parts(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.split:
            dim = 1 if self.conv else -1
            return list(torch.split(x, [self.split, x.shape[dim] - self.split], dim=dim))
        return [x]

    def observe(self, x: torch.Tensor, step: int | None = None) -> None:
        """Feed one calibration batch (EMA over batches; per step when `step` is given)."""
        stats = torch.stack([torch.stack([p.detach().amin().float(), p.detach().amax().float()]) for p in self._parts(x)])
        stats[:, 0].clamp_(max=0)
        stats[:, 1].clamp_(min=0)
        m = self.session.act_cfg.momentum
        prev = self._obs.get(step)
        self._obs[step] = stats.cpu() if prev is None else m * prev + (1 - m) * stats.cpu()

    def quant_act(self, x: torch.Tensor, bits: int) -> torch.Tensor:
        if bits >= 16:
            return x
        sess = self.session
        rng = self.range
        steps = sess._row_steps
        if bits in self.step_range and steps is not None:
            table = self.step_range[bits].to(x.device)  # [n_steps, parts, 2]
            rng = table[steps]  # [B, parts, 2]
        if rng is None:
            raise RuntimeError(f"{self.name}: activation ranges are not calibrated (pass calib= to quantize_pipeline)")
        parts = self._parts(x)
        out = []
        for k, p in enumerate(parts):
            lo, hi = rng[..., k, 0], rng[..., k, 1]
            if lo.dim() == 1:  # per-row ranges
                shape = (-1,) + (1,) * (p.dim() - 1)
                lo, hi = lo.reshape(shape), hi.reshape(shape)
            out.append(fake_quant_act(p, lo.to(x.device), hi.to(x.device), bits, sess.act_cfg.symmetric))
        return out[0] if len(out) == 1 else torch.cat(out, dim=1 if self.conv else -1)

    # ---- forward
    def run(self, x: torch.Tensor, w_bits: int | None, a_bits: int | None) -> torch.Tensor:
        bias = self.module.bias
        if self.bos and x.dim() == 3 and x.shape[1] > 1 and (w_bits or a_bits):
            # MixDQ: the BOS token's K/V is the same for every prompt, so it is kept in full precision
            head = self.op(x[:, :1], self.module.weight, bias)
            tail = self._run_plain(x[:, 1:], w_bits, a_bits, bias)
            return torch.cat([head, tail], dim=1)
        return self._run_plain(x, w_bits, a_bits, bias)

    def _run_plain(self, x, w_bits, a_bits, bias):
        if a_bits is not None and a_bits < 16:
            x = self.quant_act(x, a_bits)
        return self.op(x, self.weight(w_bits), bias)

    def delta(self, x: torch.Tensor, tensor: str, bits: int) -> torch.Tensor:
        """Output change from quantizing one tensor at `bits` (no bias; linear in the perturbation)."""
        if self.bos and x.dim() == 3 and x.shape[1] > 1:
            d = self._delta_plain(x[:, 1:], tensor, bits)
            return torch.cat([torch.zeros_like(d[:, :1]), d], dim=1)
        return self._delta_plain(x, tensor, bits)

    def _delta_plain(self, x: torch.Tensor, tensor: str, bits: int) -> torch.Tensor:
        w = self.module.weight
        if tensor == "weight":
            return self.op(x, self.weight(bits) - w, None)
        return self.op(self.quant_act(x, bits) - x, w, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sess = self.session
        B = sess._call_batch
        if B and not sess._in_sub and not self.conv and x.dim() >= 2 and x.shape[0] != B and x.shape[0] % B == 0:
            # rows of several samples flattened together (HunyuanDiT's T5 projection): batch-first again, so
            # slots, per-row ranges and Fisher rows see one row per sample
            return self.forward(x.view(B, -1, *x.shape[1:])).flatten(0, 1)
        if sess._collect is not None:
            self.observe(x[:, 1:] if self.bos and x.dim() == 3 and x.shape[1] > 1 else x, sess._collect_step)
            return self.module._mpsearch_orig_forward(x)
        w_bits, a_bits = sess._config(self.name)
        if sess._n_slots == 1 or sess._in_sub:
            slots = sess._slot_cfg.get(self.name) if sess._slot_cfg and not sess._in_sub else None
            if slots:  # one slot: the whole batch runs with its configuration
                _, wb, ab, steps = slots[0]
                if steps is None or sess._step in steps:
                    w_bits, a_bits = wb, ab
            return self._finish(x, self.run(x, w_bits, a_bits))
        here = {s: (wb, ab) for s, wb, ab, steps in sess._slot_cfg.get(self.name, ())
                if steps is None or sess._step in steps}  # fmt: skip
        y = sess._partitioned(
            lambda cfg, xs: self.run(xs, *(cfg or (w_bits, a_bits))), (x,), {}, here,
        )
        return self._finish(x, y)

    def _finish(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        sess = self.session
        if sess._fisher is not None:
            y = y + sess._fisher_anchor  # makes y part of the graph so its gradient can be read
            xd = x.detach()
            y.register_hook(lambda g, xd=xd: sess._fisher(self, xd, g))
        return y


class QuantSession:
    """Fake quantization of a pipeline's denoiser, switchable per layer at no cost.

    Quantizer parameters for every candidate bit-width are computed once (weights lazily, cached;
    activation ranges at calibration), so `set`/`apply` only flip which ones a layer uses (MixDQ's and
    TMPQ-DM's shared super-checkpoint). Layers are patched in place (their `forward`), so module names,
    state dicts and `inventory()` are unchanged; `remove()` restores the original forwards.

    >>> session = quantize_pipeline(pipe, Candidates(), calib=reference)
    >>> session.apply({"conv_in": (8, 8), "down_blocks.0.attentions.0.proj_in": (4, None)})
    >>> images = pipe(prompts).images          # quantized
    >>> session.reset()                        # all full precision again
    """

    def __init__(
        self,
        pipe,
        candidates: Candidates = Candidates(),
        *,
        weight_cfg: WeightQuantConfig = WeightQuantConfig(),
        act_cfg: ActQuantConfig = ActQuantConfig(),
        bos_aware: bool = True,
        split_shortcut: bool = True,
        split_weights: bool = False,
        layers: list[str] | None = None,
    ):
        from mpsearch.model import QUANTIZABLE, find_denoiser

        self.pipe = pipe
        _, self.denoiser = find_denoiser(pipe)
        self.candidates, self.weight_cfg, self.act_cfg = candidates, weight_cfg, act_cfg
        self.bos_aware, self.split_shortcut, self.split_weights = bos_aware, split_shortcut, split_weights
        self.progressive = False
        bos = set(bos_layers(self.denoiser, pipe)) if bos_aware else set()
        splits = split_points(self.denoiser) if split_shortcut else {}
        wanted = set(layers) if layers is not None else None
        self.layers: dict[str, _LayerQuant] = {}
        for name, m in self.denoiser.named_modules():
            if isinstance(m, QUANTIZABLE) and (wanted is None or name in wanted):
                self.layers[name] = _LayerQuant(self, name, m, name in bos, splits.get(name))
        self.timesteps: list[int] | None = None
        self._plan: dict[str, tuple[int | None, int | None]] = {}
        self._step_plans: dict[int, dict[str, tuple[int | None, int | None]]] = {}
        self._slot_cfg: dict[str, list] = {}
        self._n_slots = 1
        self._diverged: set[int] = set()  # slots whose rows differ from full precision by now
        self._in_sub = False
        self._cache: dict | None = None  # prefix cache of block outputs on full-precision rows (profiler)
        self._cache_key = None
        self._cache_bytes = 0
        self.cache_limit = 2 * 1024**3
        self.weight_cache_limit: int | None = None  # bytes of cached fake-quant weights (None: all of them)
        self._weight_cache_bytes = 0
        self._inside: dict[str, bool] = {}
        self._containers: dict[str, torch.nn.Module] = {}
        self._step: int | None = None
        self._row_steps: torch.Tensor | None = None
        self._call_batch: int | None = None  # rows of the current denoiser call
        self._collect = None
        self._collect_step: int | None = None
        self._fisher = None
        self._fisher_anchor = None
        for st in self.layers.values():
            st.module._mpsearch_orig_forward = st.module.forward
            st.module.forward = st.forward
        self._hook = self.denoiser.register_forward_pre_hook(self._on_call, with_kwargs=True)

    # ---- public
    def set(self, layer_name: str, w_bits: int | None = None, a_bits: int | None = None) -> None:
        """Quantize one layer's weight and/or input activation (None or 16 = full precision)."""
        if layer_name not in self.layers:
            raise KeyError(f"unknown layer {layer_name!r}")
        w_bits = None if w_bits is None or w_bits >= 16 else int(w_bits)
        a_bits = None if a_bits is None or a_bits >= 16 else int(a_bits)
        for bits, cands, what in ((w_bits, self.candidates.weight, "weight"), (a_bits, self.candidates.act, "act")):
            if bits is not None and bits not in cands:
                raise ValueError(f"{layer_name}: {bits}-bit {what} is not a candidate {list(cands)}")
        if w_bits is None and a_bits is None:
            self._plan.pop(layer_name, None)
        else:
            self._plan[layer_name] = (w_bits, a_bits)

    def apply(self, plan_like, step_overrides=None) -> None:
        """Set every layer from a plan: `{name: (w_bits, a_bits)}`, `{name: {"w_bits":…, "a_bits":…}}`
        or an `mpsearch.planning.plan.Plan`. Layers not named stay full precision. `step_overrides`: the plan
        format's `[{"steps": [i, …], "layers": {name: {"a_bits": 8}}}]` or `{step: {name: (w, a)}}`;
        they replace (per field) the plan's bits at those denoising steps (PCR-style per-step bits)."""
        if hasattr(plan_like, "layers") and not isinstance(plan_like, dict):
            step_overrides = plan_like.step_overrides if step_overrides is None else step_overrides
            plan_like = plan_like.layers
        self.reset()
        for name, bits in plan_like.items():
            self.set(name, *_as_pair(bits))
        base = dict(self._plan)
        if isinstance(step_overrides, dict):
            items = [([int(k)], v) for k, v in step_overrides.items()]
        else:
            items = [(o["steps"], o["layers"]) for o in (step_overrides or [])]
        for steps, layers in items:
            for step in steps:
                plan = self._step_plans.setdefault(int(step), dict(base))
                for name, bits in layers.items():
                    if name not in self.layers:
                        raise KeyError(f"step override names unknown layer {name!r}")
                    w, a = plan.get(name, (None, None))
                    nw, na = _as_pair(bits, partial=True)
                    plan[name] = (w if nw is ... else nw, a if na is ... else na)
        self._plan = base

    def reset(self) -> None:
        """Every layer back to full precision (quantizer parameters are kept)."""
        self._plan, self._step_plans = {}, {}

    def remove(self) -> None:
        """Restore the original module forwards and drop the hooks; the session is unusable afterwards."""
        for m in [st.module for st in self.layers.values()] + list(self._containers.values()):
            if "forward" in vars(m):
                del m.forward
            vars(m).pop("_mpsearch_orig_forward", None)
        self._containers = {}
        self._hook.remove()
        self.layers = {}

    @property
    def config(self) -> dict[str, tuple[int | None, int | None]]:
        return dict(self._plan)

    # ---- calibration
    def calibrate(self, calib, *, progressive: bool = False) -> QuantSession:
        """Activation ranges from a `mpsearch.profiling.calibration.Reference` (EMA over shuffled batches of the
        inputs of every denoising step). `progressive` (PCR) adds per-step ranges for every candidate
        activation bit-width, each fitted on a trajectory whose earlier steps ran quantized at that width."""
        from mpsearch.profiling.calibration import progressive_ranges

        self.timesteps = list(getattr(calib, "model_timesteps", calib.timesteps))  # as the denoiser gets them
        for st in self.layers.values():
            st._obs = {}
        n = calib.n_rows
        gen = torch.Generator().manual_seed(self.act_cfg.seed)
        self._collect = True
        try:
            with torch.no_grad():
                for _ in range(self.act_cfg.rounds):
                    order = torch.randperm(n, generator=gen)
                    for i in range(0, n, self.act_cfg.batch_size):
                        calib.forward(self.denoiser, order[i : i + self.act_cfg.batch_size])
        finally:
            self._collect = None
        for st in self.layers.values():
            st.range = st._obs.get(None)
            st._obs = {}
        if progressive:
            progressive_ranges(self, calib)
            self.progressive = True
        return self

    # ---- internals used by the profiler
    def _config(self, name: str) -> tuple[int | None, int | None]:
        if self._step_plans and self._step in self._step_plans:
            return self._step_plans[self._step].get(name, (None, None))
        return self._plan.get(name, (None, None))

    def _on_call(self, module, args, kwargs):
        x = args[0] if args else next(iter(kwargs.values()), None)
        self._call_batch = x.shape[0] if isinstance(x, torch.Tensor) and x.dim() else None
        t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        if self.timesteps is None or t is None:
            self._step, self._row_steps = None, None
            return
        tt = torch.as_tensor(t).reshape(-1)
        steps = step_indices(self.timesteps, tt.tolist())  # Flux passes t / 1000: matched by value, not int()
        if any(s is None for s in steps):
            self._step, self._row_steps = None, None
            return
        same = len(set(steps)) == 1
        self._step = steps[0] if same else None
        self._row_steps = torch.tensor(steps[0]) if same else torch.tensor(steps)

    def slots(self, configs: list[tuple[str, int | None, int | None, set[int] | None]]):
        """Context: slot `s` of the batch (rows `[s·R, (s+1)·R)`, `R = batch / len(configs)`) runs with
        layer `configs[s][0]` at `(w_bits, a_bits)` (during the steps given, or always); every other
        layer and slot stays at the session's configuration.

        Rows of slots that have not diverged yet (no perturbed layer has run for them) are identical,
        so blocks and layers compute them once and copy them (`_partitioned`); every computed row sees
        the same batch shapes of row-wise ops as the one-at-a-time loop, so the numbers are the same."""
        return _Slots(self, configs)

    def new_batch(self) -> None:
        """Slot rows are identical again (a fresh denoiser input, not the next step of a trajectory)."""
        self._diverged = set()

    def _patch_containers(self) -> None:

        if self._containers:
            return
        for name, m in self.denoiser.named_modules():
            if re.search(CONTAINER_PATTERN, name):
                m._mpsearch_orig_forward = m.forward
                m.forward = functools.partial(_container_forward, self, name, m)
                self._containers[name] = m

    def _partitioned(self, fn, args: tuple, kwargs: dict, here: dict[int, tuple], cache_name: str | None = None):
        """Run row-wise `fn(cfg, *args, **kwargs)` on an S-slot batch: non-diverged slots once (base config,
        cfg None), diverged slots together, and each slot in `here` alone with its own cfg. With a prefix
        cache set by the profiler (`_cache`, `_cache_key`: the same full-precision input rows), the
        non-diverged rows of block `cache_name` are computed once per input and reused by later batches."""
        S = self._n_slots
        B = batch_size(args, kwargs)
        R = B // S
        div = self._diverged
        same = [s for s in range(S) if s not in div and s not in here]
        if not here and not same:
            return fn(None, *args, **kwargs)
        parts: list[tuple[list[int], tuple | None]] = []
        if same:
            parts.append(([same[0]], None))
        rest = sorted(div - set(here))
        if rest:
            parts.append((rest, None))
        parts += [([s], cfg) for s, cfg in sorted(here.items())]
        outs = []
        rs = self._row_steps
        for k, (slots, cfg) in enumerate(parts):
            key = (cache_name, self._cache_key)
            cached = k == 0 and same and cache_name and self._cache is not None and self._cache_key is not None
            if cached and key in self._cache:
                outs.append(self._cache[key])
                continue
            idx = torch.cat([torch.arange(s * R, (s + 1) * R) for s in slots])
            sub_a, sub_k = take_rows(args, idx, B), take_rows(kwargs, idx, B)
            self._row_steps = rs[idx] if rs is not None and rs.dim() else rs
            saved, self._in_sub = self._in_sub, True
            try:
                outs.append(fn(cfg, *sub_a, **sub_k))
            finally:
                self._row_steps, self._in_sub = rs, saved
            if cached and self._cache_bytes < self.cache_limit:
                self._cache[key] = outs[-1]
                self._cache_bytes += nbytes(outs[-1])
        self._diverged = div | set(here)
        return assemble(outs, parts, same, S, R)


def _as_pair(bits, partial: bool = False):
    miss = ... if partial else None
    if isinstance(bits, dict):
        return bits.get("w_bits", miss), bits.get("a_bits", miss)
    if hasattr(bits, "w_bits"):
        return bits.w_bits, bits.a_bits
    w, a = bits
    return w, a


def _container_forward(session: QuantSession, name: str, module: torch.nn.Module, *args, **kwargs):
    orig = module._mpsearch_orig_forward
    if session._n_slots == 1 or session._in_sub or session._inside.get(name, True) or session._fisher is not None:
        return orig(*args, **kwargs)
    return session._partitioned(lambda cfg, *a, **k: orig(*a, **k), args, kwargs, {}, cache_name=name)


class _Slots:
    def __init__(self, session: QuantSession, configs):
        self.session, self.configs = session, configs

    def __enter__(self):
        sess = self.session
        cfg: dict[str, list] = {}
        for s, (name, w, a, steps) in enumerate(self.configs):
            if name not in sess.layers:
                raise KeyError(f"unknown layer {name!r}")
            cfg.setdefault(name, []).append((s, w, a, steps))
        sess._slot_cfg, sess._n_slots, sess._diverged = cfg, len(self.configs), set()
        if len(self.configs) > 1:
            sess._patch_containers()
        sess._inside = {c: any(n.startswith(c + ".") for n in cfg) for c in sess._containers}
        return sess

    def __exit__(self, *exc):
        self.session._slot_cfg, self.session._n_slots, self.session._diverged = {}, 1, set()


def quantize_pipeline(
    pipe,
    candidates: Candidates = Candidates(),
    *,
    calib=None,
    bos_aware: bool = True,
    split_shortcut: bool = True,
    progressive: bool = False,
    weight_cfg: WeightQuantConfig = WeightQuantConfig(),
    act_cfg: ActQuantConfig = ActQuantConfig(),
    split_weights: bool = False,
) -> QuantSession:
    """Patch a pipeline's denoiser with switchable fake quantizers; everything starts full precision.

    `calib`: a `mpsearch.profiling.calibration.Reference` (from `mpsearch.profiling.calibration.reference(pipe, prompts)`)
    to calibrate activation ranges; without it only weights can be quantized. `bos_aware`: MixDQ's
    full-precision BOS token for cross-attention `to_k`/`to_v`. `split_shortcut`: Q-Diffusion's separate
    activation ranges for the two concatenated halves of up-block shortcut convs (`split_weights` also
    splits their weight scales; off by default so the packed export keeps one scale per channel).
    `progressive`: PCR's per-step activation ranges (needs `calib`).
    """
    session = QuantSession(
        pipe, candidates, weight_cfg=weight_cfg, act_cfg=act_cfg, bos_aware=bos_aware,
        split_shortcut=split_shortcut, split_weights=split_weights,
    )  # fmt: skip
    if calib is not None:
        session.calibrate(calib, progressive=progressive)
    elif progressive:
        raise ValueError("progressive calibration needs calib=")
    return session
