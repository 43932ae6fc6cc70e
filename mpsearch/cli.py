"""`mpsearch` command line: inspect, generate, profile, solve, export, evaluate, demo."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported anywhere

import typer
from rich.console import Console
from rich.table import Table

import mpsearch

app = typer.Typer(
    name="mpsearch",
    help="Mixed-precision bit-width search for diffusion models: profile once, solve under a budget, export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()
err = Console(stderr=True)

ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="Hub id, local folder, single file, bundled config "
                 "(sd15, sdxl-base, sdxl-turbo, pixart-alpha) or 'demo' (default)."),
]


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


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


def human_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:,.3f} {unit}"
    return f"{n:,.0f} B"


@app.command()
def inspect(
    model: ModelOpt = None,
    resolution: Annotated[Optional[int], typer.Option(help="Image side in pixels (default: the model's).")] = None,
    group: Annotated[Optional[list[str]], typer.Option(
        help="Group override REGEX=content|quality (repeatable; tried before MixDQ's attn2/ff rule).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the inventory as JSON.")] = False,
    limit: Annotated[int, typer.Option(help="Rows of the layer table (0 = all).")] = 0,
) -> None:
    """List the quantizable layers of a model's denoiser: sizes, groups, fp16 bytes and MACs."""
    from mpsearch.cost import fixed_bytes, fp16_bytes
    from mpsearch.model import ModelError, inventory

    overrides = []
    for g in group or []:
        pattern, _, name = g.rpartition("=")
        if not pattern:
            fail(f"--group {g!r}: expected REGEX=content or REGEX=quality")
        overrides.append((pattern, name))
    try:
        inv = inventory(model, resolution=resolution, groups=overrides)
    except (ModelError, ValueError) as e:
        fail(str(e))
    if as_json:
        typer.echo(json.dumps(inv.to_dict(), indent=1))
        return
    table = Table(title=f"{inv.model}: {inv.component} at {inv.resolution}px, {len(inv)} quantizable layers")
    for col in ("layer", "kind", "group", "params", "out", "MACs"):
        table.add_column(col, justify="left" if col in ("layer", "kind", "group") else "right")
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


if __name__ == "__main__":  # pragma: no cover
    app()
