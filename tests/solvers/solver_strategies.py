import numpy as np
from hypothesis import strategies as st

from solvers import Constraint, Problem


@st.composite
def small_problems(draw, max_items: int = 5, max_options: int = 3, ties: bool = True, lower: bool = True):
    """Random tiny problems with integer costs (so every backend, CP-SAT included, is exact)."""
    L = draw(st.integers(1, max_items))
    K = draw(st.integers(1, max_options))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    n_opt = rng.integers(1, K + 1, L) if draw(st.booleans()) else np.full(L, K)
    keys = [[(2, 4, 8)[k] for k in range(n)] for n in n_opt]
    costs = {"bytes": [rng.integers(0, 20, n).astype(float) for n in n_opt],
             "bitops": [rng.integers(0, 30, n).astype(float) for n in n_opt]}
    losses = {"sqnr": [rng.random(n) for n in n_opt], "ssim": [rng.random(n) * 3 for n in n_opt]}
    cons = [Constraint("bytes", upper=float(rng.integers(0, 20 * L + 1)), offset=float(rng.integers(0, 3)))]
    if draw(st.booleans()):
        items = sorted(rng.choice(L, size=rng.integers(1, L + 1), replace=False).tolist())
        cons.append(Constraint("bitops", upper=float(rng.integers(0, 30 * L)), items=items))
    if lower and draw(st.booleans()):
        cons.append(Constraint("bytes", upper=None, lower=float(rng.integers(0, 10 * L + 1)), name="floor"))
    tie_groups = []
    if ties and L > 1 and draw(st.booleans()):
        tie_groups = [sorted(rng.choice(L, size=2, replace=False).tolist())]
    fixed = {}
    if draw(st.booleans()):
        i = int(rng.integers(L))
        fixed = {i: keys[i][int(rng.integers(len(keys[i])))]}
    try:
        return Problem(keys=keys, costs=costs, losses=losses, weights={"ssim": 0.5}, constraints=cons,
                       ties=tie_groups, fixed=fixed)
    except ValueError:  # e.g. tied items with no common key, or fixed conflicting with a tie
        return Problem(keys=keys, costs=costs, losses=losses, constraints=cons)
