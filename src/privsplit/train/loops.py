"""The training loop (primary task; the Siamese objective plugs in through ``loss_fn``).

Choices: AdamW with linear warm-up then cosine decay computed from the step number (stateless, so
resuming needs no scheduler state); class-balanced cross-entropy by default because LFW is 78% male
and the acceptance looks at balanced accuracy; all randomness (order, augmentation) from one seeded
``torch.Generator`` saved in every checkpoint.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from privsplit.data.faces import FaceData
from privsplit.data.transforms import augment
from privsplit.metrics.classification import ClassificationMetrics, ClassificationReport
from privsplit.progress import progress_bar
from privsplit.train import distributed as ddp
from privsplit.train.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["TrainConfig", "TrainResult", "LossFn", "cross_entropy_loss", "train_classifier", "predict", "evaluate"]

#: ``loss_fn(model, inputs, labels) -> (loss, {name: value})``
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and schedule of :func:`train_classifier` (AdamW, warm-up then cosine decay; stored in checkpoints)."""

    epochs: int = 6
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 5e-4
    warmup_fraction: float = 0.05
    class_weight: str = "balanced"  # or "none"
    augment: bool = True
    seed: int = 0
    #: keep this top-level layer and every one below it fixed (weights *and* BatchNorm statistics);
    #: fine-tuning from a face-recognition backbone with all layers free washes identity out of conv5
    #: within one epoch (docs/backbone.md), so ``train --init`` can train only the layers above.
    freeze: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-ready dict (what checkpoints and manifests store)."""
        return asdict(self)


@dataclass
class TrainResult:
    """What :func:`train_classifier` returns: per-epoch history, the final evaluation, training seconds."""

    history: list[dict[str, float]] = field(default_factory=list)
    report: ClassificationReport | None = None
    seconds: float = 0.0


def class_weights(labels: torch.Tensor, num_classes: int, mode: str) -> torch.Tensor | None:
    """Inverse-frequency weights normalised to mean 1 (``"balanced"``), or None."""
    if mode == "none":
        return None
    if mode != "balanced":
        raise ValueError(f"class_weight='{mode}' unknown; use 'balanced' or 'none'")
    counts = torch.bincount(labels, minlength=num_classes).double().clamp(min=1)
    w = counts.sum() / (num_classes * counts)
    return w.float()


def cross_entropy_loss(weight: torch.Tensor | None = None) -> LossFn:
    """The default :data:`LossFn`: (optionally class-weighted) cross-entropy of the model's logits."""

    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        loss = F.cross_entropy(model(x), y, weight=weight)
        return loss, {"ce": float(loss.detach())}
    return loss_fn


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    warm = max(1, int(total * cfg.warmup_fraction))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))


@torch.no_grad()
def predict(model: nn.Module, inputs_of: Callable[[torch.Tensor], torch.Tensor], n: int, *,
            batch_size: int = 256) -> torch.Tensor:
    """Logits for ``n`` samples, ``inputs_of(indices)`` giving each batch's inputs; model in eval mode."""
    was = model.training
    model.eval()
    out = [model(inputs_of(torch.arange(s, min(n, s + batch_size))).contiguous(memory_format=torch.channels_last))
           for s in range(0, n, batch_size)]
    model.train(was)
    return torch.cat(out) if out else torch.empty(0)


def evaluate(model: nn.Module, data: FaceData, *, column: str, batch_size: int = 256) -> ClassificationReport:
    """Accuracy, balanced accuracy and per-class recall of ``model`` on ``data[column]``."""
    metric = ClassificationMetrics(data.classes[column])
    metric.update(predict(model, data.inputs, len(data), batch_size=batch_size), data.labels[column])
    return metric.compute()


def frozen_layers(model: nn.Module, upto: str | None) -> list[nn.Module]:
    """The top-level children of ``model`` up to and including ``upto`` (none when ``upto`` is None).

    Raises:
        ValueError: ``upto`` is not a top-level layer name (the message lists them).
    """
    if upto is None:
        return []
    names = [n for n, _ in model.named_children()]
    if upto not in names:
        raise ValueError(f"freeze='{upto}' is not a layer of this model; use one of: {', '.join(names)}")
    return [m for _, m in list(model.named_children())[: names.index(upto) + 1]]


def _train_mode(model: nn.Module, frozen: list[nn.Module]) -> None:
    """Training mode, except frozen layers stay in eval mode so their BatchNorm statistics do not move."""
    model.train()
    for m in frozen:
        m.eval()


def _train_epoch(model: nn.Module, train: FaceData, opt: torch.optim.Optimizer, params: list[nn.Parameter],
                 loss_fn: LossFn, *, column: str, config: TrainConfig, gen: torch.Generator, first_step: int,
                 total: int, advance: Callable[[str], None]) -> tuple[float, int]:
    """One pass over ``train``'s shuffled batches; this process's (summed loss, examples seen)."""
    running, seen = 0.0, 0
    _train_mode(model, frozen_layers(model, config.freeze))
    for i, (batch, x, y) in enumerate(train.batches(config.batch_size, column=column, shuffle=True, generator=gen)):
        for group in opt.param_groups:
            group["lr"] = _lr_at(first_step + i, total, config)
        if config.augment:
            x = augment(x, gen)  # the whole global batch on every process: same generator state
        rows = ddp.shard(torch.arange(len(y)))
        x, y, scale = x[rows], y[rows], ddp.shard_weight(len(rows), len(batch))
        x = x.contiguous(memory_format=torch.channels_last)
        opt.zero_grad(set_to_none=True)
        if len(y):
            loss, _ = loss_fn(model, x, y)
            (loss * scale).backward()
        ddp.average_gradients(params)
        opt.step()
        ddp.broadcast_module(model, buffers_only=True)
        if len(y):
            running, seen = running + float(loss.detach()) * len(y), seen + len(y)
        advance(f"{running / max(seen, 1):.3f}")
    return running, seen


