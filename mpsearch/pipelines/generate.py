"""Seeded, batched image generation with any diffusers text-to-image pipeline, and image grids.

>>> images = generate(pipe, ["a red circle at the top left", "a blue square in the center"], steps=4)
>>> image_grid(images, rows=1, cols=2, labels=["red circle", "blue square"]).save("grid.png")
>>> images = generate(pipe, prompts, timesteps=[999, 749, 374, 124])  # a plan's kept timesteps
"""

from __future__ import annotations

import contextlib
import textwrap
from collections.abc import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont


def generate(
    pipe,
    prompts: Sequence[str],
    *,
    seed: int = 0,
    steps: int | None = None,
    guidance: float = 4.0,
    height: int | None = None,
    width: int | None = None,
    batch_size: int = 32,
    timesteps: Sequence[int | float] | None = None,
    pool: Sequence[int | float] | int | None = None,
) -> list[Image.Image]:
    """One image per prompt, as PIL images, in prompt order.

    `timesteps`: sample at exactly these timesteps (decreasing; `mpsearch.pipelines.timesteps` says which schedulers
    can) instead of `steps` evenly spaced ones; `pool`: the schedule they were kept from (flow-matching
    schedulers read their exact sigmas there). Neither given: a pipeline from `load_quantized` whose plan
    keeps timesteps samples at those (from the plan's pool), any other at 20 steps. `height`/`width`
    default to the family's native resolution (`PipelineAdapter.default_resolution`, what `profile` samples
    at); the family's call options apply (PixArt, Sana: no resolution binning).

    The i-th image's starting noise comes from its own generator seeded with `seed + i`, so a picture
    depends on the seed and its index only, not on `batch_size` or on the other prompts in its batch.
    """
    from mpsearch.pipelines.base import adapter_for
    from mpsearch.pipelines.capture import call_kwargs

    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    device = getattr(pipe, "device", torch.device("cpu"))
    gen_device = "cpu" if device.type == "mps" else device  # mps generators are not reproducible
    if hasattr(pipe, "set_progress_bar_config"):
        pipe.set_progress_bar_config(disable=True)
    plan = getattr(pipe, "mpsearch_plan", None)
    if timesteps is None and steps is None and plan is not None and plan.kept_timesteps:
        timesteps = plan.kept_timesteps
    if timesteps is not None and steps is not None:
        raise ValueError("pass steps or timesteps, not both")
    if pool is None and plan is not None and timesteps is not None and list(timesteps) == list(plan.kept_timesteps or []):
        pool = (plan.solver or {}).get("pool")
    if height is None and width is None and hasattr(pipe, "components"):
        from mpsearch.model import find_denoiser

        _, den = find_denoiser(pipe)
        height = width = adapter_for(pipe).default_resolution(den, pipe.vae_scale_factor, pipe)
    out: list[Image.Image] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        gens = [torch.Generator(gen_device).manual_seed(seed + start + j) for j in range(len(chunk))]
        kwargs = dict(prompt=chunk, guidance_scale=guidance, generator=gens, output_type="pil")
        if height is not None:
            kwargs["height"] = height
        if width is not None:
            kwargs["width"] = width
        with torch.inference_mode(), _schedule(pipe, steps, timesteps, pool, height) as sched:
            out.extend(pipe(**call_kwargs(pipe, {**kwargs, **sched})).images)
    return out


@contextlib.contextmanager
def _schedule(pipe, steps: int | None, timesteps: Sequence[int | float] | None, pool, resolution: int | None):
    if timesteps is None:
        yield {"num_inference_steps": steps or 20}
        return
    from mpsearch.pipelines.timesteps import sampling_at

    with sampling_at(pipe, timesteps, pool=pool, resolution=resolution) as kwargs:
        yield kwargs


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def image_grid(
    images: Sequence[Image.Image],
    rows: int,
    cols: int,
    labels: Sequence[str] | None = None,
    tile: int | None = None,
) -> Image.Image:
    """Paste `images` row by row into a rows x cols grid, each with an optional caption underneath.

    `tile` (pixels) resizes every image to tile x tile first (nearest neighbour, so small images stay
    crisp); otherwise tiles keep the first image's size.
    """
    if len(images) > rows * cols:
        raise ValueError(f"{len(images)} images do not fit a {rows}x{cols} grid")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images")
    w, h = (tile, tile) if tile else images[0].size
    font_size = max(9, min(14, w // 9))
    font = _font(font_size)
    wrap = max(8, int(w / (font_size * 0.55)))
    lines = [textwrap.wrap(lab, wrap) for lab in labels] if labels else []
    label_h = (max(len(ls) for ls in lines) * (font_size + 2) + 4) if lines else 0
    grid = Image.new("RGB", (cols * w, rows * (h + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        x, y = c * w, r * (h + label_h)
        img = img.convert("RGB")
        if img.size != (w, h):
            img = img.resize((w, h), Image.NEAREST)
        grid.paste(img, (x, y))
        for k, line in enumerate(lines[i] if lines else []):
            draw.text((x + 2, y + h + 2 + k * (font_size + 2)), line, fill="black", font=font)
    return grid
