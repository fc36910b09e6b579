"""Metrics: pure tensor functions and accumulators (no datasets, no models)."""
from __future__ import annotations

from privsplit.metrics.classification import (
    ClassificationMetrics, ClassificationReport, accuracy, balanced_accuracy, classification_report,
    confusion_matrix, per_class_recall,
)

__all__ = ["ClassificationMetrics", "ClassificationReport", "accuracy", "balanced_accuracy",
           "classification_report", "confusion_matrix", "per_class_recall"]

from privsplit.metrics.image import psnr, ssim  # noqa: E402

__all__ += ["psnr", "ssim"]
