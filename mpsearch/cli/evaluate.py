"""`mpsearch evaluate`: plans (and a checkpoint) against full precision and baselines; a Markdown report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mpsearch.cli.common import JsonOpt, ModelOpt, console, err, fail, quiet
from mpsearch.cli.export import bytes_table


def evaluate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder (report.md + PNGs + results.json).")],
    plan: Annotated[list[Path] | None, typer.Option("--plan", "-p", help="Plan(s) to evaluate (repeatable; "
                                                       "the first gets the baselines).")] = None,
    quantized: Annotated[Path | None, typer.Option("--quantized", "-q", help="A folder written by `mpsearch "
                                                      "export`: evaluate the checkpoint itself.")] = None,
    model: ModelOpt = None,
    calib_prompts: Annotated[Path | None, typer.Option(help="Calibration-domain prompts, one per line.")] = None,
    heldout_prompts: Annotated[Path | None, typer.Option(help="Held-out prompts, one per line.")] = None,
    n_prompts: Annotated[int, typer.Option(help="Prompts per split when none are given (demo model).")] = 8,
    steps: Annotated[int | None, typer.Option(help="Sampling steps (default: the demo's).")] = None,
    guidance: Annotated[float | None, typer.Option(help="Guidance scale (default: the demo's).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the first image (image i uses seed + i).")] = 0,
    checkpoint: Annotated[bool, typer.Option("--checkpoint/--no-checkpoint", help="Also export the plan, "
                                             "reload and generate: bytes on disk and peak memory.")] = True,
    baselines: Annotated[bool, typer.Option("--baselines/--no-baselines", help="Uniform W8, W4, nearest "
                                            "uniform and random-at-equal-bytes baselines.")] = True,
    plugin: Annotated[list[str] | None, typer.Option(help="Python file or module registering metrics.")] = None,
    profile: Annotated[Path | None, typer.Option("--profile", help="The profile the plans were solved from, for "
                                                 "their predicted loss beside the measured one (default: the "
                                                 "first plan's recorded profile folder).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Generate with FP, the plan and baselines; write a Markdown report with images and plots."""
    from mpsearch.evaluation.evaluator import EvaluateOptions
    from mpsearch.evaluation.evaluator import evaluate as run
    from mpsearch.evaluation.report import write_report
    from mpsearch.export.simulate import ExportError
    from mpsearch.model import ModelError
    from mpsearch.planning.plan import PlanError
    from mpsearch.profiling.calibration import read_prompts
    from mpsearch.profiling.metrics import load_plugin

    quiet(as_json)
    if not plan and quantized is None:
        fail("pass --plan PLAN.json and/or --quantized DIR")
    if profile is not None and not (profile / "meta.json").is_file():
        fail(f"--profile {profile}: not a profile folder (no meta.json)")
    for p in plugin or []:
        load_plugin(p)
    prompts = None
    if calib_prompts or heldout_prompts:
        prompts = {"calib": read_prompts(calib_prompts) if calib_prompts else [],
                   "heldout": read_prompts(heldout_prompts) if heldout_prompts else []}
    options = EvaluateOptions(model=model, quantized=quantized, prompts=prompts, n_prompts=n_prompts, seed=seed,
                              steps=steps, guidance=guidance, with_baselines=baselines,
                              checkpoint=(out / "checkpoint") if checkpoint and quantized is None else False,
                              log=lambda m: err.print(f"[dim]{m}[/]"), progress=True, profile=profile)  # fmt: skip
    try:
        ev = run(list(plan or []), options)
    except (ExportError, PlanError, ModelError, ValueError, FileNotFoundError) as e:
        fail(str(e))
    report = write_report(ev, out)
    show_evaluation(ev, report)
    if as_json:  # results.json and the report's path
        typer.echo(json.dumps({**ev.to_dict(), "report": str(report)}, indent=1, default=str))


def show_evaluation(ev, report: Path) -> None:
    """The evaluation table, bytes table and peak memory on the console."""
    rows = ev.rows()
    cols = [c for c in ("adherence", "ssim", "pixel_mse", "sqnr") if any(r.get(c) is not None for r in rows)]
    predicted = ev.predicted.get("loss", {})
    t = Table(title=f"{ev.inventory.model}: evaluation")
    for c in ("candidate", "split", "bytes", "bits", *(["predicted loss"] if predicted else []), *cols):
        t.add_column(c, justify="left" if c in ("candidate", "split") else "right", overflow="fold")
    for r in rows:
        pl = [f"{predicted[r['name']]:.4g}" if r["name"] in predicted else "–"] if predicted else []
        t.add_row(r["name"], r["split"], f"{r['bytes']:,}", f"{r['mean_w_bits']:.2f}", *pl,
                  *("–" if r.get(c) is None else f"{r[c]:.4g}" for c in cols))
    console.print(t)
    if ev.export:
        console.print(bytes_table(ev.export))
    for stage, m in ev.memory.items():
        console.print(f"peak RSS while {stage}: {m['rss_peak'] / 1e6:,.1f} MB (+{m['rss_delta'] / 1e6:,.1f} MB)")
    if "error" in ev.predicted:
        console.print(f"predicted loss not shown: {ev.predicted['error']}")
    console.print(f"report: {report}")
