"""`mpsearch merge`: profile shards of one model and settings joined into one profile."""

from pathlib import Path
from typing import Annotated

import typer

from mpsearch.cli.common import console, fail


def merge(
    shards: Annotated[list[Path], typer.Argument(help="Shard folders written with --shard i/n.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Merged profile folder (new).")] = Path("profiles/merged"),
) -> None:
    """Join profile shards of the same model and settings into one profile."""
    from mpsearch.profiling.lock import FolderLocked
    from mpsearch.profiling.store import ProfileError
    from mpsearch.profiling.store import merge as run_merge

    try:
        prof = run_merge(out, shards)
    except (ProfileError, FolderLocked) as e:
        fail(str(e))
    console.print(f"{out}: {len(prof)} measurements from {len(shards)} shards")
