import numpy as np
from hypothesis import strategies as st

from solvers import Constraint, Problem
from solvers.all_or_nothing import all_or_nothing_rows


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


PAIRS = [(w, a) for w in (4, 8, 16) for a in (8, 16)]  # a full product, as `mpsearch.planning.problem` builds


def pruning_problem(seed: int, budget_frac: float | None = None, resource: str = "bytes") -> Problem:
    """6 layers: two prunable units (layers 0-2 and 3-4; the unit's score on its first layer, its other
    layers' "pruned" free, as `mpsearch.planning.problem` writes it) and a free layer; bytes and BitOPs costs."""
    rng = np.random.default_rng(seed)
    units = [[0, 1, 2], [3, 4]]
    in_unit = {i for u in units for i in u}
    L = 6
    params = rng.integers(50, 400, L).astype(float)
    macs = rng.integers(100, 2000, L).astype(float)
    keys = [[*PAIRS, "pruned"] if i in in_unit else list(PAIRS) for i in range(L)]
    sens = rng.lognormal(0, 1, (L, 2))
    loss = [[sens[i, 0] * 2.0 ** -w * (w < 16) + sens[i, 1] * 2.0 ** -a * (a < 16) for w, a in PAIRS]
            for i in range(L)]
    cost = {"bytes": [[params[i] * w / 8 for w, _ in PAIRS] for i in range(L)],
            "bitops": [[macs[i] * w * a for w, a in PAIRS] for i in range(L)]}
    for u in units:
        score = sens[u].sum() * rng.uniform(0.005, 0.1)
        for i in u:
            loss[i].append(score if i == u[0] else 0.0)
            for r in cost:
                cost[r][i].append(0.0)
    constraints = []
    for n, u in enumerate(units):
        rows, cons = all_or_nothing_rows(keys, f"pruned:u{n}", "pruned", u)
        cost |= rows
        constraints += cons
    top = sum(max(c) for c in cost[resource])
    frac = rng.uniform(0.05, 0.6) if budget_frac is None else budget_frac
    constraints.append(Constraint(resource, upper=frac * top, name="budget"))
    return Problem(keys=keys, costs=cost, losses={"m": loss}, constraints=constraints)
