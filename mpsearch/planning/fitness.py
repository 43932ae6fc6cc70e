"""The real fitness of a (per-layer bits, kept timesteps) candidate: sample with it, score the images.

TMPQ-DM ranks candidates by the FID of images sampled with the candidate's bits and timesteps from its
quantized super-network. Here the super-network is a `mpsearch.profiling.session.QuantSession`: quantizer parameters
of every candidate bit-width are computed once (weights cached per width, activation ranges calibrated on
the FP reference), so switching a candidate in is free. A candidate's images (the fitness prompts, fixed
seeds, sampled at its kept timesteps) are scored with an image metric of `mpsearch.profiling.metrics` (adherence
with the demo's detector, SSIM, or a user's plug-in) against the full-precision images of the model's
full schedule. Lower is better: the metric's degradation, plus `TIE_BREAK` × the pixel MSE to the FP
images, so that candidates a coarse metric cannot tell apart (adherence moves in steps of 1/prompts)
are ranked by how close they stay to the full-precision model.

>>> fit = Fitness.build(pipe, prompts, pool=[999, 874, 749, 624, 499, 374, 249, 124], metric="adherence",
...                     calib=reference)                                    # doctest: +SKIP
>>> fit({"conv_in": (8, 8), ...}, [999, 749, 499, 249])                     # doctest: +SKIP
0.03125
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mpsearch.profiling.metrics import Metric, get_metric, images_to_tensor
from mpsearch.profiling.quantizers import ActQuantConfig, WeightQuantConfig
from mpsearch.profiling.session import Candidates, QuantSession

TIE_BREAK = 1e-3  # pixel MSE lies in [0, 1]: below one prompt's worth of adherence for < 1000 prompts


@dataclass
class Fitness:
    """Callable `(bits, timesteps) -> degradation`; `bits` maps layer name → (w_bits, a_bits) (16 or None =
    full precision; unnamed layers stay full precision), `timesteps` are sampled in order.

    `reference`: the FP images of `prompts` at the full schedule `pool`. `log` keeps one record per call."""

    pipe: Any
    session: QuantSession
    metric: Metric
    prompts: list[str]
    pool: list[int | float]
    guidance: float
    seed: int = 0
    resolution: int | None = None
    reference: torch.Tensor | None = None
    log: list[dict] = field(default_factory=list)

    @classmethod
    def build(cls, pipe: Any, prompts: Sequence[str], *, pool: Sequence[int], metric: str, guidance: float,
              seed: int = 0, resolution: int | None = None, calib: Any = None, candidates: Candidates | None = None,
              weight_cfg: WeightQuantConfig | None = None, act_cfg: ActQuantConfig | None = None,
              bos_aware: bool = True, split_shortcut: bool = True, progressive: bool = False) -> Fitness:  # fmt: skip
        """Patch `pipe` with a calibrated `QuantSession` (`calib`: a `mpsearch.profiling.calibration.Reference`, needed
        for activation candidates below 16 bits) and sample the FP reference images at `pool`.
        Call `close()` to restore the pipeline."""
        m = get_metric(metric)
        candidates = candidates or Candidates()
        if m.stage != "image":
            raise ValueError(f"the fitness scores sampled images: metric {metric!r} reads {m.stage!r}, "
                             "not 'image' (use e.g. adherence, ssim or an image plug-in)")
        session = QuantSession(pipe, candidates, weight_cfg=weight_cfg or WeightQuantConfig(),
                               act_cfg=act_cfg or ActQuantConfig(), bos_aware=bos_aware,
                               split_shortcut=split_shortcut)  # fmt: skip
        if calib is not None:
            session.calibrate(calib, progressive=progressive)
        elif candidates.of("act"):
            session.remove()
            raise ValueError("activation candidates need calibrated ranges: pass calib= "
                             "(mpsearch.profiling.calibration.reference(pipe, prompts))")
        fit = cls(pipe, session, m, list(prompts), list(pool), float(guidance), seed, resolution)
        fit.reference = fit.images(None, fit.pool)
        return fit

    def images(self, bits: Mapping[str, Any] | None, timesteps: Sequence[int]) -> torch.Tensor:
        """The fitness prompts sampled with `bits` applied at `timesteps`, `[N, 3, H, W]` in [0, 1]."""
        from mpsearch.pipelines.generate import generate

        self.session.apply(dict(bits or {}))
        try:
            pics = generate(self.pipe, self.prompts, seed=self.seed, guidance=self.guidance, height=self.resolution,
                            width=self.resolution, timesteps=list(timesteps), pool=self.pool)  # fmt: skip
        finally:
            self.session.reset()
        return images_to_tensor(pics)

    def score(self, bits: Mapping[str, Any] | None, timesteps: Sequence[int]) -> dict[str, Any]:
        """One candidate's record: timesteps, the metric's value (as people quote it, e.g. adherence) and
        degradation, pixel MSE to the FP images and the fitness (lower is better); also appended to `log`."""
        images = self.images(bits, timesteps)
        value, deg = self.metric(self.reference, images, prompts=self.prompts)
        mse = float((images - self.reference).pow(2).mean())
        rec = {"timesteps": list(timesteps), "value": value, "degradation": deg, "pixel_mse": mse,
               "fitness": deg + TIE_BREAK * mse}  # fmt: skip
        self.log.append(rec)
        return rec

    def __call__(self, bits: Mapping[str, Any] | None, timesteps: Sequence[int]) -> float:
        return self.score(bits, timesteps)["fitness"]

    def close(self) -> None:
        """Restore the pipeline's original forwards."""
        self.session.remove()
