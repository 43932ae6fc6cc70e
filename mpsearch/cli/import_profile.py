"""`mpsearch import-profile`: another tool's per-layer sensitivity logs (MixDQ's) written as an mpsearch
profile that `mpsearch solve` reads without the model's weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from mpsearch.cli.common import JsonOpt, console, fail, quiet


def import_profile(
    fmt: Annotated[str, typer.Argument(metavar="FORMAT", help="Format of the logs: mixdq.")],
    src: Annotated[Path, typer.Argument(metavar="DIR", help="Folder of the logs (mixdq: MixDQ's repository or "
                                        "its mixed_precision_scripts/ folder).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Profile folder to write (new, or an empty folder).")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="The model the logs measured: a bundled "
                                              "config (sdxl-turbo), hub id or folder (default: named by the logs, "
                                              "e.g. sdxl_turbo → sdxl-turbo).")] = None,
    log_model: Annotated[str | None, typer.Option(help="mixdq: which model folder of sensitivity_log/ to read "
                                                  "when it has several.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Turn another tool's per-layer sensitivity logs into an mpsearch profile (meta.json, inventory.json,
    measurements.jsonl) that `mpsearch solve` reads without the model's weights."""
    from mpsearch.model import ModelError
    from mpsearch.profiling.importers import IMPORTERS
    from mpsearch.profiling.importers import import_profile as run

    quiet(as_json)
    if fmt not in IMPORTERS:
        fail(f"unknown log format {fmt!r}; available: {', '.join(IMPORTERS.names())}")
    if not src.is_dir():
        fail(f"{src} is not a folder")
    options = {"log_model": log_model} if log_model is not None else {}
    try:
        prof = run(fmt, src, out, model=model, **options)
    except (ValueError, ModelError, OSError) as e:  # ProfileError is a ValueError: file and key named
        fail(str(e))
    meta = prof.meta
    summary = {"out": str(out), "model": meta["model"], "layers": len(meta["layers"]), "rows": len(prof.df),
               "tensors": meta["tensors"], "metrics": sorted(meta["metrics"])}
    console.print(f"imported {summary['rows']:,} measurements of {summary['layers']} layers of {meta['model']} "
                  f"({', '.join(summary['tensors'])}; {', '.join(summary['metrics'])}) → {out}")
    console.print(f"solve it: mpsearch solve --profile {out} --budget 4bits [--solver mixdq]")
    if as_json:
        typer.echo(json.dumps(summary, indent=1))