def _resume(checkpoint: str | Path | None, model: nn.Module, opt: torch.optim.Optimizer,
            gen: torch.Generator) -> tuple[TrainResult, int]:
    """The result so far and the epoch to start at: restored from ``checkpoint`` when it exists, else fresh."""
    result = TrainResult()
    if checkpoint is None or not Path(checkpoint).with_suffix(".json").exists():
        return result, 0
    meta = load_checkpoint(checkpoint, model=model, optimizer=opt, generator=gen)
    result.history, result.seconds = meta["history"], meta["seconds"]
    return result, meta["epoch"]


def _epoch_row(model: nn.Module, eval_data: FaceData | None, *, column: str, epoch: int, running: float, seen: int,
               seconds: float) -> dict[str, float]:
    """The history row of an epoch: mean loss over every process's examples, seconds, and the evaluation."""
    running, seen_all = ddp.all_sum([running, float(seen)])  # the global batch's loss, as in one process
    row = {"epoch": epoch + 1, "loss": running / max(seen_all, 1), "seconds": seconds}
    if eval_data is not None:
        rep = evaluate(model, eval_data, column=column)
        row.update(eval_accuracy=rep.accuracy, eval_balanced_accuracy=rep.balanced_accuracy)
        model.train()
    return row


def _prepare(model: nn.Module, train: FaceData, *, column: str, config: TrainConfig, loss_fn: LossFn | None,
             params: list[nn.Parameter] | None) -> tuple[LossFn, list[nn.Parameter], torch.optim.Optimizer]:
    """Channels-last weights, frozen layers, the loss and the optimiser: what every training run sets up."""
    model.to(memory_format=torch.channels_last)  # ~5x faster convolutions on CPU (oneDNN)
    num_classes = len(train.classes[column])
    loss_fn = loss_fn or cross_entropy_loss(class_weights(train.labels[column], num_classes, config.class_weight))
    for layer in frozen_layers(model, config.freeze):
        layer.requires_grad_(False)
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    return loss_fn, params, torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def train_classifier(
    model: nn.Module,
    train: FaceData,
    *,
    column: str,
    config: TrainConfig = TrainConfig(),
    eval_data: FaceData | None = None,
    loss_fn: LossFn | None = None,
    params: list[nn.Parameter] | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    stop_after_epoch: int | None = None,
) -> TrainResult:
    """Train ``model`` on ``train[column]``; checkpoint after every epoch.

    Args:
        loss_fn: defaults to (class-weighted) cross-entropy; the Siamese objective passes its own.
        params: parameters to optimise (default: all that require grad) -- e.g. only upper layers.
        checkpoint: path stem; ``resume=True`` continues from it exactly (same weights and metrics as
            an uninterrupted run).
        stop_after_epoch: stop early after this epoch (used to test resuming).

    ``config.freeze`` names a layer: it and all below keep their weights and BatchNorm statistics.

    Under ``torchrun`` each process trains on its shard of every global batch of ``config.batch_size``
    and gradients are averaged (see :mod:`privsplit.train.distributed`); only rank 0 checkpoints.
    """
    ddp.setup()  # no-op unless launched by torchrun
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    loss_fn, params, opt = _prepare(model, train, column=column, config=config, loss_fn=loss_fn, params=params)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = steps_per_epoch * config.epochs
    result, start_epoch = _resume(checkpoint if resume else None, model, opt, gen)
    ddp.broadcast_module(model)  # every process starts from rank 0's weights
    model.train()
    with progress_bar("training", total=total, enabled=progress and ddp.is_main()) as advance:
        advance(start_epoch * steps_per_epoch)
        for epoch in range(start_epoch, config.epochs):
            t0 = time.perf_counter()
            running, seen = _train_epoch(model, train, opt, params, loss_fn, column=column, config=config, gen=gen,
                                         first_step=epoch * steps_per_epoch, total=total,
                                         advance=lambda loss: advance(1, epoch=f"{epoch + 1}/{config.epochs}",
                                                                      loss=loss))
            result.history.append(_epoch_row(model, eval_data, column=column, epoch=epoch, running=running, seen=seen,
                                             seconds=time.perf_counter() - t0))
            result.seconds += result.history[-1]["seconds"]
            if checkpoint is not None and ddp.is_main():
                save_checkpoint(checkpoint, model=model, optimizer=opt, generator=gen, meta={
                    "epoch": epoch + 1, "history": result.history, "seconds": result.seconds, "config": config.to_dict()})
            if stop_after_epoch is not None and epoch + 1 >= stop_after_epoch:
                break
    model.eval()
    if eval_data is not None:
        result.report = evaluate(model, eval_data, column=column)
    return result
