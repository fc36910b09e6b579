"""``privsplit attack``: run one registered attack (or the rank metric) against a client/server bundle pair.

``--kind`` takes any name in :data:`privsplit.attacks.ATTACKS` (see ``privsplit attack --help``), plus
``rank`` (the paper's rank privacy metric). Options such as ``--epochs`` and ``--head`` reach an attack
through its constructor: as a keyword it accepts, or as a field of its ``config`` dataclass. For the
worst case over every attack, with intervals and a gate, use ``privsplit audit``.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

import privsplit.attacks  # noqa: F401  (registers the built-in attacks)
from privsplit.attacks import transfer as _transfer
from privsplit.attacks.base import ATTACKS
from privsplit.attacks.reconstruction import ReconConfig
from privsplit.cli.common import console, friendly_errors

#: the transfer attack's heads; its default (TransferConfig().head) is the strongest it offers
HEADS: tuple[str, ...] = tuple(getattr(_transfer, "HEADS", ("auto", "analyzer", "conv", "mlp")))
ALIASES = {"nn": "1-nn"}  # the name before the registry


def register(app: typer.Typer) -> None:
    app.command("attack")(attack)


def _reconstruction_until_registered(embedding: Any, *, aux: Any = None, seed: int = 0,
                                     embedding_name: str | None = None, config: ReconConfig | None = None) -> Any:
    """The reconstruction attack for branches where it is not in ATTACKS yet: its decoder learns from the
    attacker's other people (``aux``), as before the registry."""
    from privsplit.attacks.reconstruction import ReconstructionAttack

    attack = ReconstructionAttack(embedding, config=config or ReconConfig(), embedding_name=embedding_name)
    fit = attack.fit
    attack.fit = lambda train, *, column="identity": fit(aux if aux is not None else train)  # type: ignore[method-assign]
    return attack


FALLBACKS = {"reconstruction": _reconstruction_until_registered}


def kinds() -> list[str]:
    return ATTACKS.names() + [k for k in FALLBACKS if k not in ATTACKS] + ["rank"]


def _factory(kind: str) -> Any:
    if kind not in ATTACKS and kind in FALLBACKS:
        return FALLBACKS[kind]
    return ATTACKS.get(kind)  # an unknown name lists the choices


def attack_options(factory: Any, **wanted: Any) -> dict[str, Any]:
    """Each option in ``wanted`` (None = the attack's own default) that ``factory`` accepts: as a keyword
    of its constructor, or as a field of the dataclass its ``config`` keyword is annotated with."""
    wanted = {k: v for k, v in wanted.items() if v is not None}
    params = inspect.signature(factory).parameters
    out = {k: v for k, v in wanted.items() if k in params}
    rest = {k: v for k, v in wanted.items() if k not in params}
    if rest and "config" in params:
        hint = typing.get_type_hints(factory.__init__ if isinstance(factory, type) else factory).get("config")
        types_ = [t for t in (typing.get_args(hint) or (hint,)) if dataclasses.is_dataclass(t)]
        if types_:
            fields = {f.name for f in dataclasses.fields(types_[0])}
            out["config"] = types_[0](**{k: v for k, v in rest.items() if k in fields})
    return out


def _identity_table(title: str, res: Any) -> Table:
    table = Table(title=title)
    for col in ("figure", "value [95% CI]", "interval"):
        table.add_column(col)
    for name, fig in res.figures.items():
        table.add_row(name, str(fig), fig.method)
    for name, value in res.references.items():
        table.add_row(name, f"{value:.1%}" if isinstance(value, float) else str(value), "reference")
    return table


def _rank(emb: Any, data: Any, sensitive: str, primary: str) -> tuple[dict[str, Any], Table]:
    from privsplit.metrics.rank import primary_label_ceiling
    from privsplit.report.experiments import rank_privacy_of

    value = rank_privacy_of(emb, data, sensitive=sensitive)
    if value is None:
        raise ValueError("rank privacy needs a noisy embedding (noisy-reduced-simple or advanced)")
    ceiling = primary_label_ceiling(data.labels[sensitive], data.labels[primary])
    row = {"rank_privacy": value, "primary_label_ceiling": ceiling, "identities": len(set(data.labels[sensitive].tolist()))}
    table = Table(title="rank privacy")
    table.add_column("rank privacy")
    table.add_column("primary-label ceiling")
    table.add_row(f"{value:.3f}", f"{ceiling:.3f}")
    return row, table


@friendly_errors
def attack(
    bundle: Path = typer.Argument(..., help="Bundle folder from `privsplit embed` (holding client/ and server/)."),
    kind: str = typer.Option("transfer", help="A registered attack (privsplit.attacks.ATTACKS): "
                                              f"{' | '.join(kinds())}."),
    data: str = typer.Option(None, help="lfw | ckplus | celeba | synthetic | path/to/labels.csv (default: the "
                                        "bundle's run: its attack split, its training split as other people)."),
    epochs: int = typer.Option(None, help="Training epochs of the attacker's model (default: the attack's budget)."),
    head: str = typer.Option(None, help=f"Transfer attack head: {' | '.join(HEADS)} (default: "
                                        f"{_transfer.TransferConfig().head}, the strongest)."),
    repeats: int = typer.Option(1, min=1, help="Each query photo sent this many times (fresh noise), averaged."),
    seed: int = typer.Option(0, help="Enrolment draw and attack seed."),
    out: Path = typer.Option(None, "--out", "-o", help="Folder for JSON results (default BUNDLE/attacks)."),
    data_root: str = typer.Option(None),
) -> None:
    """Attack what the server receives with one attack; `privsplit audit` runs them all."""
    from privsplit.attacks.base import IdentityAttack
    from privsplit.cli.audit import load_inputs
    from privsplit.attacks.data import attack_data

    kind = ALIASES.get(kind, kind)
    factory = None if kind == "rank" else _factory(kind)
    client, emb, inp = load_inputs(bundle, data, data_root=data_root)
    out = out or bundle / "attacks"
    out.mkdir(parents=True, exist_ok=True)
    d = attack_data(inp.targets, group=inp.group, seed=seed)
    if factory is None:
        row, table = _rank(emb, inp.targets, inp.sensitive, inp.primary)
    else:
        options = attack_options(factory, epochs=epochs, head=head)
        attack_ = factory(emb, aux=inp.aux, seed=seed, embedding_name=client.kind, **options)
        attack_.fit(d.train, column=inp.sensitive)
        extra = {"repeats": repeats} if isinstance(attack_, IdentityAttack) else {}
        res = attack_.evaluate(d.test, column=inp.sensitive, primary=inp.primary, **extra)
        row = res.to_dict()
        table = _identity_table(f"{kind} attack on {client.kind} at {client.layer} ({inp.source})", res)
        if hasattr(attack_, "reconstructions"):
            from privsplit.attacks.reconstruction import save_reconstruction_grid

            originals, recon = attack_.reconstructions(d.test.subset(range(0, len(d.test), max(1, len(d.test) // 8))), 8)
            save_reconstruction_grid(originals, {client.kind: recon}, out / f"{kind}.png")
    (out / f"{kind}.json").write_text(json.dumps(row, indent=1, default=str))
    console.print(table)
    console.print(f"results: {out / (kind + '.json')}")
