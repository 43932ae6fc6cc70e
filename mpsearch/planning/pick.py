"""Choosing among candidate plans by their images, as MixDQ's final pick does.

MixDQ (`mixed_precision_scripts/quant_inference_mp.py`) renders one image per plan of its sweep (one prompt,
a fixed seed) and keeps the plan whose image is closest to the full-precision image by pixel MSE. Theirs is
taken on uint8 arrays read with OpenCV, where `img1 - img2` wraps around modulo 256 (a pixel one level darker
counts as 255² instead of 1); here it is the mean squared difference of float images in [0, 1], which ranks
the plans as intended.

A solver that declares `image_pick` (`solvers.registry.SolverSpec`) takes the `ImagePick` as its `pick=`
callback; the planner builds it when it is given a model.

>>> pick = image_pick(pipe, meta)                         # doctest: +SKIP
>>> pick(solution)                                        # pixel MSE of the plan's image vs FP
0.0123
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mpsearch.planning.fitness import Fitness
from mpsearch.planning.steps import profile_fitness, profile_timesteps, sampling_pipeline
from solvers.problem import Solution

__all__ = ["ImagePick", "image_pick"]

METRIC = "ssim"  # the fitness also computes an image metric; the pick reads only its pixel MSE


@dataclass
class ImagePick:
    """Callable `Solution -> pixel MSE` of the plan's images against the FP images (lower is better), the
    plan's layers in `names` order. `fit.log` keeps one record per rendered plan."""

    fit: Fitness
    names: list[str]
    timesteps: list[int]

    def __call__(self, solution: Solution) -> float:
        bits = dict(zip(self.names, solution.keys, strict=True))
        return float(self.fit.score(bits, self.timesteps)["pixel_mse"])

    @property
    def renders(self) -> int:
        """Plans rendered so far."""
        return len(self.fit.log)

    def close(self) -> None:
        """Restore the pipeline's original forwards."""
        self.fit.close()


def image_pick(model: Any, meta: dict[str, Any], names: Sequence[str], *, prompts: Sequence[str] | int | None = None,
               seed: int = 0, fmt: str | None = None) -> ImagePick:  # fmt: skip
    """An `ImagePick` on `model` (a pipeline, or what `load_pipeline` reads; None: the profile's model), set
    up like the profile (candidates, quantizers, calibration), sampling its full schedule.

    `prompts`: default MixDQ's one image per plan, from the profile's first calibration prompt; an int
    draws that many demo captions. `names`: the inventory's layer names, in the problem's order."""
    sampling = meta.get("sampling") or {}
    if prompts is None:
        if not sampling.get("prompts"):
            raise ValueError("the profile records no calibration prompts to render the candidate plans with: "
                             "pass fitness_prompts=[...]")
        prompts = list(sampling["prompts"][:1])
    pipe = sampling_pipeline(model, meta)
    timesteps = profile_timesteps(pipe, meta)
    fit = profile_fitness(pipe, meta, timesteps, METRIC, prompts, seed, fmt)
    return ImagePick(fit, list(names), timesteps)
