"""privsplit command line (Typer). One module per command."""
from __future__ import annotations

import typer

app = typer.Typer(help="privsplit: privacy-preserving split inference.", no_args_is_help=True)


def main() -> None:
    app()
