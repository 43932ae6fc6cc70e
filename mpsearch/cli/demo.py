"""`mpsearch demo`: the whole job on the bundled demo model (`mpsearch.evaluation.demo`)."""

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
) -> None:
    """The whole job on the bundled demo model: solve, export, evaluate; writes OUT/report.md."""
    import time

    from mpsearch.evaluation.demo import BUDGETS, run_demo

    t0 = time.perf_counter()
    try:
        ev, report = run_demo(out, budgets=budget or BUDGETS, n_prompts=n_prompts,
                              log=lambda m: err.print(f"[dim]{m}[/]"), progress=True)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    show_evaluation(ev, report)
    console.print(f"demo finished in {time.perf_counter() - t0:.0f} s (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')})")

