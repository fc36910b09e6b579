"""Classification metrics against scikit-learn's reference implementations."""
from __future__ import annotations

import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix as sk_cm, recall_score

from privsplit.metrics import ClassificationMetrics, accuracy, balanced_accuracy, confusion_matrix


def test_against_sklearn():
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 4, (500,), generator=g)
    preds = torch.where(torch.rand(500, generator=g) < 0.6, target, torch.randint(0, 4, (500,), generator=g))
    assert abs(accuracy(preds, target) - accuracy_score(target, preds)) < 1e-6
    assert abs(balanced_accuracy(preds, target, 4) - balanced_accuracy_score(target, preds)) < 1e-12
    assert confusion_matrix(preds, target, 4).tolist() == sk_cm(target, preds, labels=range(4)).tolist()
    m = ClassificationMetrics(["a", "b", "c", "d"])
    m.update(preds[:200], target[:200])
    m.update(torch.nn.functional.one_hot(preds[200:], 4).float(), target[200:])  # logits also accepted
    rep = m.compute()
    ref = recall_score(target, preds, average=None)
    assert [round(v, 12) for v in rep.per_class.values()] == [round(v, 12) for v in ref.tolist()]
    assert rep.n == 500


def test_balanced_accuracy_ignores_absent_classes():
    target, preds = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1])
    assert balanced_accuracy(preds, target, 3) == 0.75  # class 2 absent: mean over classes 0 and 1
