"""``audit()``: run every registered attack of a profile over several seeds and report the worst case.

Protocol (one *seed* = one enrolment draw + one noise sequence):

1. draw the attacker's data: ``n_enrol`` enrolment photos per target, every other photo of the
   targets as a query (:func:`privsplit.attacks.data.attack_data`), auxiliary people unchanged;
2. for each attack of the profile (iterating :data:`privsplit.attacks.ATTACKS`, never naming one):
   build it on a copy of the embedding whose device noise is seeded, ``fit`` on the enrolment photos
   (attacks that learn from other people get ``aux``), ``evaluate`` on all queries;
3. for the first ``validation_seeds`` seeds, also fit each attack on the enrolment photos minus
   ``n_val`` per target and score it on those ``n_val`` (``AttackData.validation``): the worst case
   is the attack strongest *there*, so the query figure it is reported with was never used to choose
   it. The plain maximum over attacks on the queries is reported beside it, marked optimistic for the
   attacker (choosing the largest of several noisy figures after seeing them biases it upwards).

Why validation on one seed by default: selection needs a ranking, not a precise figure, and a second
fit of every attack doubles the cost of the heaviest ones; ``validation_seeds=None`` validates on all.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from privsplit.attacks.base import ATTACKS, Figure, IdentityAttack
from privsplit.attacks.data import AttackData
from privsplit.audit.cache import FeatureCache, with_cache
from privsplit.audit.floors import Floors, floors_of, mean_floors
from privsplit.audit.provenance import bundle_provenance, data_provenance, environment_provenance
from privsplit.audit.report import AttackSummary, AuditReport, GateResult, WorstCase
from privsplit.data.faces import FaceData
from privsplit.defenses.embedding import Embedding
from privsplit.defenses.noise import GaussianNoise
from privsplit.metrics.intervals import paired_bootstrap
from privsplit.progress import progress_bar

__all__ = ["PROFILES", "audit", "select_attacks", "load_target"]

#: audit profiles: "fast" (curves and sweeps) and "full" (every attack, each with its stated budget)
PROFILES = ("fast", "full")


def select_attacks(attacks: str | list[str] | tuple[str, ...] = "all", profile: str = "fast") -> list[str]:
    """Registered attack names to run: ``"all"`` = every attack whose ``profiles`` include ``profile``;
    a list (or comma-separated string) names attacks explicitly, whatever their profile."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile '{profile}'; choose one of: {', '.join(PROFILES)}")
    if isinstance(attacks, str) and attacks != "all":
        attacks = [a.strip() for a in attacks.split(",") if a.strip()]
    if attacks == "all":
        names = [n for n, f in ATTACKS.items() if profile in getattr(f, "profiles", frozenset({"full"}))]
        if not names:
            raise ValueError(f"no attack registered for profile '{profile}' (registered: "
                             f"{', '.join(ATTACKS.names()) or 'none'}); import the attack modules first")
        return names
    for name in attacks:
        ATTACKS.get(name)  # an unknown name lists the choices
    if not attacks:
        raise ValueError(f"no attack named; choose from: {', '.join(ATTACKS.names())}")
    return list(attacks)


def load_target(target: Embedding | str | Path) -> tuple[Embedding, dict[str, Any]]:
    """An embedding and its provenance from an ``Embedding`` or a bundle folder (``client/`` + ``server/``)."""
    if isinstance(target, (str, Path)):
        from privsplit.defenses.bundles import embedding_from_bundles, load_client_bundle, load_server_bundle

        folder = Path(target)
        client, server = load_client_bundle(folder / "client"), load_server_bundle(folder / "server")
        return embedding_from_bundles(client, server), bundle_provenance(folder)
    return target, {"embedding_id": getattr(target, "embedding_id", None), "kind": getattr(target, "kind", None),
                    "layer": getattr(target, "layer", None)}


def _seeded(embedding: Any, seed: int) -> Any:
    """The embedding with reproducible device noise (same kind, sigma/scale/std) drawn from ``seed``; the kind is
    kept so keyed noise still tells the attacks that repeats of one photo are identical."""
    noise = getattr(embedding, "noise", None)
    if isinstance(noise, GaussianNoise) and noise.sigma > 0 and hasattr(embedding, "with_noise"):
        return embedding.with_noise(type(noise)(sigma=noise.sigma, scale=noise.scale, std=noise.std,
                                                  deterministic=True, seed=seed))
    return embedding


def _draw(data: Any, seed: int, *, n_enrol: int, per_identity: int | None, sensitive: str,
          group: str | None, aux: Any) -> Any:
    """The attacker's data for one seed (``data``: all target images, or an ``AttackData`` to redraw)."""
    from privsplit.attacks.data import attack_data

    images = getattr(data, "all", data)
    aux = getattr(data, "aux", None) if aux is None else aux
    return attack_data(images, n_enrol=n_enrol, per_identity=per_identity, seed=seed, sensitive=sensitive,
                       group=group, aux=aux)


