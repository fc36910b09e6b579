"""The decoder of the reconstruction attack: transmitted features -> image, and its training.

The attacker owns face images of *other* people and the device software, so it computes the features
the server would receive for its own images and trains a decoder back to the image -- the
auto-encoder-objective visualisation of Dosovitskiy & Brox that Osia et al. (Section IV-B) use.

Decoder (:class:`Decoder`): for vector features (reduced, ``k`` numbers) a 2-layer MLP to a
``start_size`` x ``start_size`` map; for ``C x H x W`` features a convolutional stem; then blocks of
transposed conv (4x4, stride 2) + 3x3 conv (batch-norm, leaky ReLU), halving the channels, up to the
input size; a 3x3 conv to RGB and a sigmoid, so reconstructions are ``[0, 1]`` RGB images. Inputs are
standardised with statistics of the (noisy) training features. Loss: MSE, optionally + ``l1_weight`` x L1.

**Linear start** (``linear_skip``, default on when the attacker has at least twice as many training
pairs as transmitted numbers and at most ``linear_max_dim`` of them): a dense path from the
features to the output logits is added to the convolutional one, set to the closed-form ridge
regression of the (clipped) target logits on the noisy standardised features, with the conv head
zeroed, so training starts from the best linear decoder and the conv path learns what is left. On CPU
budgets a conv decoder trained from scratch does not even reach the linear decoder on LFW conv5_3
features (2 epochs: MSE 0.0446 vs 0.0401 for the ridge start, mean face 0.0476); an attack that loses
to least squares would flatter every defence. The linear path is kept fixed by default
(``linear_lr_scale=0``; fine-tuning it did not help and costs a 25M-parameter update per step).

Training (:func:`train_decoder`) sees the features *as the server does*: noise is added afresh at every
step (for noisy embeddings), on top of clean features computed once; ``flip=True`` doubles the
attacker's data with mirrored images, whose features it computes through the device layers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from privsplit.attacks.common import optimizer_step
from privsplit.data.faces import FaceData

__all__ = ["ReconConfig", "Decoder", "to_unit", "decoder_features", "train_decoder"]


@dataclass(frozen=True)
class ReconConfig:
    """Decoder and training options (defaults: a few minutes per embedding on 2 CPU cores at 64 px)."""

    epochs: int = 20
    lr: float = 2e-3
    batch_size: int = 64
    width: int = 128           # channels of the first spatial map; halved at each upsampling
    min_width: int = 8         # channels never fall below this
    conv_max_side: int = 16    # upsampling blocks up to this output side get an extra 3x3 conv
    hidden: int = 512          # MLP hidden units (vector features)
    start_size: int = 4        # side of the MLP's map (vector features)
    linear_skip: bool = True   # add a linear path features -> image logits, started at the ridge solution
    ridge: float = 100.0       # ridge penalty of that start (on standardised features)
    linear_max_dim: int = 4096  # no linear path above this many numbers (memory), nor above half the pairs
    linear_lr_scale: float = 0.0  # learning rate of the linear path relative to ``lr`` (0: kept at the ridge start)
    l1_weight: float = 0.0     # loss = MSE + l1_weight * L1
    weight_decay: float = 0.0
    flip: bool = True          # also train on mirrored images
    seed: int = 0
    identity: bool = True      # dlib identity check when dlib is installed
    identity_per_identity: int = 10  # originals per held-out identity used by the identity check
    batch_eval: int = 256


def _block(cin: int, cout: int, *, conv: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), nn.BatchNorm2d(cout),
                               nn.LeakyReLU(0.2, inplace=True)]
    if conv:
        layers += [nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True)]
    return nn.Sequential(*layers)


class Decoder(nn.Module):
    """Features (``(k,)`` or ``(C, H, W)`` per image) -> ``3 x size x size`` image in ``[0, 1]``.

    ``mean``/``std`` buffers standardise the input (set them with :meth:`set_input_stats`). With
    ``linear=True`` a dense layer from the flattened features to the ``3 x size x size`` output logits is
    added to the convolutional path (set it to the ridge solution with :meth:`init_linear`).
    """

    def __init__(self, in_shape: tuple[int, ...], size: int, *, width: int = 128, min_width: int = 8,
                 hidden: int = 512, start_size: int = 4, conv_max_side: int = 16, linear: bool = False) -> None:
        super().__init__()
        self.in_shape, self.size = tuple(int(s) for s in in_shape), int(size)
        self.register_buffer("mean", torch.zeros(self.in_shape))
        self.register_buffer("std", torch.ones(self.in_shape))
        if len(self.in_shape) == 1:
            side = min(start_size, size)
            self.stem: nn.Module = nn.Sequential(
                nn.Linear(self.in_shape[0], hidden), nn.LeakyReLU(0.2, inplace=True),
                nn.Linear(hidden, width * side * side), nn.Unflatten(1, (width, side, side)),
                nn.BatchNorm2d(width), nn.LeakyReLU(0.2, inplace=True))
        elif len(self.in_shape) == 3:
            side = self.in_shape[1]
            self.stem = nn.Sequential(
                nn.Conv2d(self.in_shape[0], width, 3, padding=1), nn.BatchNorm2d(width), nn.LeakyReLU(0.2, inplace=True),
                nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.LeakyReLU(0.2, inplace=True))
        else:
            raise ValueError(f"features of shape {self.in_shape} unsupported: expected (k,) or (C, H, W)")
        ups = max(0, math.ceil(math.log2(size / side))) if side < size else 0
        blocks, c = [], width
        for i in range(ups):
            blocks.append(_block(c, max(min_width, c // 2), conv=side * 2 ** (i + 1) <= conv_max_side))
            c = max(min_width, c // 2)
        self.up = nn.Sequential(*blocks)
        self.head = nn.Conv2d(c, 3, 3, padding=1)
        self.linear = nn.Linear(math.prod(self.in_shape), 3 * size * size) if linear else None

    @torch.no_grad()
    def init_linear(self, feats: Tensor, targets: Tensor, *, ridge: float = 100.0) -> None:
        """Set the linear path to the ridge regression of the target logits on the standardised features,
        and zero the convolutional head, so training starts from the best linear decoder."""
        if self.linear is None:
            raise RuntimeError("this decoder has no linear path (linear=False)")
        x_all = ((feats - self.mean) / self.std).flatten(1)
        n, d = x_all.shape
        x_mean = x_all.double().mean(0)
        y_mean = torch.zeros(targets[0].numel(), dtype=torch.float64)
        for s in range(0, n, 1024):  # chunked: the target matrix in float64 would not fit comfortably
            y_mean += torch.logit(targets[s : s + 1024].flatten(1).double().clamp(0.02, 0.98)).sum(0)
        y_mean /= n
        gram = ridge * torch.eye(d, dtype=torch.float64)
        xty = torch.zeros(d, len(y_mean), dtype=torch.float64)
        for s in range(0, n, 1024):
            x = x_all[s : s + 1024].double() - x_mean
            y = torch.logit(targets[s : s + 1024].flatten(1).double().clamp(0.02, 0.98)) - y_mean
            gram += x.T @ x
            xty += x.T @ y
        w = torch.linalg.solve(gram, xty)                        # (d, 3 S S)
        self.linear.weight.copy_(w.T.float())
        self.linear.bias.copy_((y_mean - x_mean @ w).float())
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @torch.no_grad()
    def set_input_stats(self, feats: Tensor) -> None:
        """Per-dimension (vector) or per-channel (spatial) mean and std of the training features."""
        dims = (0,) if feats.ndim == 2 else (0, 2, 3)
        mean, std = feats.mean(dims, keepdim=True)[0], feats.std(dims, keepdim=True)[0]
        self.mean.copy_(mean.expand(self.in_shape))
        self.std.copy_(std.clamp(min=1e-6).expand(self.in_shape))

    def forward(self, z: Tensor) -> Tensor:
        zn = (z - self.mean) / self.std
        x = self.head(self.up(self.stem(zn)))
        if x.shape[-1] != self.size or x.shape[-2] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        if self.linear is not None:
            x = x + self.linear(zn.flatten(1)).view(-1, 3, self.size, self.size)
        return torch.sigmoid(x)



def to_unit(images: Tensor) -> Tensor:
    """uint8 images -> [0, 1] float RGB (the decoder's targets; ``FaceData.inputs`` before normalising)."""
    return images.to(torch.float32).div_(255.0)


@torch.no_grad()
def decoder_features(embedding: nn.Module, data: FaceData, *, flip: bool = False, batch_size: int = 256) -> Tensor:
    """Noise-free client features of every image of ``data`` (mirrored when ``flip``)."""
    parts = []
    for s in range(0, len(data), batch_size):
        x = data.inputs(torch.arange(s, min(len(data), s + batch_size)))
        if flip:
            x = x.flip(-1)
        parts.append(embedding.client_features(x.contiguous(memory_format=torch.channels_last),
                                               noisy=False).contiguous())
    return torch.cat(parts)


def _new_decoder(embedding: nn.Module, feats: Tensor, images: Tensor, cfg: ReconConfig) -> Decoder:
    """A decoder for ``feats`` ``(copies, N, *shape)``, standardised on one noisy draw, with the ridge
    start when the attacker has enough pairs (else it memorises) and few enough numbers (memory)."""
    dim = math.prod(feats.shape[2:])
    linear = cfg.linear_skip and dim <= cfg.linear_max_dim and 2 * dim <= feats.shape[0] * feats.shape[1]
    dec = Decoder(tuple(feats.shape[2:]), int(images.shape[-1]), width=cfg.width, min_width=cfg.min_width,
                  hidden=cfg.hidden, start_size=cfg.start_size, conv_max_side=cfg.conv_max_side, linear=linear)
    with torch.no_grad():
        noisy = embedding.noise(feats.flatten(0, 1))  # one noisy draw of every (copy, image)
        dec.set_input_stats(noisy)
        if linear:
            targets = to_unit(images)
            targets = torch.cat([targets] + ([targets.flip(-1)] if cfg.flip else []))
            dec.init_linear(noisy, targets, ridge=cfg.ridge)
    return dec


def _optimizer(dec: Decoder, cfg: ReconConfig, total_steps: int) -> tuple[torch.optim.Optimizer, object]:
    lin_params = list(dec.linear.parameters()) if dec.linear is not None else []
    ids = {id(q) for q in lin_params}
    groups = [{"params": [q for q in dec.parameters() if id(q) not in ids], "lr": cfg.lr}]
    if lin_params and cfg.linear_lr_scale > 0:
        groups.append({"params": lin_params, "lr": cfg.lr * cfg.linear_lr_scale})
    else:
        for q in lin_params:
            q.requires_grad_(False)
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups],
                                                total_steps=max(1, total_steps), pct_start=0.1)
    return opt, sched


