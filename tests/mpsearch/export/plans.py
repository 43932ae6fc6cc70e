"""Plans and sampling shared by the export tests."""

from __future__ import annotations

import random

import torch

from mpsearch.planning.cost import get_format
from mpsearch.planning.plan import LayerBits, Plan


def mixed_plan(inv, fmt: str, seed: int = 0, widths=(2, 3, 4, 5, 6, 8, 16)) -> Plan:
    """Random widths per layer, among those the format stores for that layer."""
    rng = random.Random(seed)
    f = get_format(fmt)
    plan = Plan({l.name: LayerBits(rng.choice([b for b in widths if f.stores(l, b)])) for l in inv.layers},
                model=inv.model, fingerprint=inv.fingerprint, format=fmt)
    plan.predict(inv)
    return plan


def latents(pipe, prompts=("red circle", "blue square at the top"), steps=3, **kwargs):
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    with torch.inference_mode():
        return pipe(list(prompts), num_inference_steps=steps, guidance_scale=3.0, generator=gens,
                    output_type="latent", **kwargs).images.float()