@dataclass
class _Runs:
    """Raw per-seed results of one attack."""

    results: list[Any] = field(default_factory=list)
    groups: list[Tensor] = field(default_factory=list)
    validation: list[float] = field(default_factory=list)
    seconds: float = 0.0


def _fit_evaluate(name: str, embedding: Any, train: Any, test: Any, *, aux: Any, seed: int, cfg: dict[str, Any]) -> Any:
    torch.manual_seed(seed)
    view = with_cache(_seeded(embedding, seed), cfg["cache"]) if cfg["cache"] is not None else _seeded(embedding, seed)
    attack = ATTACKS.build(name, view, aux=aux, seed=seed,
                           embedding_name=cfg["embedding_name"], **cfg["options"].get(name, {}))
    attack.fit(train, column=cfg["sensitive"])
    kwargs = {"repeats": cfg["repeats"]} if isinstance(attack, IdentityAttack) else {}
    return attack.evaluate(test, column=cfg["sensitive"], primary=cfg["primary"], **kwargs)


def _run_attacks(embedding: Any, draws: list[Any], seeds: list[int], names: list[str], cfg: dict[str, Any],
                 progress: bool) -> dict[str, _Runs]:
    n_val_seeds = len(seeds) if cfg["validation_seeds"] is None else min(cfg["validation_seeds"], len(seeds))
    runs = {n: _Runs() for n in names}
    with progress_bar("audit", total=len(names) * (len(seeds) + n_val_seeds), enabled=progress) as advance:
        for i, (seed, d) in enumerate(zip(seeds, draws)):
            for name in names:
                t0 = time.perf_counter()
                if i < n_val_seeds:
                    enrol, val = d.validation(n_val=cfg["n_val"], seed=seed)
                    res = _fit_evaluate(name, embedding, enrol, val, aux=d.aux, seed=seed, cfg=cfg)
                    if "top1" in res.figures:
                        runs[name].validation.append(res.figures["top1"].value)
                    advance(1, attack=name, seed=str(seed), step="validation")
                res = _fit_evaluate(name, embedding, d.enrol, d.query, aux=d.aux, seed=seed, cfg=cfg)
                runs[name].results.append(res)
                runs[name].groups.append(_groups(res, d.query.labels[cfg["sensitive"]]))
                runs[name].seconds += time.perf_counter() - t0
                top1 = res.figures.get("top1")
                advance(1, attack=name, seed=str(seed), top1="-" if top1 is None else f"{top1.value:.1%}")
    return runs


def _groups(res: Any, query_ids: Tensor) -> Tensor:
    """Identity of each evaluated row: the query's (an attack that scores a subset reports its own groups)."""
    hits = res.hits.get("top1")
    if hits is None or len(hits) == len(query_ids) or res.groups is None:
        return query_ids
    return res.groups


def _envelope(figs: list[Figure]) -> Figure:
    """Mean value over seeds with the envelope of the per-seed intervals (for figures without hits)."""
    return Figure(sum(f.value for f in figs) / len(figs), (min(f.ci95[0] for f in figs), max(f.ci95[1] for f in figs)),
                  sum(f.n for f in figs), figs[0].percent, f"envelope of per-seed {figs[0].method}")


def _summarise(name: str, runs: _Runs, n_boot: int) -> AttackSummary:
    res = runs.results
    have_hits = all("top1" in r.hits for r in res)
    pooled = {}
    for key in ("top1", "top5"):
        if all(key in r.hits for r in res):
            hits = torch.cat([r.hits[key] for r in res])
            pooled[key] = Figure.clustered(hits, torch.cat(runs.groups), n_boot=n_boot)
        elif all(key in r.figures for r in res):
            pooled[key] = _envelope([r.figures[key] for r in res])
    others = sorted({k for r in res for k in r.figures} - {"top1", "top5"})
    figures = {k: _envelope([r.figures[k] for r in res if k in r.figures]) for k in others}
    per_seed = [r.figures["top1"].value for r in res if "top1" in r.figures]
    val = sum(runs.validation) / len(runs.validation) if runs.validation else None
    return AttackSummary(name, pooled.get("top1"), pooled.get("top5"), per_seed, val, figures,
                         {"per_seed": [r.details for r in res]}, runs.seconds,
                         [r.hits["top1"] for r in res] if have_hits else [], list(runs.groups) if have_hits else [])


def _worst(summaries: list[AttackSummary], floor: float) -> tuple[WorstCase, WorstCase]:
    """(chosen on validation, plain maximum on the queries)."""
    ranked = [s for s in summaries if s.top1 is not None]
    if not ranked:
        raise ValueError("no attack reported an identity top-1; audit needs at least one identity attack")
    validated = [s for s in ranked if s.validation_top1 is not None]
    chosen = max(validated, key=lambda s: s.validation_top1) if validated else max(ranked, key=lambda s: s.top1.value)
    top = max(ranked, key=lambda s: s.top1.value)  # type: ignore[union-attr]

    def case(s: AttackSummary, how: str) -> WorstCase:
        return WorstCase(s.name, s.top1, s.top1.value / floor if floor > 0 else float("inf"), how)  # type: ignore[union-attr]

    return case(chosen, "validation" if validated else "maximum"), case(top, "maximum")


