"""Metrics: a registry of named degradation measures, each of kind `quality` or `content`.

A metric reads one stage of the pipeline: `output` (denoiser outputs on the calibration inputs, a
float32 tensor `[rows, C, h, w]`; for models that also predict their variance, as PixArt, the noise half
that the sampler uses) or `image` (decoded images, float32 `[N, 3, H, W]` in [0, 1]). It
returns a *degradation* ≥ 0, lower is better, 0 for an identical candidate; or `(value, degradation)`
when the raw number people quote differs (SQNR in dB, SSIM). Optional keyword arguments the profiler
fills in when the function names them: `prompts` (list[str]).

    @register_metric("lpips", kind="content", stage="image", version="1")
    def lpips(reference, candidate):
        ...  # return a float ≥ 0

Built in:

| name | kind | stage | value | degradation |
|---|---|---|---|---|
| `sqnr` | quality | output | SQNR in dB, `10·log10(Σy² / Σ(ŷ−y)²)` | relative noise power `10^(−SQNR/10)` |
| `mse` | quality | output | mean squared error | the same |
| `ssim` | content | image | mean SSIM (7×7 window, data range 1) | `1 − SSIM` |
| `adherence` | content | image | fraction of images whose shape, colour and position the demo detector reads right | fraction lost vs the FP images, `max(0, FP − value)` |
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from solvers.registry import Registry


def images_to_tensor(images: list) -> torch.Tensor:
    """PIL images → float32 `[N, 3, H, W]` in [0, 1], the layout image metrics read."""
    return torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
                        for im in images])  # fmt: skip

KINDS = ("quality", "content")
STAGES = ("output", "image")


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str
    stage: str
    fn: Callable
    version: str = "1"
    doc: str = ""

    def __call__(self, reference, candidate, **context) -> tuple[float, float]:
        """`(value, degradation)`; the degradation is checked to be a finite number ≥ 0."""
        params = inspect.signature(self.fn).parameters
        kw = {k: v for k, v in context.items() if k in params}
        out = self.fn(reference, candidate, **kw)
        value, degradation = (out if isinstance(out, tuple) else (out, out))
        value, degradation = float(value), float(degradation)
        if not (degradation >= 0 and math.isfinite(degradation)):
            raise ValueError(f"metric {self.name!r} returned degradation {degradation}; must be finite and ≥ 0")
        return value, degradation

    def describe(self) -> dict:
        return {"kind": self.kind, "stage": self.stage, "version": self.version}


METRICS: Registry[Metric] = Registry("metric", error=KeyError, unknown="unknown metric {name!r}; registered: {names}")


def register_metric(name: str, *, kind: str, stage: str, version: str = "1", replace: bool = False):
    """Decorator: register `fn(reference, candidate[, prompts=...]) -> degradation | (value, degradation)`."""
    if kind not in KINDS:
        raise ValueError(f"metric {name!r}: kind must be one of {KINDS}, got {kind!r}")
    if stage not in STAGES:
        raise ValueError(f"metric {name!r}: stage must be one of {STAGES}, got {stage!r}")

    def deco(fn: Callable) -> Callable:
        old = METRICS.get(name)
        same = old is not None and old.fn is fn  # re-importing a plug-in is not a conflict
        METRICS.add(name, Metric(name, kind, stage, fn, str(version), (fn.__doc__ or "").strip()),
                    replace=replace or same)
        return fn

    return deco


def get_metric(name: str) -> Metric:
    return METRICS.lookup(name)


def load_plugin(path_or_module: str) -> None:
    """Import a Python file or module whose import registers metrics (the CLI's `--plugin`)."""
    import importlib
    import importlib.util
    from pathlib import Path

    p = Path(path_or_module)
    if p.suffix == ".py" and p.is_file():
        spec = importlib.util.spec_from_file_location(f"mpsearch_plugin_{p.stem}", p)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        importlib.import_module(path_or_module)


# ---- built-ins


@register_metric("sqnr", kind="quality", stage="output")
def sqnr(reference: torch.Tensor, candidate: torch.Tensor):
    """MixDQ's quality metric: signal-to-quantization-noise ratio of the denoiser output, in dB."""
    noise = (candidate.double() - reference.double()).pow(2).sum().item()
    signal = reference.double().pow(2).sum().item()
    if noise == 0:
        return math.inf, 0.0
    ratio = noise / max(signal, 1e-300)
    return -10 * math.log10(ratio), ratio


@register_metric("mse", kind="quality", stage="output")
def mse(reference: torch.Tensor, candidate: torch.Tensor):
    """Mean squared error of the denoiser output."""
    return (candidate.double() - reference.double()).pow(2).mean().item()


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    win = min(7, a.shape[0], a.shape[1])
    win -= 1 - win % 2
    return float(structural_similarity(a, b, channel_axis=2, data_range=1.0, win_size=win))


@register_metric("ssim", kind="content", stage="image")
def ssim(reference: torch.Tensor, candidate: torch.Tensor):
    """MixDQ's content metric: SSIM of decoded images against the FP images, averaged over images."""
    ref = reference.permute(0, 2, 3, 1).double().cpu().numpy()
    cand = candidate.permute(0, 2, 3, 1).double().cpu().numpy()
    value = float(np.mean([_ssim(r, c) for r, c in zip(ref, cand, strict=True)]))
    return value, max(0.0, 1.0 - value)


def _adherence(images: torch.Tensor, prompts: list[str]) -> float:
    from mpsearch.zoo.detector import adherence as score

    arrays = [(im.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8) for im in images]
    return score(arrays, prompts)[0]


@register_metric("adherence", kind="content", stage="image", version="2")
def adherence(reference: torch.Tensor, candidate: torch.Tensor, prompts: list[str]):
    """Prompt adherence read by the demo model's detector: value = fraction of images with shape, colour
    and position all right; degradation = the fraction lost against the full-precision images
    (`max(0, FP − candidate)`), so an unquantized layer costs 0 like every other metric. Demo captions only."""
    value = _adherence(candidate, prompts)
    return value, max(0.0, _adherence(reference, prompts) - value)
