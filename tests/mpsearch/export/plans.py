"""Plans and sampling shared by the export tests."""

from __future__ import annotations

import random

import torch

from mpsearch.planning.plan import LayerBits, Plan


def mixed_plan(inv, fmt: str, seed: int = 0, widths=(2, 3, 4, 5, 6, 8, 16)) -> Plan:
    rng = random.Random(seed)
    plan = Plan({l.name: LayerBits(rng.choice(widths)) for l in inv.layers}, model=inv.model,
                fingerprint=inv.fingerprint, format=fmt)
    plan.predict(inv)
    return plan


def latents(pipe, prompts=("red circle", "blue square at the top"), steps=3):
    gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    with torch.inference_mode():
        return pipe(list(prompts), num_inference_steps=steps, guidance_scale=3.0, generator=gens,
                    output_type="latent").images.float()
