"""`mpsearch demo`: the whole job on the bundled demo models (`mpsearch.evaluation.demo`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from mpsearch.cli.common import console, err, fail
from mpsearch.cli.evaluate import show_evaluation


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = Path("runs/demo"),
    budget: Annotated[list[str] | None, typer.Option("--budget", "-b", help="Budgets to solve (repeatable); "
                                                     "the first is exported and gets the baselines.")] = None,
    n_prompts: Annotated[int, typer.Option(help="Prompts per split (in-domain and held-out).")] = 16,
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Bundled models to run (repeatable): "
                                                    "demo (the UNet), demo-dit (the SD3 DiT); default both.")] = None,
) -> None:
    """The whole job on the bundled demo models: solve, export, evaluate; writes OUT/report.md (every
    model's report; the UNet's files in OUT, the DiT's in OUT/demo-dit)."""
    import time

    from mpsearch.evaluation.demo import BUDGETS, PROFILES, run_demos

    models = model or list(PROFILES)
    unknown = [m for m in models if m not in PROFILES]
    if unknown:
        fail(f"--model {unknown[0]}: choose among {', '.join(PROFILES)}")
    t0 = time.perf_counter()
    try:
        done, report = run_demos(out, models=models, budgets=budget or BUDGETS, n_prompts=n_prompts,
                                 log=lambda m: err.print(f"[dim]{m}[/]"), progress=True)  # fmt: skip
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    for name, ev, secs in done:
        console.print(f"[bold]{name}[/] ({secs:.0f} s)")
        show_evaluation(ev, report)
    console.print(f"demo finished in {time.perf_counter() - t0:.0f} s (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')})")

