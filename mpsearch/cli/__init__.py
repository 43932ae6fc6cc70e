"""`mpsearch` command line: the typer app, built from one module per verb.

Each module in `VERBS` (`mpsearch/cli/<verb>.py`) defines a function named after its verb, a typer
command; this file registers them in that order (the order `mpsearch --help` lists them), so adding a
verb is one new file and one name here. `common.py` holds what they share: the consoles, the one-line
error contract, the --model option. Verb modules import typer and rich only: the heavy libraries (torch,
diffusers, pandas) load inside the commands, so `mpsearch --help` stays fast.
"""

from __future__ import annotations

import importlib
import os
from typing import Annotated

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported anywhere

import typer

import mpsearch
from mpsearch.cli.common import OneLineErrors, console

VERBS = ("inspect", "generate", "solve", "export", "evaluate", "profile", "merge", "distill", "demo")

app = typer.Typer(
    name="mpsearch",
    help="Mixed-precision bit-width search for diffusion models: profile once, solve under a budget, export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    cls=OneLineErrors,
)


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
    from mpsearch.progress import quiet_libraries

    quiet_libraries()  # transformers' and diffusers' loading bars and torchvision notices


for _verb in VERBS:
    app.command(_verb)(getattr(importlib.import_module(f"{__name__}.{_verb}"), _verb))
