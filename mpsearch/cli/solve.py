"""`mpsearch solve`: the per-layer bits (and kept steps) under a budget, from a profile; writes a plan and,
with --pareto, the loss-budget front."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mpsearch.cli.common import ModelOpt, console, err, fail, human_bytes, quiet, regex, writable_file


def print_plan_summary(plan, inv, budget=None) -> None:
    """Bits histogram per group, predicted bytes vs budget, loss, solver status and time."""
    from collections import Counter

    from mpsearch.planning.cost import FLOAT_BITS, fp16_bytes

    table = Table(title="bits per group (layers; share of group weights)")
    table.add_column("group")
    wbits = sorted({b.w_bits for b in plan.layers.values()})
    abits = sorted({b.a_bits for b in plan.layers.values()})
    for b in wbits:
        table.add_column(f"W{b}", justify="right")
    for b in abits:
        table.add_column(f"A{b}", justify="right")
    for group in sorted({l.group for l in inv.layers}):
        layers = [l for l in inv.layers if l.group == group]
        total = sum(l.params for l in layers)
        w = Counter()
        for l in layers:
            w[plan.layers[l.name].w_bits] += l.params
        wc = Counter(plan.layers[l.name].w_bits for l in layers)
        ac = Counter(plan.layers[l.name].a_bits for l in layers)
        table.add_row(group, *[f"{wc[b]} ({w[b] / total:.0%})" for b in wbits], *[str(ac[b]) for b in abits])
    console.print(table)
    p = plan.predicted
    line = f"predicted: [bold]{human_bytes(p['bytes'])}[/] ({p['bytes']:,} bytes, {p['bytes'] / fp16_bytes(inv):.1%} of fp16)"
    if budget is not None and budget.resource == "bytes":
        line += f" ≤ budget {human_bytes(budget.resolve(inv, plan.format))}"
    line += f"   mean weight bits {p['mean_w_bits']:.3f}   BitOPs {p['bitops']:.3e}"
    console.print(line)
    if plan.kept_timesteps:
        fit = plan.solver.get("fitness")
        console.print(f"kept timesteps ({len(plan.kept_timesteps)} of {len(plan.solver.get('pool') or []) or '?'}): "
                      f"[bold]{plan.kept_timesteps}[/]   BitOPs per image {p['bitops_run']:.3e}"
                      + (f"   fitness {fit['metric']} {fit['value']:.4g} on {fit['prompts']} prompts" if fit else ""))
    if budget is not None and all(b.w_bits == b.a_bits == FLOAT_BITS for b in plan.layers.values()):
        full = "W16A16 BitOPs" if budget.resource == "bitops" else f"fp16 size ({fp16_bytes(inv):,} bytes)"
        console.print(f"note: budget {budget} is at or above the {full}: every layer stays at 16 bits, nothing "
                      "is quantized")
    if plan.pruned_units:
        console.print(f"pruned units ({len(plan.pruned_units)}; their layers show as W0/A0): {', '.join(plan.pruned_units)}")
    s = plan.solver
    gap = f", gap {s['gap']:.2g}" if s.get("gap") else ""
    name, backend = s.get("name", "?"), s.get("backend") or "-"
    label = backend if backend.startswith(name) else f"{name}/{backend}"
    console.print(f"loss {p.get('loss', float('nan')):.5g}   solver {label}: "
                  f"{s.get('status', '?')}{gap} in {s.get('time_s', 0):.3f}s")


def solve(
    budget: Annotated[str, typer.Option("--budget", "-b", help="4GB, 4GiB, 500MB, 4.5bits, 30%, 2Tbitops, 25%bitops.")],
    profile: Annotated[Path, typer.Option("--profile", "-p", help="Profile folder from `mpsearch profile` (default: "
                                          "./profiles/demo if there is one, else the bundled demo profile).")] = Path("profiles/demo"),
    solver: Annotated[str, typer.Option(help="ilp | mixdq | evolution")] = "ilp",
    backend: Annotated[str | None, typer.Option(help="ILP backend: cbc | cpsat | scip (default: cbc; scip for MixDQ mode)")] = None,
    fmt: Annotated[str, typer.Option("--format", help="Weight storage format: packed | quanto | sdnq | gguf")] = "packed",
    protect: Annotated[list[str] | None, typer.Option(help="REGEX of layers kept at 16 bits (repeatable).")] = None,
    protect_top: Annotated[float, typer.Option(help="Fraction of most sensitive layers kept at 16 bits (MixDQ: 0.01).")] = 0.0,
    weight_only: Annotated[bool, typer.Option(help="Quantize weights only (activations stay 16-bit).")] = False,
    w_bits: Annotated[str | None, typer.Option(help="Weight candidates, e.g. 2,4,8 (default: the profile's).")] = None,
    a_bits: Annotated[str | None, typer.Option(help="Activation candidates, e.g. 8,16 (default: the profile's).")] = None,
    pareto: Annotated[str | None, typer.Option(help="LO:HI:N — also write the front over N budgets (CSV + plot; "
                                               "N from 2 to 1000).")] = None,
    time_limit: Annotated[float | None, typer.Option(help="Solver time limit in seconds.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the evolutionary search.")] = 0,
    prune: Annotated[bool, typer.Option("--prune", help="Also consider removing whole blocks (LAPTOP-Diff; "
                                        "needs block scores: `mpsearch profile --prune`). Recover a pruned "
                                        "plan with `mpsearch distill`.")] = False,
    assume_missing: Annotated[str, typer.Option(help="none: offer each layer only the options the profile "
                                                "measured (a width nobody measured is refused) | zero: count "
                                                "unmeasured options as lossless.")] = "none",
    out: Annotated[Path, typer.Option("--out", "-o", help="Plan JSON to write.")] = Path("plan.json"),
    steps: Annotated[int | None, typer.Option(min=1, help="Keep this many of the model's denoising steps (evolution: "
                                              "which ones is searched; other solvers keep evenly spaced ones). "
                                              "BitOPs budgets then count kept steps.")] = None,
    pool: Annotated[int | None, typer.Option(min=1, help="Choose kept steps from the scheduler's POOL-step schedule "
                                             "(default: the profile's).")] = None,
    step_groups: Annotated[str, typer.Option(help="uniform | quad (TMPQ-DM; needs a fine pool): one kept step "
                                             "per group.")] = "uniform",
    model: ModelOpt = None,
    fitness: Annotated[str | None, typer.Option(help="Image metric scoring sampled kept-step sets and finalists "
                                                "(default: the profile's content metric, ssim on the demo).")] = None,
    fitness_prompts: Annotated[int | None, typer.Option(min=1, help="Demo captions sampled for the fitness "
                                                        "(default: the profile's calibration prompts).")] = None,
    rerank: Annotated[int, typer.Option(min=0, help="Finalists sampled and scored by the fitness (0 = surrogate only); "
                                        "with --model and no --steps, distinct ILP plans under the budget "
                                        "sampled, the best measured kept (0 = the ILP's optimum).")] = 10,
    plugin: Annotated[list[str] | None, typer.Option(help="Python file or module registering metrics.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan (and the front) as JSON, not tables.")] = False,
) -> None:
    """Find the per-layer bits (and, with --steps, the kept denoising steps) that minimise the profiled
    degradation under a budget; write a plan."""
    from mpsearch.planning.planner import solve as run

    b = _budget(budget)
    quiet(as_json)
    front_range = _pareto_range(pareto) if pareto else None
    _check_before_work(protect, protect_top, time_limit, out, pareto)
    profile = _profile_folder(profile)
    space = _space(w_bits, a_bits, weight_only=weight_only, protect=protect, protect_top=protect_top, prune=prune,
                   assume_missing=assume_missing)  # fmt: skip
    inv, understood = _read_profile(profile, b, steps, pool)
    options = _solve_options(solver, steps, plugin, seed=seed, pool=pool, step_groups=step_groups, model=model,
                             fitness=fitness, fitness_prompts=fitness_prompts, rerank=rerank, backend=backend,
                             fmt=fmt, space=space, time_limit=time_limit)  # fmt: skip
    try:
        plan = run(profile, b, options)
    except ValueError as e:  # BudgetInfeasible among them: its message names the smallest feasible budget
        fail(str(e))
    front = _front(profile, front_range, inv, fmt=fmt, space=space, backend=backend) if pareto else None
    try:
        plan.save(out)
    except OSError as e:
        fail(f"--out {out}: {e.strerror or e}")
    _print_result(plan, inv, b, out, assume_missing)
    written = _write_front(front, out, inv) if front is not None else None
    if as_json:
        typer.echo(json.dumps({"out": str(out), "budget": understood, "plan": plan.to_dict(),
                               "pareto": None if front is None else {"csv": str(written[0]), "png": str(written[1]),
                                                                     "points": front.to_dict("records")}}, indent=1))


def _budget(text: str):
    """The `Budget` of --budget, or a one-line error naming the accepted forms."""
    from mpsearch.planning.budget import Budget, BudgetError

    try:
        return Budget.parse(text)
    except BudgetError as e:
        fail(str(e))


def _check_before_work(protect: list[str] | None, protect_top: float, time_limit: float | None, out: Path,
                       pareto: str | None) -> None:  # fmt: skip
    """Option values that need no profile: regexes, ranges, and that --out (and the front's files) can be written."""
    for pattern in protect or []:
        regex(pattern, "--protect")
    if not 0 <= protect_top <= 1:
        fail(f"--protect-top {protect_top:g}: a fraction of the layers, from 0 to 1")
    if time_limit is not None and not time_limit > 0:
        fail(f"--time-limit {time_limit:g}: seconds, more than 0")
    for path in (out, *([out.with_suffix(".pareto.csv"), out.with_suffix(".pareto.png")] if pareto else [])):
        writable_file(path, "--out")


def _profile_folder(profile: Path) -> Path:
    """The profile folder --profile names (the bundled demo profile by default), or a one-line error."""
    from mpsearch.evaluation.demo import profile_folder

    profile = profile_folder(profile)
    if not (profile / "meta.json").is_file():
        fail(f"{profile} is not a profile folder (no meta.json); run `mpsearch profile --out {profile}` first")
    return profile


def _space(w_bits: str | None, a_bits: str | None, *, weight_only: bool, protect: list[str] | None,
           protect_top: float, prune: bool, assume_missing: str):  # fmt: skip
    """The `SearchSpace` of the options: candidate widths from comma-separated text, protections, pruning."""
    from mpsearch.planning.problem import ASSUME_MISSING, SearchSpace

    def bits(text):
        try:
            return [int(x) for x in text.split(",")] if text else None
        except ValueError:
            fail(f"bits must be comma-separated integers, got {text!r}")

    space = SearchSpace(w_bits=bits(w_bits), a_bits=bits(a_bits), weight_only=weight_only,
                        protect=protect or [], protect_top=protect_top, prune=prune, assume_missing=assume_missing)
    if assume_missing not in ASSUME_MISSING:
        fail(f"--assume-missing {assume_missing!r}: choose {' or '.join(ASSUME_MISSING)}")
    return space


def _read_profile(profile: Path, budget, steps: int | None, pool: int | None) -> tuple:
    """(inventory, the budget as understood) of the profile; prints the budget line first thing on stdout."""
    from mpsearch.planning.inputs import load_profile

    try:  # a malformed or mixed profile folder: one line naming file:line
        _, meta, inv = load_profile(profile)
    except ValueError as e:
        fail(str(e))
    understood = budget.describe(inv)
    if steps is not None:
        from mpsearch.planning.steps import describe_budget

        understood = describe_budget(budget, inv, steps, meta, pool)
    console.print(f"budget: {understood}")
    return inv, understood


def _solve_options(solver: str, steps: int | None, plugin: list[str] | None, *, seed: int, pool: int | None,
                   step_groups: str, model: str | None, fitness: str | None, fitness_prompts: int | None,
                   rerank: int, **common):  # fmt: skip
    """The `SolveOptions` the options say: the solver's seed where it has one and, with --steps, the kept-step
    search (its model, fitness and re-ranking only for a solver that samples). `common`: backend, fmt,
    space, time_limit. Without --steps, --model (with --fitness-prompts) is the model a solver that picks
    its plan by images renders with (`SolverSpec.image_pick`, MixDQ), or that re-ranks a solver's plans
    (`SolverSpec.rerank`, the ILP; with --fitness, --rerank); --pool is an error."""
    from mpsearch.planning.planner import SolveOptions
    from mpsearch.planning.steps import StepOptions
    from solvers.registry import get_solver

    try:
        spec = get_solver(solver)
    except ValueError as e:
        fail(str(e))
    solver_options = {"seed": seed} if "seed" in spec.option_names() else {}
    if steps is None:
        if model is not None and spec.image_pick and pool is None and fitness is None:
            step = StepOptions(model=model, fitness_prompts=fitness_prompts)  # it renders its candidate plans
            return SolveOptions(solver=solver, step=step, solver_options=solver_options, **common)
        if model is not None and spec.rerank and pool is None:  # its plan is re-ranked by sampling candidates
            step = StepOptions(model=model, fitness_metric=fitness, fitness_prompts=fitness_prompts, rerank=rerank,
                               log=lambda m: err.print(f"[dim]{m}[/]"))  # fmt: skip
            return SolveOptions(solver=solver, step=step, solver_options=solver_options, **common)
        if pool is not None or model is not None or fitness is not None:
            fail("--pool, --model and --fitness belong to the timestep search: add --steps N (--model alone also "
                 "re-ranks the ILP's plans by sampling them, and lets a solver that picks its plan by images "
                 "render them, e.g. --solver mixdq)")
        return SolveOptions(solver=solver, solver_options=solver_options, **common)
    from mpsearch.profiling.metrics import load_plugin

    for p in plugin or []:
        load_plugin(p)
    sampling = {"model": model, "fitness_metric": fitness, "fitness_prompts": fitness_prompts, "rerank": rerank}
    try:
        step = StepOptions(pool=pool, grouping=step_groups, progress=True, log=lambda m: err.print(f"[dim]{m}[/]"),
                           **(sampling if spec.consumes == "steps" else {}))  # it samples the model: its options
    except ValueError as e:
        fail(str(e))
    return SolveOptions(solver=solver, steps=steps, step=step, solver_options=solver_options, **common)


def print_rerank(record: dict) -> None:
    """The re-ranking's candidates, predicted loss beside measured score, and whether the additive model
    (the ILP's predicted loss) ranked them as the measurement did."""
    metric = record["metric"]
    table = Table(title=f"re-ranked by sampling: {len(record['candidates'])} plans under the budget")
    for col in ("#", "found by", "predicted loss", f"measured {metric}", "pixel MSE"):
        table.add_column(col, justify="left" if col == "found by" else "right")
    for i, c in enumerate(record["candidates"]):
        mark = " kept" if i == record["chosen"] else ""
        table.add_row(f"{i}{mark}", c["how"], f"{c['predicted_loss']:.4g}", f"{c['measured_' + metric]:.4g}",
                      f"{c['pixel_mse']:.3g}")
    console.print(table)
    cost = record["cost"]
    console.print(f"re-ranking cost: {cost['renders']} renders ({cost['images']} images of {cost['prompts']} prompts, "
                  f"FP included), {cost['seconds']:.1f} s sampling + {cost['solve_seconds']:.1f} s solving")
    if record["chosen"] != record["predicted_best"]:
        console.print(f"note: the plan predicted best (#{record['predicted_best']}) is not the one measured best "
                      f"(#{record['chosen']}): the additive model is off at this budget; the measured best is kept")


def _print_result(plan, inv, budget, out: Path, assume_missing: str) -> None:
    """The plan's summary, a note on options the profile never measured, and where the plan went."""
    print_plan_summary(plan, inv, budget)
    if plan.solver.get("rerank"):
        print_rerank(plan.solver["rerank"])
    if plan.solver.get("unmeasured"):
        names = plan.solver["unmeasured"]
        how = "offered at zero loss" if assume_missing == "zero" else "not offered"
        console.print(f"note: {len(names)} option(s) the profile never measured were {how}: {', '.join(names[:4])}"
                      + (f" and {len(names) - 4} more (plan.json lists them)" if len(names) > 4 else ""))
    if plan.solver.get("estimated"):
        names = plan.solver["estimated"]
        console.print(f"note: {len(names)} chosen option(s) rest on estimated image measurements (image triage): "
                      f"{', '.join(names[:4])}" + (f" and {len(names) - 4} more" if len(names) > 4 else "")
                      + "; profile with --image-widths all (into a new folder) to measure them")  # fmt: skip
    console.print(f"wrote {out}")


def _write_front(front, out: Path, inv) -> tuple[Path, Path]:
    """The --pareto front as CSV and plot beside the plan: (csv, png)."""
    from mpsearch.planning.planner import plot_front

    csv, png = out.with_suffix(".pareto.csv"), out.with_suffix(".pareto.png")
    front.to_csv(csv, index=False)
    plot_front(front, png, title=f"{inv.model}: predicted loss vs size")
    console.print(f"pareto front: {len(front)} points → {csv}, {png}")
    return csv, png


PARETO_MAX = 1000  # points of a --pareto front


def _pareto_range(text: str) -> tuple:
    """--pareto LO:HI:N as (Budget, Budget, N), checked before any work; a one-line error when malformed."""
    from mpsearch.planning.budget import Budget, BudgetError

    parts = text.split(":")
    if len(parts) != 3:
        fail(f"--pareto {text!r}: expected LO:HI:N, e.g. 1.5MB:3MB:10")
    try:
        lo, hi = Budget.parse(parts[0]), Budget.parse(parts[1])
    except BudgetError as e:
        fail(f"--pareto {text!r}: {e}")
    if lo.resource != hi.resource:
        fail(f"--pareto {text!r}: LO and HI must budget the same thing (bytes, bits or BitOPs)")
    n = parts[2].strip()
    if not (n.isdigit() and 2 <= int(n) <= PARETO_MAX):
        fail(f"--pareto {text!r}: N is the number of budgets, a whole number from 2 to {PARETO_MAX}")
    return lo, hi, int(n)


def _front(profile: Path, front_range: tuple, inv, *, fmt: str, space, backend: str | None):
    """The loss-budget front of --pareto (a DataFrame), or a one-line error when it has no point."""
    from mpsearch.planning.planner import pareto_front

    lo, hi, n = front_range
    text = f"{lo}:{hi}:{n}"
    if not lo.resolve(inv, fmt) < hi.resolve(inv, fmt):
        fail(f"--pareto {text!r}: LO must be a smaller budget than HI")
    try:
        front = pareto_front(profile, lo, hi, n, backend=backend or "cpsat", fmt=fmt, space=space)
    except ValueError as e:
        fail(f"--pareto {text!r}: {e}")
    if front.empty:
        fail(f"--pareto {text!r}: no budget from {lo} to {hi} can be met")
    return front

