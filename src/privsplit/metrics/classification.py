"""Classification metrics: pure functions plus an ``update``/``compute`` accumulator (torchmetrics style)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["confusion_matrix", "accuracy", "balanced_accuracy", "per_class_recall", "ClassificationReport",
           "ClassificationMetrics", "classification_report"]


def confusion_matrix(preds: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``C[i, j]`` = number of samples of true class ``i`` predicted as ``j``."""
    idx = target.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def accuracy(preds: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of ``preds`` equal to ``target`` (NaN when empty)."""
    return float((preds == target).double().mean()) if target.numel() else float("nan")


def per_class_recall(cm: torch.Tensor) -> torch.Tensor:
    """Recall of each true class; NaN for classes absent from the targets."""
    support = cm.sum(1).double()
    return torch.where(support > 0, cm.diag().double() / support.clamp(min=1), torch.full_like(support, float("nan")))


def balanced_accuracy(preds: torch.Tensor, target: torch.Tensor, num_classes: int) -> float:
    """Mean recall over the classes present in ``target`` (scikit-learn's definition)."""
    recall = per_class_recall(confusion_matrix(preds, target, num_classes))
    return float(recall[~recall.isnan()].mean())


@dataclass(frozen=True)
class ClassificationReport:
    """Accuracy, balanced accuracy, per-class recall and the confusion matrix of ``n`` predictions."""
    n: int
    accuracy: float
    balanced_accuracy: float
    per_class: dict[str, float]
    confusion: list[list[int]]

    def to_dict(self) -> dict:
        """JSON-able form."""
        return {"n": self.n, "accuracy": self.accuracy, "balanced_accuracy": self.balanced_accuracy,
                "per_class": self.per_class, "confusion": self.confusion}


def classification_report(preds: torch.Tensor, target: torch.Tensor, classes: list[str]) -> ClassificationReport:
    """All the classification figures of ``preds`` vs ``target`` at once (``classes`` names the labels)."""
    cm = confusion_matrix(preds, target, len(classes))
    recall = per_class_recall(cm)
    return ClassificationReport(
        n=int(target.numel()),
        accuracy=accuracy(preds, target),
        balanced_accuracy=balanced_accuracy(preds, target, len(classes)),
        per_class={c: float(r) for c, r in zip(classes, recall.tolist())},
        confusion=cm.tolist(),
    )


class ClassificationMetrics:
    """Accumulate predictions batch by batch, then ``compute()`` a :class:`ClassificationReport`."""

    def __init__(self, classes: list[str]) -> None:
        self.classes = list(classes)
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._preds: list[torch.Tensor] = []
        self._target: list[torch.Tensor] = []

    def update(self, logits_or_preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: logits ``(B, C)`` (arg-max taken) or predicted labels ``(B,)``, and the targets."""
        preds = logits_or_preds.argmax(1) if logits_or_preds.ndim == 2 else logits_or_preds
        self._preds.append(preds.detach().cpu())
        self._target.append(target.detach().cpu())

    def compute(self) -> ClassificationReport:
        """The report over everything passed to :meth:`update` since the last :meth:`reset`."""
        if not self._preds:
            raise RuntimeError("ClassificationMetrics.compute() called before update()")
        return classification_report(torch.cat(self._preds), torch.cat(self._target), self.classes)
