"""What every `mpsearch` command module shares: the consoles, the error exit and the --model option."""

from typing import Annotated

import typer
from rich.console import Console

console = Console()
err = Console(stderr=True)

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Hub id, local folder, single file, bundled config "
                 "(sd15, sdxl-base, sdxl-turbo, pixart-alpha) or 'demo' (default)."),
]


def fail(message: str, code: int = 2) -> None:
    """Print `error: message` on stderr and exit with `code` (2 = bad input, 1 = the work failed)."""
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)
