"""Procedural scenes for the demo model: one coloured shape on black, with a caption.

32x32 RGB images; 3 shapes x 6 colours x 5 positions = 90 combinations, of which 14 are held out of
training (every single attribute is still seen in training), so adherence on held-out prompts measures
composition rather than memory.

>>> rng = np.random.default_rng(0)
>>> img = render("circle", "red", "top left", rng)   # (32, 32, 3) uint8
>>> caption("circle", "red", "top left")
'a red circle at the top left'
"""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np

SIZE = 32
SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
}
POSITIONS = {  # centre of the shape, in pixels (x, y)
    "top left": (8.0, 8.0),
    "top right": (24.0, 8.0),
    "bottom left": (8.0, 24.0),
    "bottom right": (24.0, 24.0),
    "center": (16.0, 16.0),
}
RADIUS_PX = 5.5  # half-size of a shape before jitter
JITTER_PX = 2.0
SQUARE_HALF = 0.9  # square half-side, in units of r
TRIANGLE_HALF_BASE = 1.1  # triangle half-base, in units of r (height is 2r)
N_HELDOUT = 14
_HELDOUT_SEED = 1234


class Scene(NamedTuple):
    shape: str
    color: str
    position: str


def all_combinations() -> list[Scene]:
    """The 90 (shape, colour, position) combinations in a fixed order."""
    return [Scene(s, c, p) for s in SHAPES for c in COLORS for p in POSITIONS]


def heldout_combinations() -> list[Scene]:
    """14 combinations never drawn in training, chosen deterministically.

    Picked by a fixed-seed shuffle, keeping a combination only when each of its pairs
    (shape-colour, shape-position, colour-position) is still seen in training.
    """
    combos = all_combinations()
    order = np.random.default_rng(_HELDOUT_SEED).permutation(len(combos))
    held: list[Scene] = []
    for i in order:
        cand = combos[i]
        rest = [c for c in combos if c not in held and c != cand]
        pairs_ok = (
            any(c.shape == cand.shape and c.color == cand.color for c in rest)
            and any(c.shape == cand.shape and c.position == cand.position for c in rest)
            and any(c.color == cand.color and c.position == cand.position for c in rest)
        )
        if pairs_ok:
            held.append(cand)
        if len(held) == N_HELDOUT:
            break
    return sorted(held, key=combos.index)


def train_combinations() -> list[Scene]:
    """The 76 combinations used for training."""
    held = set(heldout_combinations())
    return [c for c in all_combinations() if c not in held]


def caption(shape: str, color: str, position: str) -> str:
    """'a red circle at the top left' (or '... in the center')."""
    where = "in the center" if position == "center" else f"at the {position}"
    return f"a {color} {shape} {where}"


_CAPTION_RE = re.compile(
    r"^a (?P<color>\w+) (?P<shape>\w+) (?:at the (?P<pos>top left|top right|bottom left|bottom right)|in the center)$"
)


def parse_caption(text: str) -> Scene:
    """Inverse of `caption`; raises ValueError on text it does not understand."""
    m = _CAPTION_RE.match(text.strip().lower())
    if not m or m["color"] not in COLORS or m["shape"] not in SHAPES:
        raise ValueError(f"not a scene caption: {text!r}")
    return Scene(m["shape"], m["color"], m["pos"] or "center")


def coverage(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
    """Anti-aliased (32, 32) mask in [0, 1] of `shape` centred at (cx, cy) px with half-size `r` px.

    4x4 supersampling gives soft edges, as a VAE would see in real images. The detector fits these same
    masks to read shapes back.
    """
    ss = 4
    g = (np.arange(SIZE * ss) + 0.5) / ss
    x, y = np.meshgrid(g, g)
    dx, dy = x - cx, y - cy
    if shape == "circle":
        mask = dx**2 + dy**2 <= r**2
    elif shape == "square":
        h = r * SQUARE_HALF
        mask = (np.abs(dx) <= h) & (np.abs(dy) <= h)
    elif shape == "triangle":  # upward-pointing isosceles, as tall as the circle's diameter
        frac = (dy + r) / (2 * r)  # 0 at the apex, 1 at the base
        mask = (frac >= 0) & (frac <= 1) & (np.abs(dx) <= frac * r * TRIANGLE_HALF_BASE)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask.reshape(SIZE, ss, SIZE, ss).mean(axis=(1, 3))


def render(shape: str, color: str, position: str, rng: np.random.Generator | None = None) -> np.ndarray:
    """Draw one shape on black: (32, 32, 3) uint8. `rng` jitters position (±2 px) and size (±15%)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    cx, cy = POSITIONS[position]
    cx += rng.uniform(-JITTER_PX, JITTER_PX)
    cy += rng.uniform(-JITTER_PX, JITTER_PX)
    r = RADIUS_PX * rng.uniform(0.85, 1.15)
    cover = coverage(shape, cx, cy, r)
    rgb = np.asarray(COLORS[color], dtype=np.float64)
    return np.clip(np.round(cover[..., None] * rgb), 0, 255).astype(np.uint8)


def sample_prompts(split: str, n: int, seed: int = 0) -> list[str]:
    """`n` captions from `split` ('train' | 'heldout' | 'all'), cycling through the combinations in a
    seeded order so every combination appears before any repeats."""
    pools = {"train": train_combinations, "heldout": heldout_combinations, "all": all_combinations}
    if split not in pools:
        raise ValueError(f"split must be one of {sorted(pools)}, got {split!r}")
    combos = pools[split]()
    rng = np.random.default_rng(seed)
    out: list[str] = []
    while len(out) < n:
        out.extend(caption(*combos[i]) for i in rng.permutation(len(combos)))
    return out[:n]
