"""Synthetic profiles shared by the planning tests: rows for any inventory (the SD 1.5 meta one, mostly), and
a whole profile of the tiny pipeline with the sampling a fitness replays (`tiny_profile`)."""

import numpy as np
import pandas as pd

W_BITS, A_BITS = (2, 4, 8), (4, 8)
PROMPTS = ["a red circle at the top left", "a blue square in the center"]


def synthetic_profile(inv, seed=0, step_groups=1, act_bits=A_BITS):
    """Degradation falls ~4x per extra bit; heavy-tailed sensitivity across layers."""
    rng = np.random.default_rng(seed)
    rows = []
    for layer in inv.layers:
        s = rng.lognormal(0, 1.5)
        metric = "sqnr" if layer.group == "quality" else "ssim"
        for g in range(step_groups):
            for tensor, bits in (("weight", W_BITS), ("act", act_bits)):
                for b in bits:
                    d = s * 4.0 ** (-b) * (1 + g)
                    rows.append(dict(layer=layer.name, tensor=tensor, bits=b, metric=metric, step_group=g,
                                     value=-10 * np.log10(d) if metric == "sqnr" else 1 - d, degradation=d))
    return pd.DataFrame(rows)


def tiny_profile(inv, timesteps=(999, 499), step_groups=((0, 1),), act_bits=A_BITS, seed=0):
    """A profile of the tiny pipeline as `load_profile` reads it, (rows, inventory, meta): `synthetic_profile`
    rows for each of `step_groups` (indices into `timesteps`), candidates W_BITS and `act_bits` + 16, and the
    DDIM sampling of PROMPTS at `timesteps` (guidance 1) that a sampled fitness replays."""
    meta = {"model": "tiny", "candidates": {"weight": list(W_BITS), "act": [*act_bits, 16]},
            "step_groups": [list(g) for g in step_groups],
            "sampling": {"steps": len(timesteps), "guidance": 1.0, "timesteps": list(timesteps), "prompts": PROMPTS,
                         "seeds": [0, 1], "scheduler": "DDIMScheduler"}}  # fmt: skip
    return synthetic_profile(inv, seed, len(step_groups), act_bits), inv, meta
