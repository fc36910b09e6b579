"""Metrics: pure tensor functions and accumulators (no datasets, no models).

Classification (accuracy, balanced accuracy, confusion matrix), image similarity (SSIM/PSNR, the
``attacks`` extra), intervals and paired tests, and the rank privacy metric (Osia et al. 2017, Sec. V-C)
with its enrolment variant. Each has a naive reference twin that the tests compare against.
"""
from __future__ import annotations

from privsplit.metrics.classification import (
    ClassificationMetrics, ClassificationReport, accuracy, balanced_accuracy, classification_report,
    confusion_matrix, per_class_recall,
)
from privsplit.metrics.image import psnr, ssim
from privsplit.metrics.intervals import (
    PairedTest, cluster_bootstrap_ci, mcnemar, mean_and_spread, paired_bootstrap, wilson_interval,
)
from privsplit.metrics.rank import RankPrivacy, RankPrivacyResult, primary_label_ceiling, rank_privacy
from privsplit.metrics.rank_enrolment import EnrolmentRankPrivacy, enrolment_rank_privacy

__all__ = ["ClassificationMetrics", "ClassificationReport", "accuracy", "balanced_accuracy",
           "classification_report", "confusion_matrix", "per_class_recall", "psnr", "ssim", "PairedTest",
           "cluster_bootstrap_ci", "mcnemar", "mean_and_spread", "paired_bootstrap", "wilson_interval",
           "RankPrivacy", "RankPrivacyResult", "primary_label_ceiling", "rank_privacy", "EnrolmentRankPrivacy",
           "enrolment_rank_privacy"]
