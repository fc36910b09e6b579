"""What the stages of ``privsplit reproduce`` share: the run's context, the stage record, the row writer.

Kept apart from :mod:`privsplit.report.pipeline` (which runs the stages) so that
:mod:`~privsplit.report.stages` and :mod:`~privsplit.report.render` import it without importing the
pipeline: no import cycle.
"""
from __future__ import annotations

import csv
import json
import sys
import time
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

__all__ = ["Context", "Stage", "RowCache", "write_rows"]


class RowCache:
    """The finished pieces of one long stage, saved as they finish (``OUT/stages/<stage>.rows.jsonl``).

    Why: with the audit on every row, the full LFW embeddings stage runs for hours on 2 cores; a stage
    that restarts from its first row after an interruption would never finish. Each line holds the
    stage's configuration hash, a piece id and its value; lines of another hash (the configuration
    changed) are ignored, so a resumed stage reuses exactly the pieces this configuration produced.
    Every :meth:`put` prints one progress line (piece, count, minutes since the stage started).
    """

    def __init__(self, path: Path, key: str, *, total: int, label: str) -> None:
        self.path, self.key, self.total, self.label = path, key, total, label
        self._done: dict[str, Any] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by the interruption
                    continue
                if rec.get("hash") == key:
                    self._done[rec["id"]] = rec["value"]
        self._t0 = time.perf_counter()
        if self._done:
            self._say(f"{len(self._done)}/{total} done earlier, reused")

    def get(self, piece: str) -> Any | None:
        """The saved value of ``piece`` (None when it still has to run)."""
        return self._done.get(piece)

    def put(self, piece: str, value: Any) -> Any:
        """Save ``value`` for ``piece`` (appended and flushed at once) and report progress; returns ``value``."""
        self._done[piece] = value
        with self.path.open("a") as fh:
            fh.write(json.dumps({"hash": self.key, "id": piece, "value": value}) + "\n")
        self._say(f"{len(self._done)}/{self.total} ({piece}) after {(time.perf_counter() - self._t0) / 60:.1f} min")
        return value

    def file(self, piece: str, suffix: str) -> Path:
        """Where a piece keeps what does not fit a JSON row (tensors for a figure): ``OUT/stages/<stage>.pieces/``,
        named with the configuration hash so another configuration never reads it; removed with the rows."""
        folder = self.path.with_name(self.path.name.replace(".rows.jsonl", ".pieces"))
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{piece.replace('/', '-')}-{self.key[:16]}{suffix}"

    def _say(self, text: str) -> None:
        print(f"    {self.label}: {text}", file=sys.stderr, flush=True)


@dataclass
class Context:
    """One reproduce run: its config, output folder and the results of the stages finished so far."""

    cfg: dict[str, Any]
    out: Path
    results: dict[str, Any]
    config_path: str | None = None
    stage_key: str = ""  # configuration hash of the stage now running (set by the pipeline)
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

    def pieces(self, stage: str, total: int) -> RowCache:
        """The :class:`RowCache` of ``stage`` under this run's current configuration hash."""
        return RowCache(self.out / "stages" / f"{stage}.rows.jsonl", self.stage_key, total=total, label=stage)

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
