"""What the stages of ``privsplit reproduce`` share: the run's context, the stage record, the row writer.

Kept apart from :mod:`privsplit.report.pipeline` (which runs the stages) so that
:mod:`~privsplit.report.stages` and :mod:`~privsplit.report.render` import it without importing the
pipeline: no import cycle.
"""
from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: a stage that does not train loads no training code
    from privsplit.attacks.data import AttackData
    from privsplit.train.artifacts import ModelArtifact
    from privsplit.train.run import PreparedData

#: what a stage returns: JSON-able rows or a summary dict (written to the run's results)
StageResult = dict[str, Any] | list[dict[str, Any]]

__all__ = ["Context", "Stage", "write_rows"]


@dataclass
class Context:
    """One reproduce run: its config, output folder and the results of the stages finished so far."""

    cfg: dict[str, Any]
    out: Path
    results: dict[str, Any]
    config_path: str | None = None
    _run: tuple[ModelArtifact, PreparedData] | None = None

    @property
    def run_dir(self) -> Path:
        """Folder of the trained model of this reproduction."""
        return self.out / "model"

    def run(self) -> tuple[ModelArtifact, PreparedData]:
        """The trained model artifact and its data with the saved splits (loaded once)."""
        if self._run is None:
            from privsplit.train.run import load_run

            self._run = load_run(self.run_dir, progress=False)
        return self._run

    def attack_data(self) -> AttackData:
        """The attack split of the trained run, drawn with the config's enrolment settings."""
        from privsplit.attacks.data import attack_data

        _, p = self.run()
        return attack_data(p.attack, per_identity=self.cfg["per_identity"], n_enrol=self.cfg["n_train"],
                           seed=self.cfg["seed"], group=self.cfg.get("attack_group"))

    def figure(self, name: str) -> Path:
        """Path of figure ``name`` under the output's ``figures/`` folder (created)."""
        (self.out / "figures").mkdir(parents=True, exist_ok=True)
        return self.out / "figures" / name


@dataclass(frozen=True)
class Stage:
    """One resumable step of the run (train, embeddings, ...): what it runs and what its result depends on."""

    name: str
    run: Callable[[Context], StageResult]
    minutes: Callable[[dict[str, Any]], float]  # rough estimate on a 2-core machine, shown before the stage
    keys: tuple[str, ...] = ()  # config keys the stage depends on (with its upstream stages' hashes)


def _estimate_epoch_s(cfg: dict[str, Any]) -> float:
    return {"lfw": 30.0, "ckplus": 2.0, "synthetic": 4.0}.get(cfg["dataset"], 30.0)


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """JSON and CSV twins of a figure's or table's data."""
    path.with_suffix(".json").write_text(json.dumps(rows, indent=1))
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with path.with_suffix(".csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows([{k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()} for r in rows])
