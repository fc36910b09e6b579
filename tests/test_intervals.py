"""Identity-clustered intervals and paired tests, against naive twins and hand-checked cases."""
from __future__ import annotations

import math

import pytest
import torch

from privsplit.metrics.intervals import (
    cluster_bootstrap_ci, cluster_bootstrap_ci_naive, mcnemar, paired_bootstrap, wilson_interval,
)


def test_cluster_bootstrap_matches_naive_twin():
    g = torch.Generator().manual_seed(1)
    groups = torch.randint(0, 9, (60,), generator=g)
    hits = (torch.rand(60, generator=g) < 0.3).float()
    assert cluster_bootstrap_ci(hits, groups, n_boot=300, seed=4) == pytest.approx(
        cluster_bootstrap_ci_naive(hits, groups, n_boot=300, seed=4), abs=1e-12)


def test_cluster_bootstrap_hand_checked():
    # two identities: one always re-identified (4 rows), one never (4 rows). Every replicate is one of
    # {both A: 1.0, both B: 0.0, one each: 0.5}; P(both B) = P(both A) = 1/4, so the 95% interval is [0, 1].
    groups = torch.tensor([0] * 4 + [1] * 4)
    hits = torch.tensor([1.0] * 4 + [0.0] * 4)
    lo, hi = cluster_bootstrap_ci(hits, groups, n_boot=4000, seed=0)
    assert (lo, hi) == (0.0, 1.0)
    # and it is wider than Wilson's, which wrongly treats the 8 rows as independent
    w = wilson_interval(4, 8)
    assert w[0] > 0.0 and w[1] < 1.0


def test_cluster_bootstrap_constant_is_degenerate():
    groups = torch.arange(10).repeat_interleave(3)
    assert cluster_bootstrap_ci(torch.ones(30), groups) == (1.0, 1.0)
    with pytest.raises(ValueError, match="one length"):
        cluster_bootstrap_ci(torch.ones(3), torch.ones(4))


def test_paired_bootstrap_separates_and_not():
    groups = torch.arange(50).repeat_interleave(4)
    a = torch.zeros(200)
    a[::2] = 1  # 50%
    b = torch.zeros(200)
    b[::10] = 1  # 10%, a subset of a's hits
    t = paired_bootstrap(a, b, groups, n_boot=1000)
    assert t.difference == pytest.approx(0.4)
    assert t.separated and t.p_value == pytest.approx(1 / 1000)
    same = paired_bootstrap(a, a, groups, n_boot=200)
    assert same.difference == 0.0 and not same.separated and same.p_value == 1.0


def test_mcnemar_exact_hand_checked():
    # 10 discordant pairs split 8 vs 2: two-sided exact p = 2 * P(X <= 2 | Bin(10, 1/2)) = 2 * 56/1024
    a = torch.tensor([1] * 8 + [0] * 2 + [1] * 5 + [0] * 5)
    b = torch.tensor([0] * 8 + [1] * 2 + [1] * 5 + [0] * 5)
    t = mcnemar(a, b)
    assert t.p_value == pytest.approx(2 * (1 + 10 + 45) / 1024)
    assert t.difference == pytest.approx(6 / 20)
    assert math.isclose(mcnemar(a, a).p_value, 1.0)
