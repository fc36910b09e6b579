"""Identity-disjoint splits.

Identity attacks are evaluated on people the primary model never saw, so the split is made on
identities, never on images:

* ``attack``: identities with at least ``attack_min_images`` images (LFW: >= 20, the 62 people the
  paper's role of "100 held-out celebrities" maps onto); with ``attack_count`` only that many of them,
  chosen at random (CK+ and synthetic faces, where many people qualify). Never used for primary training.
* ``test``: ``test_fraction`` of the remaining identities, for primary-task evaluation.
* ``train``: the rest.

Splits are seeded and saved with every run (JSON of identity names) so results can be reproduced.
"""
from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Splits", "identity_disjoint_split", "per_identity_split"]


@dataclass(frozen=True)
class Splits:
    """Row indices of each split plus the identities in it."""

    train: np.ndarray
    test: np.ndarray
    attack: np.ndarray
    identities: dict[str, list[str]]
    seed: int

    def to_json(self, path: str | Path) -> None:
        """Write the seed and the identities of each split to ``path`` as JSON."""
        Path(path).write_text(json.dumps({"seed": self.seed, "identities": self.identities}, indent=1))

    @classmethod
    def from_json(cls, path: str | Path, identities: Sequence[str]) -> Splits:
        """Rebuild the index arrays for ``identities`` (the identity column of the same manifest)."""
        blob = json.loads(Path(path).read_text())
        which = {name: part for part, names in blob["identities"].items() for name in names}
        ids = np.asarray(identities)
        parts = {p: np.flatnonzero([which.get(i) == p for i in ids]) for p in ("train", "test", "attack")}
        return cls(parts["train"], parts["test"], parts["attack"], blob["identities"], int(blob["seed"]))


def identity_disjoint_split(
    identities: Sequence[str],
    *,
    attack_min_images: int | None = 20,
    attack_count: int | None = None,
    test_fraction: float = 0.15,
    seed: int = 0,
) -> Splits:
    """Split rows so train, test and attack share no identity (see module docstring).

    ``attack_min_images=None`` makes no attack split.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction} must be in (0, 1)")
    counts = Counter(identities)
    rng = np.random.default_rng(seed)
    attack_ids = sorted(i for i, c in counts.items() if attack_min_images is not None and c >= attack_min_images)
    if attack_count is not None:
        if attack_count > len(attack_ids):
            raise ValueError(f"attack_count={attack_count} but only {len(attack_ids)} identities have "
                             f">= {attack_min_images} images; lower one of them")
        attack_ids = sorted(rng.choice(attack_ids, size=attack_count, replace=False).tolist())
    rest = sorted(set(counts) - set(attack_ids))
    rng.shuffle(rest)
    n_test = max(1, round(len(rest) * test_fraction))
    test_ids, train_ids = sorted(rest[:n_test]), sorted(rest[n_test:])
    if not train_ids:
        raise ValueError(f"only {len(rest)} non-attack identities: nothing left to train on; "
                         "lower attack_min_images or use more data")
    ids = np.asarray(identities)
    parts = {name: np.flatnonzero(np.isin(ids, group)) for name, group in
             (("train", train_ids), ("test", test_ids), ("attack", attack_ids))}
    return Splits(parts["train"], parts["test"], parts["attack"],
                  {"train": train_ids, "test": test_ids, "attack": attack_ids}, seed)


def per_identity_split(identities: Sequence[str], *, per_identity: int = 20, n_train: int = 15, seed: int = 0,
                       groups: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Balanced attack data: ``per_identity`` random images of every identity that has that many,
    ``n_train`` of them to train the attacker and the rest to test it (chance is exactly 1/T).

    Without balancing, guessing LFW's most frequent attack person already scores ~18%.
    ``groups`` (e.g. CK+'s ``sequence``: 3 near-identical frames each) keeps every group wholly on one
    side, so no test image has a near-duplicate among the attacker's training images; the test side
    then takes whole groups until it has at least ``per_identity - n_train`` images.
    """
    if not 0 < n_train < per_identity:
        raise ValueError(f"n_train={n_train} must be between 1 and per_identity-1={per_identity - 1}")
    rng = np.random.default_rng(seed)
    ids = np.asarray(identities)
    train, test = [], []
    for name in sorted(set(identities)):
        rows = np.flatnonzero(ids == name)
        if len(rows) < per_identity:
            continue
        if groups is None:
            pick = rng.permutation(rows)[:per_identity]
            train.extend(pick[:n_train])
            test.extend(pick[n_train:])
            continue
        grp = np.asarray(groups)[rows]
        names = sorted(set(grp))
        if len(names) < 2:
            continue
        rng.shuffle(names)
        test_rows: list[int] = []
        for g in names:
            if len(test_rows) >= per_identity - n_train:
                break
            test_rows.extend(rows[grp == g])
        rest = rng.permutation(np.setdiff1d(rows, test_rows))[:n_train]
        if len(rest) == n_train:
            train.extend(rest)
            test.extend(test_rows)
    if not train:
        raise ValueError(f"no identity has {per_identity} images; lower per_identity")
    return np.sort(np.asarray(train)), np.sort(np.asarray(test))
