"""What every `mpsearch` verb module shares: the consoles, the error exit, the --model and --json options
and byte counts written for people.

The error contract: bad input (a budget, a file, an option value, a usage mistake) prints ONE line
`error: …` on stderr, exits with code 2 and writes nothing. Output that is not a terminal (a pipe, a
file, a test runner) is never wrapped, whatever COLUMNS says: tables keep full layer names.
"""

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console, ConsoleDimensions
from rich.markup import escape
from typer.core import TyperGroup

try:  # typer ≥ 0.24 carries its own copy of click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer runs on click itself
    from click.exceptions import ClickException

WIDE = 100_000  # columns of a console that is not a terminal: lines and tables keep their natural width


class _Console(Console):
    """A rich Console that does not wrap at 80 columns (or $COLUMNS) when it does not write to a terminal."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        return size if self.is_terminal else ConsoleDimensions(WIDE, size.height)


console = _Console()
err = _Console(stderr=True)

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Hub id, local folder, single file, bundled config "
                 "(sd15, sdxl-base, sdxl-turbo, pixart-alpha), 'demo' (default, the bundled UNet) or 'demo-dit' "
                 "(the bundled SD3 DiT)."),
]

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON (stdout holds only the JSON).")]


def human_bytes(n: float) -> str:
    """`n` bytes in decimal units as people read them: `1.500 MB`, `812 B` (kB = 10^3 bytes, as budgets)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:,.3f} {unit}"
    return f"{n:,.0f} B"


def one_line(message: str) -> str:
    """`message` with its line breaks (and the spaces around them) folded into single spaces."""
    return re.sub(r"\s*\n\s*", " ", str(message).strip())


def fail(message: str, code: int = 2) -> None:
    """Print `error: message` as one line on stderr and exit with `code` (2 = bad input, 1 = the work failed).
    The message is printed as is: brackets in it are not rich markup."""
    err.print(f"[bold red]error:[/] {escape(one_line(message))}", soft_wrap=True, highlight=False, emoji=False)
    raise typer.Exit(code)


class OneLineErrors(TyperGroup):
    """The app's command group: click's usage errors (a missing option, a value out of range, an unknown
    command) become one `error:` line and exit 2 instead of a usage block or a rich panel."""

    def make_context(self, info_name, args, parent=None, **extra):  # noqa: ANN001 - click's signature
        with _usage_errors():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx):  # noqa: ANN001 - click's signature
        quiet(False)  # every command starts with its tables on
        with _usage_errors():
            return super().invoke(ctx)


@contextlib.contextmanager
def _usage_errors() -> Iterator[None]:
    try:
        yield
    except ClickException as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # `mpsearch` alone prints the help
            raise
        where = f" (see `{e.ctx.command_path} --help`)" if getattr(e, "ctx", None) is not None else ""
        fail(e.format_message() + where)


def quiet(on: bool) -> None:
    """With `on`, the stdout console prints nothing (a command's `--json` prints alone); errors still show."""
    console.quiet = on


def regex(pattern: str, option: str) -> str:
    """`pattern` if it compiles as a regular expression, else a one-line error naming `option`."""
    try:
        re.compile(pattern)
    except re.error as e:
        fail(f"{option} {pattern!r} is not a regular expression: {e}")
    return pattern


def group_overrides(values: list[str] | None) -> list[tuple[str, str]]:
    """`--group REGEX=content|quality` values as (regex, group) pairs, or a one-line error naming the bad one."""
    pairs = []
    for value in values or []:
        pattern, _, group = value.rpartition("=")
        if not pattern or group not in ("content", "quality"):
            fail(f"--group {value!r}: expected REGEX=content or REGEX=quality")
        pairs.append((regex(pattern, "--group"), group))
    return pairs


def writable_file(path: Path, option: str) -> Path:
    """`path` if a file can be written there (not a folder, no file on the way); checked before any work."""
    if path.is_dir():
        fail(f"{option} {path} is a folder: give a file name")
    parent = next((p for p in path.parents if p.exists()), Path("."))
    if not parent.is_dir():
        fail(f"{option} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        fail(f"{option} {path}: cannot write in {parent}")
    return path
