"""What a user sees while long work runs: rich progress bars with count, elapsed time and ETA (profiling,
local or on Ray; the timestep search; evaluation), drawn on stderr so stdout keeps only results; and
`quiet_libraries`, which the command line calls to silence what transformers and diffusers print."""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import sys
from collections.abc import Callable, Iterator
from types import ModuleType

NOT_A_TERMINAL_WIDTH = 10_000  # columns: a bar line is never wrapped or cut in a pipe


@contextlib.contextmanager
def count_bar(total: int, show: bool, label: str) -> Iterator[Callable]:
    """Yield `advance(n=1, text="")` for a plain count of `total` items (e.g. sampling evaluations);
    `text` replaces the description after the label. With `show` False it does nothing. When stderr is not
    a terminal, rich draws the bar once, finished, when the work ends."""
    if not show:
        yield lambda n=1, text="": None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("•"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())  # fmt: skip
    console = Console(stderr=True)
    if not console.is_terminal:  # a pipe or a log: the one finished line is whole, whatever $COLUMNS says
        console.width = NOT_A_TERMINAL_WIDTH
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n=1, text="": bar.update(task, advance=n, description=f"{label} {text}".rstrip())


@contextlib.contextmanager
def unit_bar(total: int, show: bool, label: str = "profiling") -> Iterator[Callable]:
    """Yield `advance(n, unit)`: moves the bar by `n` and names the unit (a profiler `Unit`) in progress.
    With `show` False it does nothing."""
    with count_bar(total, show, label) as advance:
        yield lambda n, u: advance(n, f"{u.stage} g{u.group} {u.layer[-40:]}")


TORCHVISION_NOTICE = "requires torchvision (not installed); falling back to"


def _no_torchvision_notice(record: logging.LogRecord) -> bool:
    return TORCHVISION_NOTICE not in record.getMessage()


def quiet_libraries() -> None:
    """Silence what transformers and diffusers print that says nothing to an mpsearch user: their tqdm
    bars (loading pipeline components, loading and writing weights; mpsearch draws its own bars) and
    transformers' notice that its CLIP/SigLIP image processors fall back to PIL without torchvision
    (mpsearch never uses them). Other warnings still show. Uses each library's own switch,
    `disable_progress_bar()`, thrown as the library is imported: importing diffusers up front would cost
    commands that never load a model (`solve`, `merge`) 1.4 s. Idempotent."""
    logging.getLogger("transformers.utils.import_utils").addFilter(_no_torchvision_notice)
    for name in ("transformers.utils.logging", "diffusers.utils.logging"):
        _when_imported(name, lambda module: module.disable_progress_bar())


def _when_imported(name: str, then: Callable[[ModuleType], None]) -> None:
    """Call `then(module)` now if module `name` is imported, else right after its import."""
    if name in sys.modules:
        then(sys.modules[name])
    elif not any(isinstance(f, _AfterImport) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, then))


class _AfterImport(importlib.abc.MetaPathFinder):
    """A one-shot import hook: finds `name` with the regular finders and runs `then` on the module once
    it has executed."""

    def __init__(self, name: str, then: Callable[[ModuleType], None]):
        self.name, self.then, self._finding = name, then, False

    def find_spec(self, fullname, path, target=None):  # noqa: ANN001 - importlib's signature
        if fullname != self.name or self._finding:
            return None
        self._finding = True
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._finding = False
        if spec is None or spec.loader is None:
            return None
        sys.meta_path.remove(self)  # the import stops at the spec returned here: no finder is skipped
        execute = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            self.then(module)

        spec.loader.exec_module = exec_module
        return spec
