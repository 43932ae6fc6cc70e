"""`mpsearch export`: a plan's packed low-bit checkpoint, its bytes beside the cost model's prediction."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mpsearch.cli.common import JsonOpt, ModelOpt, console, fail, quiet

PlanOpt = Annotated[Path, typer.Option("--plan", "-p", help="plan.json written by `mpsearch solve`.", exists=True,
                                       dir_okay=False)]


def bytes_table(e: dict) -> Table:
    """The denoiser bytes of an export (`ExportResult.to_dict()`): fp16, predicted, written, budget."""
    t = Table(title=f"denoiser bytes, format {e['format']!r}")
    t.add_column("")
    t.add_column("bytes", justify="right")
    t.add_column("", justify="right")
    fp16 = e["fp16_bytes"]
    rows = [("fp16", fp16), ("predicted (cost model)", e["predicted_bytes"]), ("written tensors", e["tensor_bytes"]),
            ("safetensors header", e["header_bytes"]), ("file", e["file_bytes"]), ("BOS rows file", e["bos_bytes"])]
    if e.get("budget_bytes"):
        rows.append((f"budget {e['budget']}", e["budget_bytes"]))
    for name, n in rows:
        t.add_row(name, f"{n:,}", f"{n / fp16:.1%} of fp16" if n > 10_000 or name == "fp16" else "")
    return t


def export(
    plan: PlanOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint folder to write.")],
    model: ModelOpt = None,
    no_components: Annotated[bool, typer.Option("--denoiser-only", help="Write only the denoiser, not the "
                                                "pipeline's other components.")] = False,
    no_bos: Annotated[bool, typer.Option("--no-bos", help="Do not precompute BOS K/V rows.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing export in --out whole "
                                            "(without it, a non-empty --out is refused).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a plan's packed low-bit checkpoint; its denoiser bytes equal the cost model's prediction.

    All or nothing: written to a temporary sibling of --out and renamed into place at the end."""
    from mpsearch.export.write import ExportError
    from mpsearch.export.write import export as run
    from mpsearch.model import ModelError
    from mpsearch.planning.plan import Plan, PlanError

    quiet(as_json)
    try:
        p = Plan.load(plan)
        result = run(p, out, model=model, bos=not no_bos, components=not no_components, overwrite=overwrite)
    except (ExportError, PlanError, ModelError, ValueError, OSError) as e:
        fail(str(e))
    e = result.to_dict()
    console.print(bytes_table(e))
    console.print(f"{e['quantized_layers']}/{e['layers']} layers quantized; written == predicted: "
                  f"[bold]{e['matches_prediction']}[/]   → {out}  (load with mpsearch.load_quantized)")
    if as_json:
        typer.echo(json.dumps({**e, "out": str(out)}, indent=1))
