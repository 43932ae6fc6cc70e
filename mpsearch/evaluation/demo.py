"""The whole job on the bundled demo model: solve at several budgets from the shipped profile, export the
main plan as a packed checkpoint, evaluate plans against FP and baselines, write `runs/demo/report.md`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from mpsearch.planning.plan import Plan

PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "demo"  # package data: ships in the wheel
DEFAULT_PROFILE = Path("profiles/demo")  # where `mpsearch profile` writes and `mpsearch solve` reads by default
BUDGETS = ("3bits", "2.5bits", "4bits")


def profile_folder(path: str | Path | None = None) -> Path:
    """The profile folder `path` names: `path` itself, except that None, `demo` and the default
    `profiles/demo` name the bundled demo profile (`PROFILE`) when no such folder holds a profile here. So
    the default works in a checkout, after `mpsearch profile` wrote ./profiles/demo, and from a wheel."""
    if path is None:
        return PROFILE
    path = Path(path)
    if path in (Path("demo"), DEFAULT_PROFILE) and not (path / "meta.json").is_file():
        return PROFILE
    return path


def run_demo(
    out: str | Path = "runs/demo",
    *,
    budgets: Sequence[str] = BUDGETS,
    profile: str | Path = PROFILE,
    n_prompts: int = 16,
    mixdq: bool = True,
    log: Callable[[str], None] = print,
    progress: bool = False,
):
    """Returns `(evaluation, report_path)`. The first budget's plan is exported, reloaded and evaluated
    with the baselines (uniform W8/W4, the uniform width nearest its bytes, random at equal bytes).
    `progress`: a rich bar with ETA over the images sampled."""
    from mpsearch.evaluation.evaluator import evaluate
    from mpsearch.evaluation.report import write_report
    from mpsearch.planning.planner import solve

    out, profile = Path(out), profile_folder(profile)
    if not (profile / "meta.json").is_file():
        raise FileNotFoundError(f"no profile in {profile}: run `mpsearch profile --out {profile}` first")
    plans: list[Plan] = []
    for budget in budgets:
        plan = solve(profile, budget)
        plan.solver["name"] = f"ilp@{budget}"
        plans.append(plan)
        log(f"solved {budget}: {plan.predicted['bytes']:,} bytes, mean {plan.predicted['mean_w_bits']:.2f} bits, "
            f"{plan.solver['status']} in {plan.solver['time_s']:.2f}s")
    if mixdq and budgets[0].endswith("bits"):
        plan = solve(profile, budgets[0], solver="mixdq")
        plan.solver["name"] = f"mixdq@{budgets[0]}"
        plans.append(plan)
        log(f"MixDQ mode {budgets[0]}: mean {plan.predicted['mean_w_bits']:.2f} bits")
    for plan in plans:
        plan.save(out / "plans" / f"{plan.solver['name'].replace('@', '-')}.json")
    ev = evaluate(plans, n_prompts=n_prompts, checkpoint=out / "checkpoint", log=log, progress=progress)
    return ev, write_report(ev, out)
