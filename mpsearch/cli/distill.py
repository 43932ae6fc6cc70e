"""`mpsearch distill`: recover a pruned and/or quantized model by feature distillation from the FP model."""

# no `from __future__ import annotations`: typer reads the option types at run time
from pathlib import Path
from typing import Annotated

import typer

from mpsearch.cli.common import ModelOpt, console, err, fail


def distill(
    plan: Annotated[Path, typer.Option("--plan", "-p", help="plan.json (pruned units and/or bits).",
                                       exists=True, dir_okay=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the recovered pipeline.")],
    model: ModelOpt = None,
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 300,
    batch: Annotated[int, typer.Option(help="Noisy latents per step.")] = 32,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 2e-4,
    n_prompts: Annotated[int, typer.Option(help="Prompts whose FP sampling trajectories are the data.")] = 32,
    seed: Annotated[int, typer.Option(help="Seed of prompts, noise and batches.")] = 0,
    recalibrate: Annotated[int, typer.Option(help="Steps between activation-range recalibrations "
                                                  "(plans with a_bits < 16; 0 = once at the start).")] = 100,
) -> None:
    """Recover a pruned and/or quantized model: LAPTOP-Diff normalised feature distillation from the FP
    model, with the plan's weight and activation quantizers in the loop; OUT is a pipeline to use with the same plan
    (`mpsearch evaluate --plan P --model OUT`, `mpsearch export --plan P --model OUT`)."""
    from mpsearch.model import ModelError
    from mpsearch.planning.plan import PlanError
    from mpsearch.recovery.distill import distill as run

    try:
        _, result = run(plan, model=model, out=out, steps=steps, batch=batch, lr=lr, n_prompts=n_prompts,
                        seed=seed, recalibrate=recalibrate, log=lambda m: err.print(f"[dim]{m}[/]"))
    except (PlanError, ModelError, ValueError, FileNotFoundError) as e:
        fail(str(e))
    console.print(f"loss {result.loss_first:.4f} → {result.loss_last:.4f} in {result.steps} steps "
                  f"({result.seconds:.0f} s) → {out}  (use it with --plan {plan} --model {out})")
