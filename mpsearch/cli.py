"""`mpsearch` command line: inspect, generate, profile, solve, export, evaluate, demo."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported anywhere

import typer
from rich.table import Table

import mpsearch
from mpsearch.cli_common import ModelOpt, OneLineErrors, console, err, fail, quiet, regex, writable_file

app = typer.Typer(
    name="mpsearch",
    help="Mixed-precision bit-width search for diffusion models: profile once, solve under a budget, export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    cls=OneLineErrors,
)
def _version(value: bool) -> None:
    if value:
        console.print(f"mpsearch {mpsearch.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Mixed-precision bit-width search for diffusion models."""
    from mpsearch.progress import quiet_libraries

    quiet_libraries()  # transformers' and diffusers' loading bars and torchvision notices


def human_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:,.3f} {unit}"
    return f"{n:,.0f} B"


@app.command()
def inspect(
    model: ModelOpt = None,
    resolution: Annotated[int | None, typer.Option(help="Image side in pixels (default: the model's).")] = None,
    group: Annotated[list[str] | None, typer.Option(
        help="Group override REGEX=content|quality (repeatable; tried before MixDQ's attn2/ff rule).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the inventory as JSON.")] = False,
    limit: Annotated[int, typer.Option(help="Rows of the layer table (0 = all).")] = 0,
) -> None:
    """List the quantizable layers of a model's denoiser: sizes, groups, fp16 bytes and MACs."""
    from mpsearch.model import ModelError, inventory
    from mpsearch.planning.cost import fixed_bytes, fp16_bytes

    overrides = []
    for g in group or []:
        pattern, _, name = g.rpartition("=")
        if not pattern:
            fail(f"--group {g!r}: expected REGEX=content or REGEX=quality")
        overrides.append((regex(pattern, "--group"), name))
    try:
        inv = inventory(model, resolution=resolution, groups=overrides)
    except (ModelError, ValueError) as e:
        fail(str(e))
    if as_json:
        typer.echo(json.dumps(inv.to_dict(), indent=1))
        return
    table = Table(title=f"{inv.model}: {inv.component} at {inv.resolution}px, {len(inv)} quantizable layers")
    for col in ("layer", "kind", "group", "params", "out", "MACs"):
        table.add_column(col, justify="left" if col in ("layer", "kind", "group") else "right", overflow="fold")
    rows = inv.layers if limit <= 0 else inv.layers[:limit]
    for l in rows:
        table.add_row(l.name, l.kind, l.group, f"{l.params:,}", f"{l.out_channels:,}", f"{l.macs:,}")
    if limit and len(inv) > limit:
        table.caption = f"… {len(inv) - limit} more rows (--limit 0 shows all)"
    console.print(table)
    totals = Table(title="group totals")
    for col in ("group", "layers", "weight params", "share", "MACs"):
        totals.add_column(col, justify="right")
    qparams = sum(l.params for l in inv.layers)
    for g, t in sorted(inv.group_totals().items()):
        totals.add_row(g, str(t["layers"]), f"{t['params']:,}", f"{t['params'] / qparams:.1%}", f"{t['macs']:,}")
    kinds = {k: [l for l in inv.layers if l.kind == k] for k in ("linear", "conv2d")}
    for k, ls in kinds.items():
        totals.add_row(k, str(len(ls)), f"{sum(l.params + l.bias for l in ls):,} (with bias)", "", "")
    console.print(totals)
    console.print(
        f"fp16 size: [bold]{human_bytes(fp16_bytes(inv))}[/] ({fp16_bytes(inv):,} bytes; unquantized parts "
        f"{fixed_bytes(inv):,} bytes)   MACs per denoiser call: [bold]{inv.total_macs / 1e9:,.2f} G[/]   "
        f"fingerprint {inv.fingerprint}"
    )


