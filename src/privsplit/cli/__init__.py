"""privsplit command line (Typer). One module per command; only this package knows the CLI."""
from __future__ import annotations

import typer

__all__ = ["app", "main"]

from privsplit.cli import attack, audit, cost, demo, embed, evaluate, export, infer, pretrain, reproduce, serve, train

app = typer.Typer(help="privsplit: privacy-preserving split inference (Osia et al. 2017).",
                  no_args_is_help=True, pretty_exceptions_enable=False)
for _mod in (pretrain, train, evaluate, embed, attack, audit, serve, infer, export, cost, reproduce, demo):
    _mod.register(app)


def main() -> None:
    """Entry point of the ``privsplit`` command."""
    app()
