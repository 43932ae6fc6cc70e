"""Progress bars for long work (profiling, local or on Ray; the timestep search): rich, with count,
elapsed time and ETA."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def count_bar(total: int, show: bool, label: str) -> Iterator[Callable]:
    """Yield `advance(n=1, text="")` for a plain count of `total` items (e.g. sampling evaluations);
    `text` replaces the description after the label. With `show` False it does nothing."""
    if not show:
        yield lambda n=1, text="": None
        return
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
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n=1, text="": bar.update(task, advance=n, description=f"{label} {text}".rstrip())


@contextlib.contextmanager
def unit_bar(total: int, show: bool, label: str = "profiling") -> Iterator[Callable]:
    """Yield `advance(n, unit)`: moves the bar by `n` and names the unit (a profiler `Unit`) in progress.
    With `show` False it does nothing."""
    with count_bar(total, show, label) as advance:
        yield lambda n, u: advance(n, f"{u.stage} g{u.group} {u.layer[-40:]}")
