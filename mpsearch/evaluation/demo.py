"""The whole job on the bundled demo models: solve at several budgets from the shipped profile, export the
main plan as a packed checkpoint, evaluate plans against FP and baselines, write `runs/demo/report.md`.
`run_demos` does it for the UNet demo and the SD3 DiT (`runs/demo/demo-dit/`) and puts both in one report."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from mpsearch.planning.plan import Plan

PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "demo"  # package data: ships in the wheel
PROFILE_DIT = PROFILE.parent / "demo-dit"  # the DiT's (`--model demo-dit`), shipped the same way
PROFILES = {"demo": PROFILE, "demo-dit": PROFILE_DIT}
DEFAULT_PROFILE = Path("profiles/demo")  # where `mpsearch profile` writes and `mpsearch solve` reads by default
BUDGETS = ("3bits", "2.5bits", "4bits")


def profile_folder(path: str | Path | None = None) -> Path:
    """The profile folder `path` names: `path` itself, except that None, `demo` and the default
    `profiles/demo` name the bundled demo profile (`PROFILE`), and `demo-dit` or `profiles/demo-dit` the
    DiT's, when no such folder holds a profile here. So the default works in a checkout, after `mpsearch
    profile` wrote ./profiles/demo, and from a wheel."""
    if path is None:
        return PROFILE
    path = Path(path)
    for name, bundled in PROFILES.items():
        if path in (Path(name), Path("profiles") / name) and not (path / "meta.json").is_file():
            return bundled
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
    import json

    from mpsearch.evaluation.evaluator import evaluate
    from mpsearch.evaluation.report import write_report
    from mpsearch.planning.planner import solve

    out, profile = Path(out), profile_folder(profile)
    if not (profile / "meta.json").is_file():
        raise FileNotFoundError(f"no profile in {profile}: run `mpsearch profile --out {profile}` first")
    model = json.loads((profile / "meta.json").read_text()).get("model")  # a bundled one: "demo", "demo-dit"
    plans: list[Plan] = []
    for budget in budgets:
        plan = solve(profile, budget)
        plan.solver["name"] = f"ilp@{budget}"
        plans.append(plan)
        log(f"solved {budget}: {plan.predicted['bytes']:,} bytes, mean {plan.predicted['mean_w_bits']:.2f} bits, "
            f"{plan.solver['status']} in {plan.solver['time_s']:.2f}s")
    if mixdq and budgets[0].endswith("bits"):
        try:
            plan = solve(profile, budgets[0], solver="mixdq")
        except ValueError as e:  # MixDQ keeps quality layers at ≥ 4 bits: low budgets are out of its reach
            log(f"MixDQ mode {budgets[0]}: {e}")
        else:
            plan.solver["name"] = f"mixdq@{budgets[0]}"
            plans.append(plan)
            log(f"MixDQ mode {budgets[0]}: mean {plan.predicted['mean_w_bits']:.2f} bits")
    for plan in plans:
        plan.save(out / "plans" / f"{plan.solver['name'].replace('@', '-')}.json")
    ev = evaluate(plans, model=model if model in PROFILES else None, n_prompts=n_prompts,
                  checkpoint=out / "checkpoint", log=log, progress=progress)  # fmt: skip
    return ev, write_report(ev, out)


def run_demos(out: str | Path = "runs/demo", *, models: Sequence[str] = ("demo", "demo-dit"), **kwargs):
    """`run_demo` on each bundled model in `models` (the first into `out`, the others into `out/<name>`),
    then one `out/report.md` holding every model's report (image links made relative to `out`). Returns
    `[(name, evaluation, seconds)]` and the report's path; `kwargs` go to `run_demo`."""
    import time

    out, done, parts = Path(out), [], []
    for i, name in enumerate(models):
        folder = out if i == 0 else out / name
        t0 = time.perf_counter()
        ev, report = run_demo(folder, profile=PROFILES[name], **kwargs)
        done.append((name, ev, time.perf_counter() - t0))
        text = report.read_text()
        if i:
            for f in ("grid.png", "pareto.png", "bitmap.png"):
                text = text.replace(f"]({f})", f"]({name}/{f})")
            text = "#" + text.replace("\n## ", "\n### ")  # its sections one level down, under its title
        parts.append(text)
    timing = ", ".join(f"{name} {secs:.0f} s" for name, _, secs in done)
    (out / "report.md").write_text("\n".join(parts) + f"\nTime per model: {timing}.\n")
    return done, out / "report.md"
