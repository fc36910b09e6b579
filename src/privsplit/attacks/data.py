"""The attacker's images: enrolment photos of each target, every other photo of them as queries, aux people.

Splits (the issue-10 protocol; "Statistics" in the README):

* ``enrol``: ``n_enrol`` (default 15) photos of each target identity -- the attacker's enrolment photos;
* ``query``: **every other** photo of those identities (~2,100 on LFW's 62 people) so an interval can
  separate small differences; ``per_identity=N`` instead keeps the old balanced split (``N`` photos per
  identity, ``n_enrol`` enrolled and ``N - n_enrol`` queried, identities with fewer dropped; exactly
  :func:`privsplit.data.splits.per_identity_split`, so old reports reproduce);
* ``aux``: auxiliary face data of *other* people (e.g. the primary training split) that attacks may
  learn from (the metric attacker does); it must share no identity with the targets;
* ``group`` (e.g. CK+'s ``sequence``): enrolment and query never share a group, so no query has a
  near-identical frame among the enrolment photos.

:meth:`AttackData.validation` splits the enrolment photos again (enrol' / val) so an audit can choose
its strongest attack without looking at the query images. ``train`` / ``test`` are aliases of
``enrol`` / ``query`` for older callers.

:func:`identity_attacks` is the row-dict runner the reports use (1-NN with a clean bank and, when
asked, the transfer attack whose chosen head it records).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from privsplit.attacks.common import clean_features
from privsplit.attacks.neighbors import NearestNeighborAttack, noise_variance
from privsplit.attacks.transfer import TransferAttack, TransferConfig
from privsplit.data.faces import FaceData
from privsplit.defenses.embedding import Embedding
from privsplit.data.splits import per_identity_split
from privsplit.metrics.rank_enrolment import EnrolmentRankPrivacy, enrolment_rank_privacy

__all__ = ["AttackData", "attack_data", "enrol_query_split", "identity_attacks", "enrolment_rank_privacy_of"]


@dataclass
class AttackData:
    """Target images split for an identity attack (see the module docstring)."""

    all: FaceData
    enrol: FaceData
    query: FaceData
    aux: FaceData | None = None
    sensitive: str = "identity"
    group: str | None = None
    seed: int = 0

    @property
    def train(self) -> FaceData:
        """Alias of :attr:`enrol` (older callers)."""
        return self.enrol

    @property
    def test(self) -> FaceData:
        """Alias of :attr:`query` (older callers)."""
        return self.query

    def validation(self, n_val: int = 5, seed: int = 0) -> tuple[FaceData, FaceData]:
        """Split the enrolment photos into (enrol', val): ``n_val`` of each identity's photos become
        validation queries (whole groups when ``group`` is set), the rest stay enrolled."""
        ids = self.enrol.manifest.column(self.sensitive)
        n_min = min(ids.count(i) for i in set(ids))
        if not 0 < n_val < n_min:
            raise ValueError(f"n_val={n_val} must be between 1 and {n_min - 1} (the fewest enrolment photos "
                             "of one identity minus one)")
        groups = self.enrol.manifest.column(self.group) if self.group else None
        keep, val = enrol_query_split(ids, n_enrol=n_min - n_val, seed=seed, groups=groups, max_query=n_val)
        return self.enrol.subset(keep), self.enrol.subset(val)


def _rows_by_group(rows: np.ndarray, grp: np.ndarray | None, rng: np.random.Generator) -> list[np.ndarray]:
    """``rows`` cut into groups in random order (one row per group when ungrouped)."""
    if grp is None:
        return [np.asarray([r]) for r in rng.permutation(rows)]
    names = sorted(set(grp.tolist()))
    rng.shuffle(names)
    return [rows[grp == g] for g in names]


def enrol_query_split(identities: npt.ArrayLike, *, n_enrol: int = 15, seed: int = 0,
                      groups: npt.ArrayLike | None = None, max_query: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (enrol, query): ``n_enrol`` random rows of each identity enrolled, every other row
    queried (at most ``max_query`` per identity). With ``groups``, whole groups go to one side: groups are
    taken in random order for enrolment until it holds ``n_enrol`` rows (the rest of the last group is
    dropped, not queried), the remaining groups are queried. Identities that cannot give ``n_enrol``
    enrolment rows and at least one query row are left out."""
    if n_enrol < 1:
        raise ValueError(f"n_enrol={n_enrol} must be >= 1")
    rng = np.random.default_rng(seed)
    ids = np.asarray(identities)
    grp_all = None if groups is None else np.asarray(groups)
    enrol, query = [], []
    for name in sorted(set(ids.tolist())):
        rows = np.flatnonzero(ids == name)
        parts = _rows_by_group(rows, None if grp_all is None else grp_all[rows], rng)
        taken: list[int] = []
        k = 0
        while k < len(parts) and len(taken) < n_enrol:
            taken.extend(parts[k].tolist())
            k += 1
        rest = [r for p in parts[k:] for r in p.tolist()]
        if len(taken) < n_enrol or not rest:
            continue
        enrol.extend(rng.permutation(taken)[:n_enrol].tolist())
        query.extend(rest if max_query is None else rng.permutation(rest)[:max_query].tolist())
    if not enrol:
        raise ValueError(f"no identity has more than {n_enrol} images{' in two groups' if groups is not None else ''}"
                         "; lower n_enrol")
    return np.sort(np.asarray(enrol)), np.sort(np.asarray(query))


def attack_data(all_images: FaceData, *, n_enrol: int = 15, per_identity: int | None = None, seed: int = 0,
                sensitive: str = "identity", group: str | None = None, aux: FaceData | None = None) -> AttackData:
    """Split ``all_images`` (every image of the target identities) into enrolment and query photos.

    ``per_identity=None`` (default) queries every non-enrolled photo; ``per_identity=N`` reproduces the
    old balanced split of N photos per identity. ``aux`` (other people) is checked to share no identity
    with the targets.
    """
    ids = all_images.manifest.column(sensitive)
    groups = all_images.manifest.column(group) if group else None
    if per_identity is None:
        enrol, query = enrol_query_split(ids, n_enrol=n_enrol, seed=seed, groups=groups)
    else:
        enrol, query = per_identity_split(ids, per_identity=per_identity, n_train=n_enrol, seed=seed, groups=groups)
    if aux is not None:
        shared = sorted(set(aux.manifest.column(sensitive)) & set(ids))
        if shared:
            raise ValueError(f"aux data shares {len(shared)} identities with the targets (e.g. {shared[:3]}): "
                             "auxiliary people must never be targets; pass other people as aux")
    return AttackData(all_images, all_images.subset(enrol), all_images.subset(query), aux, sensitive, group, seed)


def identity_attacks(embedding: Embedding, data: AttackData, *, primary: str, transfer: TransferConfig | None = None,
                     name: str | None = None) -> dict[str, Any]:
    """1-NN (clean enrolment bank, noisy queries) and, with a ``TransferConfig``, the transfer attack on
    one embedding; a flat row for the reports (the transfer attack's chosen head in ``transfer_head``)."""
    row: dict[str, Any] = {"embedding": name or embedding.kind, "layer": embedding.layer}
    knn = NearestNeighborAttack(embedding, embedding_name=name, seed=data.seed).fit(
        data.enrol, column=data.sensitive).evaluate(data.query, column=data.sensitive, primary=primary)
    row["nn_top1"], row["nn_top5"] = knn.figures["top1"].value, knn.figures["top5"].value
    row["nn_top1_ci95"] = list(knn.figures["top1"].ci95)
    row.update(knn.references)
    if transfer is not None:
        res = TransferAttack(embedding, config=transfer, embedding_name=name).fit(
            data.enrol, column=data.sensitive).evaluate(data.query, column=data.sensitive, primary=primary)
        row["transfer_top1"], row["transfer_top5"] = res.figures["top1"].value, res.figures["top5"].value
        row["transfer_top1_ci95"] = list(res.figures["top1"].ci95)
        row["transfer_lr"] = res.details.get("lr")
        if "head" in res.details:
            row["transfer_head"] = res.details["head"]
    return row


def enrolment_rank_privacy_of(embedding: Embedding, data: AttackData, *, seed: int = 0,
                              n_boot: int = 2000) -> EnrolmentRankPrivacy | None:
    """Enrolment rank privacy (:mod:`privsplit.metrics.rank_enrolment`) of an embedding: references = the
    clean features of ``data.enrol`` (the attacker's client copy), queries = the received (noisy) features
    of ``data.query``, kernel = the public noise std. None for a noiseless embedding (no kernel width)."""
    clean = clean_features(embedding, data.enrol)[0]
    var = noise_variance(embedding.noise, tuple(clean.shape[1:]))
    if not bool((var > 0).all()):
        return None
    received = embedding.noise(clean_features(embedding, data.query)[0])
    return enrolment_rank_privacy(clean, data.enrol.labels[data.sensitive], received,
                                  data.query.labels[data.sensitive], sigma=var.sqrt(), seed=seed, n_boot=n_boot)
