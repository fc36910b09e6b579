"""Training: primary-task loop, checkpoints, run artifacts (and the Siamese objective)."""
from __future__ import annotations

from privsplit.train.artifacts import ModelArtifact, load_model, save_model
from privsplit.train.checkpoint import load_checkpoint, save_checkpoint
from privsplit.train.loops import (
    LossFn, TrainConfig, TrainResult, cross_entropy_loss, evaluate, predict, train_classifier,
)

__all__ = ["ModelArtifact", "load_model", "save_model", "load_checkpoint", "save_checkpoint", "LossFn",
           "TrainConfig", "TrainResult", "cross_entropy_loss", "evaluate", "predict", "train_classifier"]
