"""Experiments behind the paper's figures: identity attacks per embedding/layer and noise trade-offs.

Everything here composes library pieces (embeddings, attacks, metrics) and returns plain rows
(dicts) that the CLI/benchmarks turn into tables, JSON/CSV and plots.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from privsplit.attacks.common import clean_features
from privsplit.attacks.data import AttackData, identity_attacks
from privsplit.attacks.transfer import TransferConfig
from privsplit.data.faces import FaceData
from privsplit.defenses.build import SiameseConfig, build_embedding, cached_siamese
from privsplit.defenses.embedding import Embedding
from privsplit.models.presets import paper_dim
from privsplit.defenses.noise import GaussianNoise
from privsplit.metrics.rank import primary_label_ceiling, rank_privacy
from privsplit.report.context import RowCache
from privsplit.train.artifacts import ModelArtifact
from privsplit.train.loops import evaluate
from privsplit.train.run import PreparedData

__all__ = ["rank_privacy_of", "noise_tradeoff", "embedding_table",
           "EMBEDDING_TABLE_KINDS"]

#: the embeddings of the paper's Table I / Fig. 9
EMBEDDING_TABLE_KINDS = ("simple", "reduced-simple", "siamese", "reduced-siamese")


def rank_privacy_of(embedding: Embedding, data: FaceData, *, sensitive: str = "identity",
                    seed: int = 0) -> float | None:
    """Class-level rank privacy (paper IV-C) of a noisy embedding on ``data``; None when noiseless."""
    noise = embedding.noise
    if not isinstance(noise, GaussianNoise) or noise.sigma <= 0:
        return None
    f = clean_features(embedding, data)[0].flatten(1).double()
    sigma = noise.sigma * (noise.std.double().flatten() if noise.scale == "std" else torch.ones(f.shape[1]))
    res = rank_privacy(f, data.labels[sensitive], sigma=sigma, generator=torch.Generator().manual_seed(seed))
    return res.privacy


def noise_tradeoff(embedding: Embedding, sigmas: Sequence[float], *, test: FaceData, attack: AttackData,
                   primary: str, transfer: TransferConfig | None = None, name: str | None = None,
                   sensitive: str = "identity", seed: int = 0, aux: FaceData | None = None,
                   group: str | None = None, n_enrol: int = 15, audit_seeds: int = 1,
                   audit_options: dict[str, dict[str, Any]] | None = None,
                   audit_attacks: str | list[str] = "all") -> list[dict[str, Any]]:
    """Accuracy vs privacy over noise levels (the paper's Fig. 10): one row per sigma.

    Identity leakage per sigma is the audit's fast profile (worst case over its attacks, chosen on
    validation, with its interval; ``aux`` = the attacker's other people); 1-NN alone (and the transfer
    attack when ``transfer`` is given) only where no fast attack is registered or transfer is asked for.
    Noise is drawn reproducibly (``seed``) so a rerun gives the same curve.

    The audits of all noise levels share one feature cache: the noise-free client features do not
    depend on sigma (noise is added after), and computing them -- mostly the metric attack's augmented
    copies of the other people -- was half of each audit on LFW. What attacks train on those features
    is keyed by the noise, so it is still trained per sigma.
    """
    from privsplit.audit import audit_row, profile_available
    from privsplit.audit.cache import FeatureCache

    if not isinstance(embedding.noise, GaussianNoise) or embedding.noise.std is None:
        raise ValueError("noise_tradeoff needs a noisy embedding with fitted per-dimension std "
                         "(kind 'noisy-reduced-simple' or 'advanced')")
    base = embedding.noise
    rows = []
    ceiling = primary_label_ceiling(attack.all.labels[sensitive], attack.all.labels[primary])
    features = FeatureCache()
    for sigma in sigmas:
        emb = embedding.with_noise(GaussianNoise(sigma=sigma, scale=base.scale, std=base.std, deterministic=True,
                                                 seed=seed))
        rep = evaluate(emb, test, column=primary)
        row = {"embedding": name or embedding.kind, "layer": embedding.layer, "sigma": sigma,
               "accuracy": rep.accuracy, "balanced_accuracy": rep.balanced_accuracy,
               "rank_privacy": rank_privacy_of(emb, attack.all, sensitive=sensitive, seed=seed),
               "rank_privacy_ceiling": ceiling}
        if transfer is not None or not profile_available("fast"):
            row.update(identity_attacks(emb, attack, primary=primary, transfer=transfer, name=name))
        if profile_available("fast"):
            row.update(audit_row(emb, attack.all, aux=aux, group=group, profile="fast", seeds=audit_seeds,
                                 options=audit_options, attacks=audit_attacks, sensitive=sensitive, primary=primary,
                                 n_enrol=n_enrol, cache=features))
        rows.append(row)
    return rows


def embedding_table(run: str | Path, art: ModelArtifact, prepared: PreparedData, *, layers: Sequence[str], data: AttackData,
                    siamese: SiameseConfig, transfer: TransferConfig | None,
                    on_row: Callable[[dict[str, Any]], None] | None = None, audit: dict[str, Any] | None = None,
                    cache: RowCache | None = None) -> list[dict[str, Any]]:
    """Table I/II and Fig. 9/12a rows: primary accuracy and identity attacks per embedding and layer.

    ``run`` is the run folder (the Siamese fine-tuned models are cached there). ``audit`` (options of
    :func:`privsplit.audit.audit`) adds the worst case over the audit profile's attacks to every row.
    ``cache`` keeps finished rows (``"layer/kind"``) so an interrupted table resumes at the next one.
    """
    from privsplit.audit import audit_row

    rows = []
    for layer in layers:
        tuned = None
        for kind in EMBEDDING_TABLE_KINDS:
            row = cache.get(f"{layer}/{kind}") if cache is not None else None
            if row is None:
                if tuned is None:  # only built (or loaded) when a row of this layer still has to run
                    tuned = cached_siamese(run, art, prepared.train, layer=layer, cfg=siamese)
                emb = build_embedding(kind, art.model, layer=layer, train=prepared.train, column=art.primary,
                                      dim=paper_dim(layer), tuned=tuned, progress=False)
                rep = evaluate(emb, prepared.test, column=art.primary)
                row = {"accuracy": rep.accuracy, "balanced_accuracy": rep.balanced_accuracy,
                       "dim": paper_dim(layer) if "reduced" in kind else None}
                row.update(identity_attacks(emb, data, primary=art.primary, transfer=transfer, name=kind))
                if audit is not None:
                    row.update(audit_row(emb, data.all, primary=art.primary, **audit))
                if cache is not None:
                    cache.put(f"{layer}/{kind}", row)
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows
