"""`mpsearch inspect`: the quantizable layers of a model's denoiser, their sizes, groups and MACs."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from mpsearch.cli.common import ModelOpt, console, fail, human_bytes, regex


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
    console.print(f"groups: {inv.group_note}")  # why each layer is content or quality
    for name, why in inv.excluded.items():
        console.print(f"not quantizable: {name} ({why})")
    console.print(
        f"fp16 size: [bold]{human_bytes(fp16_bytes(inv))}[/] ({fp16_bytes(inv):,} bytes; unquantized parts "
        f"{fixed_bytes(inv):,} bytes)   MACs per denoiser call: [bold]{inv.total_macs / 1e9:,.2f} G[/]   "
        f"fingerprint {inv.fingerprint}"
    )

