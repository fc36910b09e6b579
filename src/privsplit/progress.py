"""One progress helper used by every long step: a rich bar on a terminal, periodic log lines otherwise."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

__all__ = ["progress_bar"]


@contextmanager
def progress_bar(description: str, *, total: int, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """Yield ``advance(n, **fields)``.

    On a terminal this is a rich bar with ETA; in logs (CI, redirected output) rich would print
    nothing until the end, so a plain line is printed at every 10% instead.
    """
    console = Console(stderr=True)
    if not enabled:
        yield lambda n=1, **_: None
        return
    if not console.is_terminal:
        state = {"done": 0, "next": 0.1, "t0": time.perf_counter()}

        def log(n: int = 1, **fields: str) -> None:
            state["done"] += n
            frac = state["done"] / max(total, 1)
            if frac >= state["next"] or state["done"] == total:
                state["next"] = (int(frac * 10) + 1) / 10
                info = " ".join(f"{k}={v}" for k, v in fields.items())
                console.print(f"{description}: {state['done']}/{total} ({frac:.0%}) {info} "
                              f"[{time.perf_counter() - state['t0']:.0f}s]", highlight=False)

        yield log
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as prog:
        task = prog.add_task(description, total=total, info="")

        def advance(n: int = 1, **fields: str) -> None:
            prog.update(task, advance=n, info=" ".join(f"{k}={v}" for k, v in fields.items()))

        yield advance
