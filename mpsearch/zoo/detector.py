"""Read shape, colour and position back from a demo-model image, and score prompt adherence.

Analytic, no learning: the brightest channel gives a soft mask of the object; colour is the mean of its
bright pixels matched to the palette; the shape is whichever of the renderer's own masks (circle, square,
triangle with the same area and centroid) fits the soft mask best; position is the fitted centre's
nearest anchor. Right on >99% of clean renders and robust to VAE reconstructions and sampling noise.

>>> detect(scenes.render("square", "cyan", "center"))
{'shape': 'square', 'color': 'cyan', 'position': 'center'}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mpsearch.zoo import scenes

ATTRIBUTES = ("shape", "color", "position")
_NOISE_FLOOR = 0.15  # brightness (0..1) below which a pixel counts as background
_MIN_PEAK = 0.25  # an image whose brightest pixel is dimmer than this holds no object
_PALETTE = {name: np.asarray(rgb, dtype=np.float64) / 255.0 for name, rgb in scenes.COLORS.items()}
# Area of each shape's mask per r^2, and how far its centroid sits below its drawing centre (units of r).
_AREA_PER_R2 = {
    "circle": np.pi,
    "square": (2 * scenes.SQUARE_HALF) ** 2,
    "triangle": 2 * scenes.TRIANGLE_HALF_BASE,
}
_CENTROID_DROP = {"circle": 0.0, "square": 0.0, "triangle": 1.0 / 3.0}


def _as_array(img) -> np.ndarray:
    """PIL image or HxWx3 array (uint8, or float in [0, 1]) -> float64 HxWx3 in [0, 1]."""
    a = np.asarray(img.convert("RGB") if hasattr(img, "convert") else img)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {a.shape}")
    a = a.astype(np.float64)
    return a / 255.0 if a.max() > 1.0 + 1e-6 or np.asarray(img).dtype == np.uint8 else a


def detect(img) -> dict[str, str | None]:
    """{'shape', 'color', 'position'} read from one image; values are None when no object is seen."""
    a = _as_array(img)
    if a.shape[:2] != (scenes.SIZE, scenes.SIZE):
        from PIL import Image

        a = np.asarray(Image.fromarray((a * 255).round().astype(np.uint8)).resize((scenes.SIZE,) * 2)) / 255.0
    bright = a.max(axis=2)
    peak = float(np.percentile(bright, 99.5))
    if peak < _MIN_PEAK:
        return dict.fromkeys(ATTRIBUTES)
    m = np.clip((bright - _NOISE_FLOOR) / (peak - _NOISE_FLOOR), 0.0, 1.0)

    core = m > 0.5
    rgb = a[core].mean(axis=0)
    rgb = rgb / max(rgb.max(), 1e-9)
    color = min(_PALETTE, key=lambda c: float(np.sum((_PALETTE[c] - rgb) ** 2)))

    area = float(m.sum())
    ys, xs = np.mgrid[0 : scenes.SIZE, 0 : scenes.SIZE] + 0.5
    cx, cy = float((m * xs).sum() / area), float((m * ys).sum() / area)
    best, best_err, best_centre = None, np.inf, (cx, cy)
    for shape in scenes.SHAPES:
        r = float(np.sqrt(area / _AREA_PER_R2[shape]))
        centre = (cx, cy - _CENTROID_DROP[shape] * r)
        err = float(np.abs(m - scenes.coverage(shape, *centre, r)).sum())
        if err < best_err:
            best, best_err, best_centre = shape, err, centre
    position = min(
        scenes.POSITIONS,
        key=lambda p: (
            (scenes.POSITIONS[p][0] - best_centre[0]) ** 2 + (scenes.POSITIONS[p][1] - best_centre[1]) ** 2
        ),
    )
    return {"shape": best, "color": color, "position": position}


def adherence(images: Sequence, prompts: Sequence[str]) -> tuple[float, dict[str, float]]:
    """(fraction of images with all attributes right, per-attribute accuracy) against their prompts."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    if not prompts:
        raise ValueError("no images to score")
    hits = {k: 0 for k in ATTRIBUTES}
    full = 0
    for img, prompt in zip(images, prompts, strict=True):
        want = scenes.parse_caption(prompt)._asdict()
        got = detect(img)
        ok = [got[k] == want[k] for k in ATTRIBUTES]
        for k, o in zip(ATTRIBUTES, ok, strict=True):
            hits[k] += o
        full += all(ok)
    n = len(prompts)
    return full / n, {k: v / n for k, v in hits.items()}
