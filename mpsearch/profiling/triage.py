"""Image triage: which bit-widths a layer's image metrics are measured at, and the marked estimate stored
for the others.

An image measurement (sampling from the step group's first step, then a VAE decode) costs several output
measurements, and at a tensor's highest candidate width its degradation is tiny: on the demo a content
layer's SSIM degradation at W8 is ~1/7000 of its W2 value. A rule (registered by name, `image_widths=` /
`--image-widths`) says which widths it measures; every width it skips is stored as an **estimated** row
(`"estimated": true`, `"from_bits"`: the measured width it was scaled from, `value` null), never as a
measurement:

- `all`: every candidate width measured (what profiles before this option hold).
- `triage` (the default for new profiles): every width but the highest measured; the highest is
  estimated from the next one down by the uniform quantizer's noise-power law, `degradation(b) =
  degradation(r) · 4^-(b - r)` (a bit halves the step: a quarter of the noise power), when at least two
  widths are measured and `b - r ≤ 2` bits (else it is measured too).

Chosen on the demo (`benchmarks/image_triage.py`; `benchmarks/profile_default.py` measures it): against the full
measurement the estimates at W8 and A8 are within about 0.45-2.4x of the measured values (median ~1), a
fifth of the image evaluations is skipped, and the default plans at 2.5, 3, 3.5 and 4 mean bits are
identical; plans under BitOPs budgets are not (there W8/A8 options are the operating point, and those plans
move with 10% noise on the 8-bit values alone): profile with `image_widths="all"` for them. Skipping more
widths (all those an output-metric screen or the image metric itself rates below a floor) changed the
mean-bit plans too, and an output-metric screen of the content layers costs more output measurements than
the image measurements it saves at the one width that can be skipped safely (`--screen` times it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from solvers.registry import Registry

# rule(widths ascending) -> {skipped width: the measured width its estimate is scaled from}
RULES: Registry[Callable[[Sequence[int]], dict[int, int]]] = Registry(
    "image-widths rule", unknown="image_widths must be one of {names}, got {name!r}")
NOISE_PER_BIT = 4.0  # noise power ratio of one more bit of a uniform quantizer
MAX_GAP = 2  # bits an estimate may be scaled across


@RULES.register("all")
def measure_all(widths: Sequence[int]) -> dict[int, int]:
    """Every width measured."""
    return {}


@RULES.register("triage")
def skip_top(widths: Sequence[int]) -> dict[int, int]:
    """The highest width estimated from the next one down (see the module docstring)."""
    w = sorted(widths)
    if len(w) < 3 or w[-1] - w[-2] > MAX_GAP:
        return {}
    return {w[-1]: w[-2]}


def describe(rule: str) -> str | dict:
    """How meta.json records a rule: 'all', or the rule with its estimate."""
    RULES.lookup(rule)
    if rule == "all":
        return "all"
    return {"rule": rule, "estimate": f"degradation(from_bits) * {NOISE_PER_BIT:g}^-(bits - from_bits)",
            "measured": "image metrics of layers measured on them, every width but those estimated"}


def rule_of(meta: dict) -> str:
    """The rule a profile's meta.json records ('all' for profiles older than the option)."""
    setting = meta.get("image_widths", "all")
    return setting if isinstance(setting, str) else setting["rule"]


def estimate(degradation: float, from_bits: int, bits: int) -> float:
    """The estimated degradation at `bits` from the one measured at `from_bits` (noise-power law)."""
    return degradation * NOISE_PER_BIT ** -(bits - from_bits)


@dataclass(frozen=True)
class Estimate:
    """A row to estimate: `unit` (an image-stage `mpsearch.profiling.engine.Unit`) is not evaluated; its
    rows are scaled from those of `source`, the same layer, tensor and step group at `source.bits`."""

    unit: object
    source: object


def split(units: list, rule: str, widths_of: Callable[[str], Sequence[int]]) -> tuple[list, list[Estimate]]:
    """(units to evaluate, estimates) for `units` under `rule`; `widths_of(tensor)` lists a tensor's
    candidate widths. Only image-stage units are ever skipped, and only when their source is evaluated."""
    skip = {t: RULES.lookup(rule)(sorted(b for b in widths_of(t) if b < 16)) for t in ("weight", "act")}
    index = {(u.layer, u.tensor, u.bits, u.group, u.stage): u for u in units}
    keep, est = [], []
    for u in units:
        src = skip[u.tensor].get(u.bits) if u.stage == "image" else None
        source = index.get((u.layer, u.tensor, src, u.group, u.stage)) if src is not None else None
        if source is None:
            keep.append(u)
        else:
            est.append(Estimate(u, source))
    return keep, est


def estimated_rows(estimates: Sequence[Estimate], measured: dict[tuple, float]) -> list[dict]:
    """The marked rows of `estimates`, from `measured` ({(layer, tensor, bits, metric, step_group):
    degradation}); an estimate whose source row is missing is left out (never invented)."""
    rows = []
    for e in estimates:
        u, s = e.unit, e.source
        for m in u.metrics:
            deg = measured.get((s.layer, s.tensor, s.bits, m, s.group))
            if deg is None:
                continue
            rows.append({"layer": u.layer, "tensor": u.tensor, "bits": u.bits, "metric": m, "step_group": u.group,
                         "value": None, "degradation": estimate(deg, s.bits, u.bits), "estimated": True,
                         "from_bits": s.bits})  # fmt: skip
    return rows
