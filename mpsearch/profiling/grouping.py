"""Content vs quality measured rather than read from names (`profile(groups="measured")`).

MixDQ splits the layers into *content* layers, judged on image metrics (what the picture shows: SSIM, prompt
adherence), and *quality* layers, judged on output metrics (how clean the denoiser's prediction stays: SQNR,
MSE). Its rule is a name rule defined on SD UNets (`attn2`/`ff` = content); joint attention has no such
names, and each family's default (`mpsearch.pipelines`: the text stream for MMDiTs) is a rule, not a
measurement.

The measured assignment quantizes each layer alone at `MEASURED_BITS` weight bits and measures it twice,
in one profile pass of its own (`<out>/grouping/`, resumed like any profile): on the output metric `sqnr`
(one denoiser forward over the calibration rows) and on the image metric `ssim` (the prompts sampled with
that layer quantized at every step). The two metrics' degradations are not on one scale, so each is ranked
over the layers (percentile 0..1, ties averaged); a layer goes to the kind whose percentile is higher: the
metric it moves most, relative to the other layers. Where the two percentiles are within `MEASURED_MARGIN`
the measurement is not decisive (seed to seed it flips) and the family's rule stays: on the demo UNet,
three seeds agree on 78% of the layers at margin 0 and on 94% at 0.15 (`benchmarks/measured_groups.py`). The cost is one
output and one image measurement per layer, against a default profile's 6 weight and 3 activation widths
per layer and step group.
"""

from __future__ import annotations

import math
from typing import Any

MEASURED_BITS = 4
MEASURED_METRICS = ("sqnr", "ssim")  # (quality kind, content kind)
MEASURED_MARGIN = 0.15  # percentile gap below which the family's rule stays (benchmarks/measured_groups.py)
MEASURED_NOTE = (f"measured: each layer quantized alone at W{MEASURED_BITS}, its SQNR (output) and SSIM (image) "
                 f"losses ranked over the layers; content where the SSIM percentile is higher by more than "
                 f"{MEASURED_MARGIN}, quality where lower by more, else the family's rule")  # fmt: skip


def assign_groups(prof: Any, rule: dict[str, str], margin: float = MEASURED_MARGIN) -> dict[str, str]:
    """`{layer: "content" | "quality"}` for every layer of `rule` (the family's groups), from the measured
    pass `prof` (a `Profile` holding `MEASURED_METRICS` at `MEASURED_BITS` weight bits). A layer whose two
    percentiles differ by `margin` or less keeps the family's rule (undecided by the measurement).

    A layer with no measurement, or a non-finite one, is a `ValueError` naming it: never a guess."""
    quality, content = MEASURED_METRICS
    df = prof.df
    df = df[(df["tensor"] == "weight") & (df["bits"] == MEASURED_BITS) & df["metric"].isin(MEASURED_METRICS)]
    bad = df[~df["degradation"].apply(lambda d: math.isfinite(float(d)))]
    if len(bad):
        raise ValueError(f"measured groups: the {bad.iloc[0]['metric']} measurement at W{MEASURED_BITS} of layer "
                         f"{bad.iloc[0]['layer']!r} is {bad.iloc[0]['degradation']} ({len(bad)} non-finite)")  # fmt: skip
    loss = df.pivot_table(index="layer", columns="metric", values="degradation", aggfunc="sum")
    for metric in MEASURED_METRICS:
        have = loss[metric] if metric in loss else {}
        missing = [n for n in rule if n not in have or not math.isfinite(float(have[n]))]
        if missing:
            raise ValueError(f"measured groups: no {metric} measurement at W{MEASURED_BITS} for layer "
                             f"{missing[0]!r} ({len(missing)} layer(s) missing)")  # fmt: skip
    pct = loss.loc[list(rule)].rank(pct=True)
    out = {}
    for name, default in rule.items():
        q, c = float(pct.at[name, quality]), float(pct.at[name, content])
        out[name] = "content" if c - q > margin else "quality" if q - c > margin else default
    return out


def agreement(a: dict[str, str], b: dict[str, str]) -> float:
    """Share of the layers of `a` that `b` puts in the same group (0..1)."""
    return sum(b.get(n) == g for n, g in a.items()) / max(len(a), 1)
