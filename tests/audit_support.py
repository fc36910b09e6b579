"""Test support for the audit: a minimal stand-in for ``privsplit.attacks.data`` (AttackData), following its
documented API, installed only while that module does not exist on the branch under test."""
from __future__ import annotations

import importlib
import sys
import types

import numpy as np


class _StandInData:
    def __init__(self, all_images, *, n_enrol=15, per_identity=None, seed=0, sensitive="identity", group=None,
                 aux=None):
        rng = np.random.default_rng(seed)
        ids = all_images.labels[sensitive].numpy()
        enrol, query = [], []
        for i in sorted(set(ids.tolist())):
            rows = rng.permutation(np.flatnonzero(ids == i))
            enrol += rows[:n_enrol].tolist()
            query += rows[n_enrol:][:per_identity].tolist()
        self.all, self.aux, self.sensitive = all_images, aux, sensitive
        self.enrol, self.query = all_images.subset(sorted(enrol)), all_images.subset(sorted(query))

    def validation(self, n_val=5, seed=0):
        rng = np.random.default_rng(seed + 10_000)
        ids = self.enrol.labels[self.sensitive].numpy()
        keep, val = [], []
        for i in sorted(set(ids.tolist())):
            rows = rng.permutation(np.flatnonzero(ids == i))
            val += rows[:n_val].tolist()
            keep += rows[n_val:].tolist()
        return self.enrol.subset(sorted(keep)), self.enrol.subset(sorted(val))


def install_attack_data_standin(monkeypatch) -> None:
    """Install the stand-in as ``privsplit.attacks.data`` for one test, unless the real module exists."""
    try:
        importlib.import_module("privsplit.attacks.data")
    except ImportError:
        mod = types.ModuleType("privsplit.attacks.data")
        mod.AttackData = _StandInData
        mod.attack_data = lambda all_images, **kw: _StandInData(all_images, **kw)
        monkeypatch.setitem(sys.modules, "privsplit.attacks.data", mod)