def train_decoder(embedding: nn.Module, train: FaceData, cfg: ReconConfig) -> tuple[Decoder, list[float]]:
    """Train a decoder on the attacker's own images ``train``; returns it (eval mode) and the loss per epoch.

    Every step sees fresh device noise on clean features computed once (as the server would receive them).
    """
    torch.manual_seed(cfg.seed)
    copies = [decoder_features(embedding, train, batch_size=cfg.batch_eval)]
    if cfg.flip:
        copies.append(decoder_features(embedding, train, flip=True, batch_size=cfg.batch_eval))
    feats = torch.stack(copies)                       # (copies, N, *shape)
    dec = _new_decoder(embedding, feats, train.images, cfg)
    n = feats.shape[1]
    steps_per_epoch = max(1, n // cfg.batch_size)
    opt, sched = _optimizer(dec, cfg, cfg.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(cfg.seed)
    dec.train()
    history: list[float] = []
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        total, count = 0.0, 0
        for b in range(steps_per_epoch):  # drop the last partial batch (batch-norm needs > 1 image)
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            copy_idx = torch.randint(0, feats.shape[0], (len(idx),), generator=gen)
            with torch.no_grad():
                z = embedding.noise(feats[copy_idx, idx])  # fresh noise, as the server would see
                target = to_unit(train.images[idx])
                mirrored = copy_idx == 1
                target[mirrored] = target[mirrored].flip(-1)
            out = dec(z)
            loss = F.mse_loss(out, target)
            if cfg.l1_weight:
                loss = loss + cfg.l1_weight * F.l1_loss(out, target)
            optimizer_step(opt, loss, sched)
            total, count = total + loss.item() * len(idx), count + len(idx)
        history.append(total / max(1, count))
    return dec.eval(), history
