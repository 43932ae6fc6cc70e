"""A synthetic profile of the SD 1.5 meta inventory, shared by the planning tests."""

import numpy as np
import pandas as pd

W_BITS, A_BITS = (2, 4, 8), (4, 8)


def synthetic_profile(inv, seed=0, step_groups=1):
    """Degradation falls ~4x per extra bit; heavy-tailed sensitivity across layers."""
    rng = np.random.default_rng(seed)
    rows = []
    for layer in inv.layers:
        s = rng.lognormal(0, 1.5)
        metric = "sqnr" if layer.group == "quality" else "ssim"
        for g in range(step_groups):
            for tensor, bits in (("weight", W_BITS), ("act", A_BITS)):
                for b in bits:
                    d = s * 4.0 ** (-b) * (1 + g)
                    rows.append(dict(layer=layer.name, tensor=tensor, bits=b, metric=metric, step_group=g,
                                     value=-10 * np.log10(d) if metric == "sqnr" else 1 - d, degradation=d))
    return pd.DataFrame(rows)
