"""Metrics: a registry of named degradation measures, each of kind `quality` or `content`.

A metric reads one stage of the pipeline: `output` (denoiser outputs on the calibration inputs, a
float32 tensor `[rows, C, h, w]`; for models that also predict their variance, as PixArt, the noise half
that the sampler uses) or `image` (decoded images, float32 `[N, 3, H, W]` in [0, 1]). It
returns a *degradation* ≥ 0, lower is better, 0 for an identical candidate; or `(value, degradation)`
when the raw number people quote differs (SQNR in dB, SSIM). Optional keyword arguments the profiler
fills in when the function names them: `prompts` (list[str]).

A metric registered with `batched=True` scores several candidates in one call: it receives them stacked,
`[S, N, ...]` (S candidates against one reference), and returns a list of S results. The profiler then
scores a slot batch's images in one call on their device (SSIM as a few pooled convolutions for all
slots at once) instead of one call per slot; `Metric(reference, candidate)` still scores one.

    @register_metric("lpips", kind="content", stage="image", version="1")
    def lpips(reference, candidate):
        ...  # return a float ≥ 0

Built in:

| name | kind | stage | value | degradation |
|---|---|---|---|---|
| `sqnr` | quality | output | SQNR in dB, `10·log10(Σy² / Σ(ŷ−y)²)` | relative noise power `10^(−SQNR/10)` |
| `mse` | quality | output | mean squared error | the same |
| `ssim` | content | image | mean SSIM (7×7 uniform window, data range 1, skimage's definition, computed in torch on the images' device) | `1 − SSIM` |
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
    batched: bool = False

    def __call__(self, reference, candidate, **context) -> tuple[float, float]:
        """`(value, degradation)`; the degradation is checked to be a finite number ≥ 0."""
        if self.batched:
            return self.many(reference, candidate[None], **context)[0]
        return self._checked(self.fn(reference, candidate, **self._context(context)))

    def many(self, reference, candidates, **context) -> list[tuple[float, float]]:
        """`(value, degradation)` of each of `candidates` (stacked `[S, ...]`, or a list) against one
        reference: one call for a `batched` metric, one per candidate otherwise."""
        if not self.batched:
            return [self(reference, c, **context) for c in candidates]
        if not isinstance(candidates, torch.Tensor):
            candidates = torch.stack(list(candidates))
        outs = self.fn(reference, candidates, **self._context(context))
        if len(outs) != len(candidates):
            raise ValueError(f"metric {self.name!r} returned {len(outs)} results for {len(candidates)} candidates")
        return [self._checked(o) for o in outs]

    def _context(self, context: dict) -> dict:
        params = inspect.signature(self.fn).parameters
        return {k: v for k, v in context.items() if k in params}

    def _checked(self, out) -> tuple[float, float]:
        value, degradation = (out if isinstance(out, tuple) else (out, out))
        value, degradation = float(value), float(degradation)
        if not (degradation >= 0 and math.isfinite(degradation)):
            raise ValueError(f"metric {self.name!r} returned degradation {degradation}; must be finite and ≥ 0")
        return value, degradation

    def describe(self) -> dict:
        return {"kind": self.kind, "stage": self.stage, "version": self.version}


METRICS: Registry[Metric] = Registry("metric", error=KeyError, unknown="unknown metric {name!r}; registered: {names}")


def register_metric(name: str, *, kind: str, stage: str, version: str = "1", replace: bool = False,
                    batched: bool = False):  # fmt: skip
    """Decorator: register `fn(reference, candidate[, prompts=...]) -> degradation | (value, degradation)`;
    with `batched=True`, `fn(reference, candidates [S, ...]) -> [S results]` (see the module's docstring)."""
    if kind not in KINDS:
        raise ValueError(f"metric {name!r}: kind must be one of {KINDS}, got {kind!r}")
    if stage not in STAGES:
        raise ValueError(f"metric {name!r}: stage must be one of {STAGES}, got {stage!r}")

    def deco(fn: Callable) -> Callable:
        old = METRICS.get(name)
        same = old is not None and old.fn is fn  # re-importing a plug-in is not a conflict
        METRICS.add(name, Metric(name, kind, stage, fn, str(version), (fn.__doc__ or "").strip(), batched),
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


def ssim_window(height: int, width: int) -> int:
    """SSIM's window side in pixels: 7, shrunk to the image's smaller side (made odd) for small images."""
    win = min(7, height, width)
    return win - (1 - win % 2)


def ssim_values(reference: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of each candidate against the reference: `reference` `[N, C, H, W]`, `candidates`
    `[..., N, C, H, W]` in [0, 1] → `[...]`, float64, on the candidates' device.

    skimage's `structural_similarity(a, b, channel_axis=2, data_range=1, win_size=ssim_window(H, W))`
    averaged over the N images, computed as pooled convolutions: uniform window, K1 = 0.01, K2 = 0.03,
    sample covariance (`w²/(w²−1)`), and the mean over the pixels whose window lies inside the image
    (skimage crops `(w−1)/2` pixels from each border, so its reflect padding never enters the mean)."""
    dev = candidates.device
    dtype = torch.float64 if dev.type != "mps" else torch.float32
    lead = candidates.shape[:-4]
    N, C, H, W = reference.shape
    y = candidates.reshape(-1, N * C, H, W).to(dtype)
    x = reference.to(dev, dtype).reshape(1, N * C, H, W).expand_as(y)
    win = ssim_window(H, W)
    pool = lambda t: torch.nn.functional.avg_pool2d(t, win, stride=1)  # noqa: E731
    ux, uy = pool(x), pool(y)
    cov = win * win / (win * win - 1.0)
    vx, vy = cov * (pool(x * x) - ux * ux), cov * (pool(y * y) - uy * uy)
    vxy = cov * (pool(x * y) - ux * uy)
    c1, c2 = 0.01**2, 0.03**2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3)).reshape(lead)


@register_metric("ssim", kind="content", stage="image", batched=True)
def ssim(reference: torch.Tensor, candidates: torch.Tensor):
    """MixDQ's content metric: SSIM of decoded images against the FP images, averaged over images."""
    values = ssim_values(reference, candidates).cpu().tolist()
    return [(v, max(0.0, 1.0 - v)) for v in values]


def _adherence(images: torch.Tensor, prompts: list[str]) -> float:
    from mpsearch.zoo.detector import adherence as score

    arrays = (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return score(list(arrays), prompts)[0]


@register_metric("adherence", kind="content", stage="image", version="2", batched=True)
def adherence(reference: torch.Tensor, candidates: torch.Tensor, prompts: list[str]):
    """Prompt adherence read by the demo model's detector: value = fraction of images with shape, colour
    and position all right; degradation = the fraction lost against the full-precision images
    (`max(0, FP − candidate)`), so an unquantized layer costs 0 like every other metric. Demo captions only.
    The detector reads 32-pixel images on the CPU (`mpsearch.zoo.detector`); the FP images are read once
    per call, whatever the number of candidates."""
    fp = _adherence(reference, prompts)
    values = [_adherence(c, prompts) for c in candidates]
    return [(v, max(0.0, fp - v)) for v in values]
