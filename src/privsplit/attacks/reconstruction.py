"""Reconstruction attack (Osia et al. 2017, Section IV-B "deep visualization", Fig. 11).

The attacker owns face images of *other* people (in practice the run's ``train`` split, identities
disjoint from the evaluated ones) and the device software, so it can compute the features the server
receives for its own images and train a **decoder** from those features back to the image -- the
auto-encoder-objective visualisation of Dosovitskiy & Brox that the paper uses. Evaluated on held-out
people (the ``attack`` split), the reconstructions show how much of the face the features still carry.

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

Honesty of the attack:

* training sees the features *as the server does*: noise is added afresh at every step (for noisy
  embeddings), on top of clean features computed once; evaluation adds one fresh draw per image;
* ``flip=True`` doubles the attacker's data with mirrored images, whose features the attacker
  computes through the device layers like any other image.

Figures (:meth:`ReconstructionAttack.evaluate`): mean ``ssim`` and ``psnr`` over the held-out images
with normal 95% intervals from the per-image std, and -- when dlib is installed -- ``identity_match``,
the fraction of reconstructions that dlib's face recognizer assigns to the right person among the
held-out identities (see :mod:`privsplit.attacks.face_match`), beside its ceiling (the originals),
chance 1/T and (with ``primary=``) the primary-label floor. References: SSIM/PSNR of the *mean training face* against every held-out image, i.e. what a
decoder that learned nothing about the input would reach.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from privsplit.attacks.base import Attack, AttackResult, Figure
from privsplit.attacks.common import primary_label_floor
from privsplit.data.faces import FaceData
from privsplit.metrics.image import psnr, ssim

__all__ = ["ReconConfig", "Decoder", "ReconstructionAttack", "save_reconstruction_grid", "mean_figure"]


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


def mean_figure(values: Tensor) -> Figure:
    """Mean with a normal 95% interval from the per-item std (``mean +- 1.96 std / sqrt(n)``)."""
    v = values.detach().double().flatten()
    v = v[torch.isfinite(v)]
    n = len(v)
    if n == 0:
        return Figure(float("nan"), (float("nan"), float("nan")), 0, percent=False)
    m = float(v.mean())
    half = 1.96 * float(v.std()) / math.sqrt(n) if n > 1 else float("nan")
    return Figure(m, (m - half, m + half), n, percent=False)


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


def _targets(images: Tensor) -> Tensor:
    """uint8 images -> [0, 1] float RGB (the decoder's targets; ``FaceData.inputs`` before normalising)."""
    return images.to(torch.float32).div_(255.0)


class ReconstructionAttack(Attack):
    """Train a decoder from the transmitted features back to the input image (see module docstring)."""

    name = "reconstruction"

    def __init__(self, embedding: nn.Module, *, config: ReconConfig = ReconConfig(),
                 embedding_name: str | None = None) -> None:
        self.embedding, self.config = embedding.eval(), config
        self.embedding_name = embedding_name or getattr(embedding, "kind", "embedding")
        self.decoder: Decoder | None = None
        self.history: list[float] = []
        self.mean_face: Tensor | None = None
        self.fit_seconds = 0.0

    # -- features ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _clean(self, data: FaceData, *, flip: bool = False) -> Tensor:
        """Noise-free client features of every image (mirrored when ``flip``)."""
        parts = []
        for s in range(0, len(data), self.config.batch_eval):
            x = data.inputs(torch.arange(s, min(len(data), s + self.config.batch_eval)))
            if flip:
                x = x.flip(-1)
            parts.append(self.embedding.client_features(x.contiguous(memory_format=torch.channels_last),
                                                        noisy=False).contiguous())
        return torch.cat(parts)

    # -- training ---------------------------------------------------------------------------------
    def fit(self, train: FaceData) -> ReconstructionAttack:
        """Train the decoder on the attacker's own images ``train`` (identities disjoint from the test)."""
        cfg = self.config
        t0 = time.perf_counter()
        torch.manual_seed(cfg.seed)
        copies = [self._clean(train)] + ([self._clean(train, flip=True)] if cfg.flip else [])
        feats = torch.stack(copies)                       # (copies, N, *shape)
        size = int(train.images.shape[-1])
        self.mean_face = _targets(train.images).mean(0, keepdim=True)
        # the linear start needs many more training pairs than transmitted numbers (else it memorises)
        dim = math.prod(feats.shape[2:])
        linear = cfg.linear_skip and dim <= cfg.linear_max_dim and 2 * dim <= feats.shape[0] * feats.shape[1]
        dec = Decoder(tuple(feats.shape[2:]), size, width=cfg.width, min_width=cfg.min_width, hidden=cfg.hidden,
                      start_size=cfg.start_size, conv_max_side=cfg.conv_max_side, linear=linear)
        with torch.no_grad():
            noisy = self.embedding.noise(feats.flatten(0, 1))  # one noisy draw of every (copy, image)
            dec.set_input_stats(noisy)
            if linear:
                targets = _targets(train.images)
                targets = torch.cat([targets] + ([targets.flip(-1)] if cfg.flip else []))
                dec.init_linear(noisy, targets, ridge=cfg.ridge)
                del targets
            del noisy
        lin_params = list(dec.linear.parameters()) if dec.linear is not None else []
        ids = {id(q) for q in lin_params}
        groups = [{"params": [q for q in dec.parameters() if id(q) not in ids], "lr": cfg.lr}]
        if lin_params and cfg.linear_lr_scale > 0:
            groups.append({"params": lin_params, "lr": cfg.lr * cfg.linear_lr_scale})
        else:
            for q in lin_params:
                q.requires_grad_(False)
        opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        n = feats.shape[1]
        steps_per_epoch = max(1, n // cfg.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups],
                                                    total_steps=max(1, cfg.epochs * steps_per_epoch), pct_start=0.1)
        gen = torch.Generator().manual_seed(cfg.seed)
        dec.train()
        self.history = []
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=gen)
            total, count = 0.0, 0
            for b in range(steps_per_epoch):  # drop the last partial batch (batch-norm needs > 1 image)
                idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                copy_idx = torch.randint(0, feats.shape[0], (len(idx),), generator=gen)
                with torch.no_grad():
                    z = self.embedding.noise(feats[copy_idx, idx])  # fresh noise, as the server would see
                    target = _targets(train.images[idx])
                    mirrored = copy_idx == 1
                    target[mirrored] = target[mirrored].flip(-1)
                out = dec(z)
                loss = F.mse_loss(out, target)
                if cfg.l1_weight:
                    loss = loss + cfg.l1_weight * F.l1_loss(out, target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total, count = total + loss.item() * len(idx), count + len(idx)
            self.history.append(total / max(1, count))
        self.decoder = dec.eval()
        self.fit_seconds = time.perf_counter() - t0
        return self

    # -- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def reconstruct(self, data: FaceData) -> Tensor:
        """Reconstructions (N x 3 x S x S in [0, 1]) of ``data`` from one fresh noisy draw of its features."""
        if self.decoder is None:
            raise RuntimeError("call fit() before reconstruct()")
        out = []
        feats = self._clean(data)
        for s in range(0, len(data), self.config.batch_eval):
            out.append(self.decoder(self.embedding.noise(feats[s : s + self.config.batch_eval])))
        return torch.cat(out) if out else torch.zeros(0, 3, data.images.shape[-1], data.images.shape[-1])

    def reconstructions(self, test: FaceData, n: int | None = None) -> tuple[Tensor, Tensor]:
        """``(originals, reconstructions)`` of the first ``n`` images of ``test``, both in [0, 1]."""
        sub = test if n is None else test.subset(torch.arange(min(n, len(test))))
        return _targets(sub.images), self.reconstruct(sub)

    def evaluate(self, test: FaceData, *, column: str = "identity", primary: str | None = None,
                 identity: bool | None = None, matcher: Any | None = None) -> AttackResult:
        """SSIM, PSNR (and dlib ``identity_match``) of the reconstructions of ``test``.

        Args:
            column: identity column for the identity check.
            primary: primary-label column; adds the identity check's primary-label floor (an attacker who
                knows only that label and guesses among the identities having it) to the references.
            identity: run the dlib identity check (default: ``config.identity`` and dlib installed).
            matcher: a :class:`~privsplit.attacks.face_match.FaceMatcher` to reuse (default: a new one).
        """
        if self.decoder is None or self.mean_face is None:
            raise RuntimeError("call fit() before evaluate()")
        cfg = self.config
        originals = _targets(test.images)
        recon = self.reconstruct(test)
        s, p = ssim(recon, originals), psnr(recon, originals)
        mean_face = self.mean_face.expand_as(originals)
        figures = {"ssim": mean_figure(s), "psnr": mean_figure(p)}
        refs: dict[str, Any] = {"ssim_mean_face": float(ssim(mean_face, originals).mean()),
                                "psnr_mean_face": float(psnr(mean_face, originals).mean())}
        details: dict[str, Any] = {"config": asdict(cfg), "train_loss": self.history, "fit_seconds": self.fit_seconds,
                                   "n_test": len(test), "transmitted_shape": list(self.decoder.in_shape),
                                   "linear_start": self.decoder.linear is not None}
        from privsplit.attacks.face_match import FaceMatcher, dlib_available

        want = cfg.identity if identity is None else identity
        if want and (matcher is not None or dlib_available()):
            rows = select_per_identity(test.labels[column], cfg.identity_per_identity, seed=cfg.seed)
            matcher = matcher or FaceMatcher()
            t0 = time.perf_counter()
            res = matcher.identity_match(test.images[rows], test.labels[column][rows], {"reconstruction": recon[rows]})
            figures["identity_match"] = res["reconstruction"]
            figures["identity_match_originals"] = res["originals"]
            refs["identity_chance"] = res["chance"]
            if primary is not None:
                refs["identity_primary_floor"] = primary_label_floor(test.labels[column][rows],
                                                                     test.labels[primary][rows])
            refs["identity_match_ceiling"] = res["originals"].value
            details["identity_check"] = {"identities": res["identities"], "images": len(rows),
                                         "detected": res["detected"], "fixed_box": res["box"],
                                         "seconds": time.perf_counter() - t0}
        elif want:
            details["identity_check"] = "skipped: dlib / face_recognition_models not installed"
        return AttackResult(self.name, self.embedding_name, figures, refs, details)


def select_per_identity(identities: Tensor, per_identity: int, *, seed: int = 0) -> Tensor:
    """Up to ``per_identity`` row indices of each identity that has >= 2 images (seeded choice, sorted)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.as_tensor(identities)
    keep = []
    for c in torch.unique(ids).tolist():
        rows = torch.nonzero(ids == c).flatten()
        if len(rows) < 2:
            continue
        keep.append(rows[torch.randperm(len(rows), generator=gen)[:per_identity]])
    return torch.cat(keep).sort().values if keep else torch.zeros(0, dtype=torch.int64)


def save_reconstruction_grid(originals: Tensor, rows: dict[str, Tensor], path: str | Path, *, scale: int = 2,
                             pad: int = 4, label_width: int = 120, title: str | None = None) -> Path:
    """A PNG like the paper's Fig. 11: originals on the first row, then one labelled row per embedding.

    Images are ``N x 3 x S x S`` in [0, 1] (or uint8), shown at ``scale`` x their size (nearest).
    The PNG is exactly ``label_width + N (S scale + pad) + pad`` pixels wide and
    ``title_h + (1 + len(rows)) (S scale + pad) + pad`` high (``title_h`` = 20 with a title, else 0).
    """
    from PIL import Image, ImageDraw, ImageFont

    def as_uint8(t: Tensor) -> np.ndarray:
        if t.dtype != torch.uint8:
            t = (t.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        return t.permute(0, 2, 3, 1).cpu().numpy()

    all_rows = {"original": originals, **rows}
    n, side = int(originals.shape[0]), int(originals.shape[-1])
    for name, imgs in all_rows.items():
        if tuple(imgs.shape) != tuple(originals.shape):
            raise ValueError(f"row '{name}' has shape {tuple(imgs.shape)}, originals {tuple(originals.shape)}")
    cell = side * scale
    title_h = 20 if title else 0
    width = label_width + n * (cell + pad) + pad
    height = title_h + len(all_rows) * (cell + pad) + pad
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    if title:
        draw.text((pad, 3), title, fill="black", font=font)
    for r, (name, imgs) in enumerate(all_rows.items()):
        y = title_h + pad + r * (cell + pad)
        draw.text((pad, y + cell // 2 - 8), name, fill="black", font=font)
        for i, img in enumerate(as_uint8(imgs)):
            tile = Image.fromarray(img).resize((cell, cell), Image.Resampling.NEAREST)
            canvas.paste(tile, (label_width + pad + i * (cell + pad), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