@app.command()
def generate(
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="A prompt (repeatable).")] = None,
    prompts: Annotated[Path | None, typer.Option(help="A file of prompts, one per line.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write (a grid when several prompts).")] = Path("out.png"),
    model: ModelOpt = None,
    steps: Annotated[int | None, typer.Option(help="Denoising steps (default: the model's).")] = None,
    guidance: Annotated[float | None, typer.Option(help="Classifier-free guidance scale.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the first image; image i uses seed + i.")] = 0,
    size: Annotated[int | None, typer.Option(help="Image side in pixels (default: the model's).")] = None,
    plan: Annotated[Path | None, typer.Option("--plan", help="Sample with a plan: its bits (simulated, as "
                                              "`evaluate` does) and its kept timesteps.")] = None,
    quantized: Annotated[Path | None, typer.Option("--quantized", "-q", help="Sample with a checkpoint written "
                                                   "by `mpsearch export` (at its plan's kept timesteps).")] = None,
) -> None:
    """Generate images from prompts with the demo model or any diffusers text-to-image pipeline."""
    import contextlib

    from mpsearch.model import ModelError, load_pipeline
    from mpsearch.pipelines.generate import generate as run
    from mpsearch.pipelines.generate import image_grid
    from mpsearch.pipelines.sampling import sampling_defaults
    from mpsearch.pipelines.timesteps import TimestepError
    from mpsearch.planning.plan import Plan, PlanError

    texts = list(prompt or [])
    if prompts is not None:
        if not prompts.is_file():
            fail(f"--prompts {prompts}: no such file")
        texts += [line.strip() for line in prompts.read_text().splitlines() if line.strip()]
    if not texts:
        fail("give at least one --prompt or a --prompts file")
    if plan is not None and quantized is not None:
        fail("pass --plan or --quantized, not both")
    try:
        the_plan = Plan.load(plan) if plan is not None else None
        if quantized is not None:
            from mpsearch.export.load import load_quantized

            pipe = load_quantized(quantized)
            the_plan = pipe.mpsearch_plan
        else:
            pipe = load_pipeline(model)
    except (ModelError, PlanError, OSError, ValueError) as e:
        fail(str(e))
    d = sampling_defaults(model)
    guidance = d["guidance"] if guidance is None else guidance
    kept = the_plan.kept_timesteps if the_plan is not None and steps is None else None
    steps = None if kept else steps or d["steps"]
    how = f"timesteps {kept}" if kept else f"{steps} steps"
    quant = contextlib.nullcontext()
    if plan is not None:
        from mpsearch.export.simulate import activation_bits, fake_quantize
        from mpsearch.profiling.calibration import demo_prompts, reference

        calib = None
        if activation_bits(the_plan):  # activation ranges are calibrated on prompts, as the profiler does
            calib = reference(pipe, texts if model not in (None, "demo") else demo_prompts(8), steps=d["steps"],
                              guidance=guidance)  # fmt: skip
        try:
            quant = fake_quantize(pipe, the_plan, calib=calib)
        except (PlanError, ValueError) as e:
            fail(str(e))
    try:
        with quant, console.status(f"generating {len(texts)} image(s), {how}"):
            images = run(pipe, texts, seed=seed, steps=steps, timesteps=kept, guidance=guidance, height=size, width=size)
    except TimestepError as e:
        fail(str(e))
    out.parent.mkdir(parents=True, exist_ok=True)
    if len(images) == 1:
        images[0].save(out)
    else:
        cols = min(len(images), 8)
        image_grid(images, rows=-(-len(images) // cols), cols=cols, labels=texts, tile=96).save(out)
    console.print(f"wrote {out} ({len(images)} image(s), {how}, guidance {guidance:g}, seed {seed})")


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


@app.command()
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
    rerank: Annotated[int, typer.Option(min=0, help="Finalists sampled and scored by the fitness (0 = surrogate only).")] = 10,
    plugin: Annotated[list[str] | None, typer.Option(help="Python file or module registering metrics.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan (and the front) as JSON, not tables.")] = False,
) -> None:
    """Find the per-layer bits (and, with --steps, the kept denoising steps) that minimise the profiled
    degradation under a budget; write a plan."""
    from mpsearch.demo import profile_folder
    from mpsearch.planning.budget import Budget, BudgetError
    from mpsearch.planning.inputs import load_profile
    from mpsearch.planning.planner import solve as run
    from mpsearch.planning.problem import ASSUME_MISSING, SearchSpace
    from solvers.registry import get_solver

    def bits(text):
        try:
            return [int(x) for x in text.split(",")] if text else None
        except ValueError:
            fail(f"bits must be comma-separated integers, got {text!r}")

    try:
        b = Budget.parse(budget)
    except BudgetError as e:
        fail(str(e))
    quiet(as_json)
    front_range = _pareto_range(pareto) if pareto else None
    for pattern in protect or []:
        regex(pattern, "--protect")
    if not 0 <= protect_top <= 1:
        fail(f"--protect-top {protect_top:g}: a fraction of the layers, from 0 to 1")
    if time_limit is not None and not time_limit > 0:
        fail(f"--time-limit {time_limit:g}: seconds, more than 0")
    for path in (out, *([out.with_suffix(".pareto.csv"), out.with_suffix(".pareto.png")] if pareto else [])):
        writable_file(path, "--out")
    profile = profile_folder(profile)
    if not (profile / "meta.json").is_file():
        fail(f"{profile} is not a profile folder (no meta.json); run `mpsearch profile --out {profile}` first")
    space = SearchSpace(w_bits=bits(w_bits), a_bits=bits(a_bits), weight_only=weight_only,
                        protect=protect or [], protect_top=protect_top, prune=prune, assume_missing=assume_missing)
    if assume_missing not in ASSUME_MISSING:
        fail(f"--assume-missing {assume_missing!r}: choose {' or '.join(ASSUME_MISSING)}")
    try:  # a malformed or mixed profile folder: one line naming file:line
        _, meta, inv = load_profile(profile)
    except ValueError as e:
        fail(str(e))
    understood = b.describe(inv)
    if steps is not None:
        from mpsearch.planning.steps import describe_budget

        understood = describe_budget(b, inv, steps, meta, pool)
    console.print(f"budget: {understood}")
    try:
        spec = get_solver(solver)
    except ValueError as e:
        fail(str(e))
    options = {"seed": seed} if "seed" in spec.option_names() else {}
    if steps is not None:
        from mpsearch.profiling.metrics import load_plugin

        for p in plugin or []:
            load_plugin(p)
        options.update(steps=steps, pool=pool, grouping=step_groups, progress=True,
                       log=lambda m: err.print(f"[dim]{m}[/]"))
        if spec.consumes == "steps":  # it searches kept steps by sampling the model
            options.update(model=model, fitness_metric=fitness, fitness_prompts=fitness_prompts, rerank=rerank)
    elif pool is not None or model is not None or fitness is not None:
        fail("--pool, --model and --fitness belong to the timestep search: add --steps N")
    try:
        plan = run(profile, b, solver=solver, backend=backend, fmt=fmt, space=space, time_limit=time_limit, **options)
    except ValueError as e:  # BudgetInfeasible among them: its message names the smallest feasible budget
        fail(str(e))
    front = _front(profile, front_range, inv, fmt=fmt, space=space, backend=backend) if pareto else None
    try:
        plan.save(out)
    except OSError as e:
        fail(f"--out {out}: {e.strerror or e}")
    print_plan_summary(plan, inv, b)
    if plan.solver.get("unmeasured"):
        names = plan.solver["unmeasured"]
        how = "offered at zero loss" if assume_missing == "zero" else "not offered"
        console.print(f"note: {len(names)} option(s) the profile never measured were {how}: {', '.join(names[:4])}"
                      + (f" and {len(names) - 4} more (plan.json lists them)" if len(names) > 4 else ""))
    console.print(f"wrote {out}")
    if front is not None:
        from mpsearch.planning.planner import plot_front

        csv, png = out.with_suffix(".pareto.csv"), out.with_suffix(".pareto.png")
        front.to_csv(csv, index=False)
        plot_front(front, png, title=f"{inv.model}: predicted loss vs size")
        console.print(f"pareto front: {len(front)} points → {csv}, {png}")
    if as_json:
        typer.echo(json.dumps({"out": str(out), "budget": understood, "plan": plan.to_dict(),
                               "pareto": None if front is None else {"csv": str(csv), "png": str(png),
                                                                     "points": front.to_dict("records")}}, indent=1))


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


from mpsearch.cli_export import register as _register_export  # noqa: E402

_register_export(app)
from mpsearch.cli_profile import register as _register_profile  # noqa: E402

_register_profile(app)
from mpsearch.cli_distill import register as _register_distill  # noqa: E402

_register_distill(app)

@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = Path("runs/demo"),
    budget: Annotated[list[str] | None, typer.Option("--budget", "-b", help="Budgets to solve (repeatable); "
                                                     "the first is exported and gets the baselines.")] = None,
    n_prompts: Annotated[int, typer.Option(help="Prompts per split (in-domain and held-out).")] = 16,
) -> None:
    """The whole job on the bundled demo model: solve, export, evaluate; writes OUT/report.md."""
    import time

    from mpsearch.cli_export import show_evaluation
    from mpsearch.demo import BUDGETS, run_demo

    t0 = time.perf_counter()
    try:
        ev, report = run_demo(out, budgets=budget or BUDGETS, n_prompts=n_prompts,
                              log=lambda m: err.print(f"[dim]{m}[/]"), progress=True)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    show_evaluation(ev, report)
    console.print(f"demo finished in {time.perf_counter() - t0:.0f} s (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')})")


if __name__ == "__main__":  # pragma: no cover
    app()