def _gate(worst: WorstCase, floors: Floors, factor: float | None, strict: bool) -> GateResult | None:
    if factor is None:
        return None
    if factor <= 0:
        raise ValueError(f"gate must be a positive multiple of the floor (e.g. 1.25), got {factor}")
    value = worst.top1.ci95[1] if strict else worst.top1.value
    threshold = factor * floors.reference
    return GateResult(factor, strict, floors.reference, threshold, value, value <= threshold)


def _query_key(d: Any) -> str:
    paths = getattr(getattr(d.query, "manifest", None), "paths", None) or [str(len(d.query))]
    return hashlib.sha256("\n".join(paths).encode()).hexdigest()[:16]


def audit(target: Embedding | str | Path, data: FaceData | AttackData, *, attacks: str | list[str] = "all", profile: str = "fast", seeds: int | list[int] = 3,
          sensitive: str = "identity", primary: str | None = "gender", gate: float | None = None,
          gate_strict: bool = False, aux: FaceData | None = None, n_enrol: int = 15, n_val: int = 5,
          per_identity: int | None = None, group: str | None = None, repeats: int = 1,
          options: dict[str, dict[str, Any]] | None = None, validation_seeds: int | None = 1, n_boot: int = 2000,
          provenance: dict[str, Any] | None = None, progress: bool = True, cache_features: bool = True,
          cache: FeatureCache | None = None) -> AuditReport:
    """Audit an embedding against every attack of ``profile``; the headline is the worst case.

    Args:
        target: an ``Embedding`` or a bundle folder holding ``client/`` and ``server/``.
        data: every image of the target identities (``FaceData``) or an ``AttackData`` whose ``all``
            and ``aux`` are redrawn per seed (the enrolment draw is part of the seed).
        attacks: ``"all"`` (the profile's attacks) or names; seeds: a count (0..n-1) or explicit seeds.
        gate: fail (``report.gate.passed`` False) when the worst case exceeds ``gate`` x floor
            (``gate_strict``: its upper 95% bound does).
        aux: the attacker's images of other people (default: ``data.aux`` if any).
        group: a column whose groups never straddle enrolment and query (CK+: ``sequence``); it also
            turns on the structure floor (see :mod:`privsplit.audit.floors`).
        repeats: each query photo sent this many times, features averaged (identity attacks).
        options: per-attack keyword options, e.g. ``{"transfer": {"config": ...}}``.
        cache_features: share noise-free client features between attacks and seeds
            (:mod:`privsplit.audit.cache`; the figures are identical, only faster).
        cache: a ``FeatureCache`` to use (and keep) instead of a new one, e.g. to audit one embedding at
            several ``repeats`` while training the aux-only models (metric network, decoder) once per seed.
    """
    t_start = time.perf_counter()
    names = select_attacks(attacks, profile)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ValueError("seeds must be >= 1")
    embedding, prov = load_target(target)
    name = getattr(embedding, "kind", "embedding")
    draws = [_draw(data, s, n_enrol=n_enrol, per_identity=per_identity, sensitive=sensitive, group=group, aux=aux)
             for s in seed_list]
    cfg = {"sensitive": sensitive, "primary": primary, "repeats": repeats, "options": options or {},
           "embedding_name": name, "n_val": n_val, "validation_seeds": validation_seeds,
           "cache": cache if cache is not None else FeatureCache() if cache_features else None}
    runs = _run_attacks(embedding, draws, seed_list, names, cfg, progress)
    summaries = [_summarise(n, runs[n], n_boot) for n in names]
    floors = mean_floors([floors_of(d.enrol, d.query, sensitive=sensitive, primary=primary, structure=group is not None)
                          for d in draws])
    worst, optimistic = _worst(summaries, floors.reference)
    w = next(s for s in summaries if s.name == worst.attack)
    comparisons = {}
    if w.hits:
        hw, gw = w.pooled()
        comparisons = {s.name: paired_bootstrap(hw, s.pooled()[0], gw, n_boot=n_boot)
                       for s in summaries if s.name != w.name and s.hits and s.pooled()[0].shape == hw.shape}
    first = draws[0]
    prov = {**prov, **(provenance or {}), **environment_provenance(), "profile": profile, "seeds": seed_list,
            "data": data_provenance(getattr(first, "all", first.enrol)),
            "aux": None if first.aux is None else data_provenance(first.aux),
            "seconds_per_attack": {s.name: round(s.seconds, 2) for s in summaries}}
    queries = {"per_seed": [len(d.query) for d in draws], "enrol_per_identity": n_enrol, "validation_per_identity": n_val,
               "identities": floors.identities, "repeats": repeats, "aux_images": 0 if first.aux is None else len(first.aux),
               "group": group}
    return AuditReport(name, profile, seed_list, sensitive, primary, summaries, floors, worst, optimistic, comparisons,
                       _gate(worst, floors, gate, gate_strict), prov, queries, time.perf_counter() - t_start,
                       [_query_key(d) for d in draws])
