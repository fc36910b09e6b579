"""Helpers shared by CLI commands: console, friendly errors, metric tables."""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from privsplit.data.errors import DataError
from privsplit.errors import MissingDependency

console = Console()
F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(fn: F) -> F:
    """Turn expected errors into one red line and exit code 2 instead of a traceback."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (DataError, ValueError, FileNotFoundError, MissingDependency) as exc:
            console.print(f"[bold red]error:[/] {exc}")
            raise typer.Exit(2) from None
    return wrapper  # type: ignore[return-value]


def report_table(title: str, rows: dict[str, dict[str, Any]]) -> Table:
    """One row per evaluated split: n, accuracy, balanced accuracy, per-class recall."""
    table = Table(title=title)
    for col in ("split", "images", "accuracy", "balanced acc.", "per-class recall"):
        table.add_column(col)
    for name, rep in rows.items():
        per = ", ".join(f"{k}: {v:.1%}" for k, v in rep["per_class"].items())
        table.add_row(name, str(rep["n"]), f"{rep['accuracy']:.2%}", f"{rep['balanced_accuracy']:.2%}", per)
    return table
