"""``privsplit reproduce``: every table and figure of the paper's Section VI, for our models and data.

The run is a list of stages (train -> embeddings -> tradeoff -> reconstruction -> cost -> report).
Each finished stage writes ``OUT/stages/<name>.json`` with a hash of the configuration it ran with;
a rerun skips stages whose hash matches, so an interrupted run resumes from the first unfinished
stage (training itself also resumes from its last epoch checkpoint, and the long stages -- embeddings,
tradeoff, defences -- from their last finished row: :class:`~privsplit.report.context.RowCache`). Every figure's data is written
as JSON (and the tables as CSV) next to the PNGs.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console

# Context, Stage and write_rows live in report.context so that stages.py and render.py need not import this
# module (which runs them): that was an import cycle pipeline -> stages -> render -> pipeline.
from privsplit.report.context import Context, Stage, write_rows

__all__ = ["Stage", "Context", "load_config", "reproduce", "write_rows"]

console = Console(stderr=True)


def load_config(dataset: str, *, quick: bool = False, path: str | Path | None = None) -> dict[str, Any]:
    """The ``[dataset]`` table of the shipped defaults (or ``path``), with ``[dataset.quick]`` applied."""
    text = Path(path).read_text() if path else resources.files("privsplit.report").joinpath("defaults.toml").read_text()
    tables = tomllib.loads(text)
    if dataset not in tables:
        raise ValueError(f"no [{dataset}] table in the config; available: {', '.join(tables)}")
    cfg = {k: v for k, v in tables[dataset].items() if k != "quick"}
    if quick:
        cfg.update(tables[dataset].get("quick", {}))
    cfg["quick"] = quick
    return cfg


def _stage_hash(cfg: dict[str, Any], stage: Stage, upstream: list[str]) -> str:
    relevant = {k: cfg.get(k) for k in stage.keys} if stage.keys else cfg
    if cfg.get("backbone", "scratch") == "scratch":  # from scratch the backbone keys do not matter: reports
        relevant = {k: v for k, v in relevant.items()  # made before they existed keep their hashes (resume)
                    if not k.startswith(("backbone", "finetune"))}
    body = json.dumps({"cfg": relevant, "stage": stage.name, "upstream": upstream}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _stage_keys(cfg: dict[str, Any], stages: list[Stage]) -> list[str]:
    """Each stage's hash: its config keys and the train stage's hash (the report's: every stage's)."""
    keys: list[str] = []
    for stage in stages:
        keys.append(_stage_hash(cfg, stage, keys if stage.name == "report" else keys[:1]))
    return keys


def _finished(out: Path, stage: Stage, key: str) -> Any | None:
    """The saved result of ``stage`` when it finished under this ``key``, else None."""
    state = out / "stages" / f"{stage.name}.json"
    saved = json.loads(state.read_text()) if state.exists() else {}
    return saved["result"] if saved.get("hash") == key else None


def reproduce(dataset: str, out: str | Path, *, quick: bool = False, config: str | Path | None = None,
              stop_after: str | None = None, stages: list[Stage] | None = None, align: str = "none",
              backbone: str | None = None) -> Path:
    """Run (or resume) every stage for ``dataset`` into ``out``; returns the report's path.

    ``align``: a face detector name to train on detected + aligned faces (datasets that are not pre-aligned);
    recorded in the config (and so in every stage hash) only when set, so existing reports still resume.

    ``backbone``: ``"scratch"`` trains the primary model from random weights, ``"identity"`` first
    builds an identity-bearing backbone (distilled from dlib, ``privsplit pretrain``) and fine-tunes
    from it (the paper's path); default: the config's ``backbone`` (``scratch`` when absent).
    """
    from privsplit.report.stages import STAGES

    stages = stages or STAGES
    cfg = load_config(dataset, quick=quick, path=config)
    if align != "none":
        cfg["align"] = align
    if backbone is not None:
        if backbone not in ("scratch", "identity"):
            raise ValueError(f"backbone='{backbone}' unknown; use 'identity' or 'scratch'")
        cfg["backbone"] = backbone
    out = Path(out)
    (out / "stages").mkdir(parents=True, exist_ok=True)
    ctx = Context(cfg, out, {}, str(config) if config else None)
    keys = _stage_keys(cfg, stages)
    done = {st.name: _finished(out, st, key) for st, key in zip(stages, keys)}
    left = [st for st in stages if done[st.name] is None]
    console.print(f"{len(left)} of {len(stages)} stages to run, roughly {sum(st.minutes(cfg) for st in left):.0f} min on "
                  "2 CPU cores; each finished stage (and row of the long ones) is kept: rerun to resume")
    t_all = time.perf_counter()
    for i, (stage, key) in enumerate(zip(stages, keys), start=1):
        if done[stage.name] is not None:
            ctx.results[stage.name] = done[stage.name]
            console.print(f"[{i}/{len(stages)}] {stage.name}: done earlier, skipped")
            continue
        state = out / "stages" / f"{stage.name}.json"
        console.print(f"[bold][{i}/{len(stages)}] {stage.name}[/] (estimated ~{stage.minutes(cfg):.0f} min)")
        t0 = time.perf_counter()
        ctx.stage_key = key
        result = stage.run(ctx)
        seconds = time.perf_counter() - t0
        ctx.results[stage.name] = result
        state.write_text(json.dumps({"hash": key, "seconds": seconds, "result": result}, indent=1))
        (out / "stages" / f"{stage.name}.rows.jsonl").unlink(missing_ok=True)  # its pieces are in the result now
        shutil.rmtree(out / "stages" / f"{stage.name}.pieces", ignore_errors=True)
        console.print(f"    {stage.name} finished in {seconds / 60:.1f} min")
        if stop_after == stage.name:
            console.print(f"stopped after stage '{stage.name}' as asked; rerun to continue")
            return out / "report.md"
    console.print(f"all stages done in {(time.perf_counter() - t_all) / 60:.1f} min; report: {out / 'report.md'}")
    return out / "report.md"
