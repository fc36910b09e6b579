"""Reconstruction attack (Osia et al. 2017, Section IV-B "deep visualization", Fig. 11).

The attacker owns face images of *other* people (in practice the run's ``train`` split, identities
disjoint from the evaluated ones) and the device software, so it can compute the features the server
receives for its own images and train a **decoder** from those features back to the image (see
:mod:`privsplit.attacks.decoder` for the architecture, its ridge start and its training).

Two views of the same decoder:

* :class:`ReconstructionAttack` -- *image quality*, the paper's Fig. 11 (``privsplit attack --kind
  reconstruction`` and the reproduce report): fit the decoder on other people, evaluate on held-out
  people. Figures: mean ``ssim`` and ``psnr`` over the held-out images with normal 95% intervals from the
  per-image std, and -- when dlib is installed -- ``identity_match``, the fraction of reconstructions that
  dlib's face recognizer assigns to the right person among the held-out identities with leave-one-out
  templates (see :mod:`privsplit.attacks.face_match`), beside its ceiling (the originals), chance 1/T and
  (with ``primary=``) the primary-label floor. References: SSIM/PSNR of the *mean training face* against
  every held-out image, i.e. what a decoder that learned nothing about the input would reach.
* :class:`ReconstructionIdentityAttack` -- registered as ``"reconstruction"`` in
  :data:`~privsplit.attacks.base.ATTACKS`: the identity attack of the audit. ``fit(enrol)`` trains the
  decoder on ``aux`` (required) and enrols the targets' *original* enrolment photos in the independent
  dlib recognizer; queries are decoded and identified (:mod:`privsplit.attacks.recognizer`).

Honesty of the attack: training sees the features *as the server does* (fresh noise at every step on
clean features computed once); evaluation decodes what the server holds (one fresh draw per image, or
the average of ``repeats`` draws); ``flip=True`` doubles the attacker's data with mirrored images.
"""
from __future__ import annotations

import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from privsplit.attacks.base import ATTACKS, Attack, AttackResult
from privsplit.attacks.common import aux_key, primary_label_floor, shared
from privsplit.attacks.decoder import Decoder, ReconConfig, decoder_features, to_unit, train_decoder
from privsplit.attacks.recognizer import RecognizerAttack, mean_figure
from privsplit.attacks.face_match import FaceMatcher
from privsplit.data.faces import FaceData
from privsplit.metrics.image import psnr, ssim

__all__ = ["ReconConfig", "Decoder", "ReconstructionAttack", "ReconstructionIdentityAttack",
           "save_reconstruction_grid", "mean_figure", "select_per_identity"]


class ReconstructionAttack(Attack):
    """Train a decoder from the transmitted features back to the input image; judge image quality."""

    name = "reconstruction"

    def __init__(self, embedding: nn.Module, *, config: ReconConfig = ReconConfig(),
                 embedding_name: str | None = None) -> None:
        self.embedding, self.config = embedding.eval(), config
        self.embedding_name = embedding_name or getattr(embedding, "kind", "embedding")
        self.decoder: Decoder | None = None
        self.history: list[float] = []
        self.mean_face: Tensor | None = None
        self.fit_seconds = 0.0

    def fit(self, train: FaceData, *, column: str = "identity") -> ReconstructionAttack:
        """Train the decoder on the attacker's own images ``train`` (identities disjoint from the test);
        ``column`` is unused (the decoder needs no labels)."""
        t0 = time.perf_counter()
        self.mean_face = to_unit(train.images).mean(0, keepdim=True)
        self.decoder, self.history = train_decoder(self.embedding, train, self.config)
        self.fit_seconds = time.perf_counter() - t0
        return self

    @torch.no_grad()
    def decode(self, received: Tensor) -> Tensor:
        """Images (N x 3 x S x S in [0, 1]) from received features (N x *shape), in batches."""
        if self.decoder is None:
            raise RuntimeError("call fit() before decoding")
        out = [self.decoder(received[s : s + self.config.batch_eval])
               for s in range(0, len(received), self.config.batch_eval)]
        size = self.decoder.size
        return torch.cat(out) if out else torch.zeros(0, 3, size, size)

    @torch.no_grad()
    def reconstruct(self, data: FaceData) -> Tensor:
        """Reconstructions (N x 3 x S x S in [0, 1]) of ``data`` from one fresh noisy draw of its features."""
        if self.decoder is None:
            raise RuntimeError("call fit() before reconstruct()")
        feats = decoder_features(self.embedding, data, batch_size=self.config.batch_eval)
        return self.decode(self.embedding.noise(feats))

    def reconstructions(self, test: FaceData, n: int | None = None) -> tuple[Tensor, Tensor]:
        """``(originals, reconstructions)`` of the first ``n`` images of ``test``, both in [0, 1]."""
        sub = test if n is None else test.subset(torch.arange(min(n, len(test))))
        return to_unit(sub.images), self.reconstruct(sub)

    def evaluate(self, test: FaceData, *, column: str = "identity", primary: str | None = None,
                 identity: bool | None = None, matcher: FaceMatcher | None = None) -> AttackResult:
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
        originals = to_unit(test.images)
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



@ATTACKS.register("reconstruction")
class ReconstructionIdentityAttack(RecognizerAttack):
    """Decoder trained on ``aux`` -> dlib recognizer enrolled on the targets' original photos.

    Budget: the decoder's (``config``: :class:`~privsplit.attacks.decoder.ReconConfig`, 20 epochs by
    default) plus one dlib description per enrolment photo and per query. Repeated queries are decoded
    from the averaged features (less noise, same decoder).
    """

    name = "reconstruction"

    def __init__(self, embedding: nn.Module, *, aux: FaceData | None = None, seed: int = 0,
                 embedding_name: str | None = None, config: ReconConfig = ReconConfig(),
                 matcher: FaceMatcher | None = None) -> None:
        super().__init__(embedding, aux=aux, seed=seed, embedding_name=embedding_name, matcher=matcher)
        # the decoder's own dlib check (leave-one-out on held-out people) is not this attack's figure
        self.config = replace(config, identity=False, seed=config.seed + seed)
        self.reconstruction = ReconstructionAttack(embedding, config=self.config, embedding_name=embedding_name)

    def learn(self, aux: FaceData) -> None:
        # the decoder depends on the aux people only: an audit's validation and query fits of one seed share it
        rec = self.reconstruction
        key = ("decoder", aux_key(self.embedding, aux), repr(asdict(self.config)))
        rec.decoder, rec.history, rec.mean_face, rec.fit_seconds = shared(
            self.embedding, key, lambda: (rec.fit(aux).decoder, rec.history, rec.mean_face, rec.fit_seconds))
        self.mean_face = self.reconstruction.mean_face
        self.stats["train_loss"] = self.reconstruction.history

    def images(self, received: Tensor, *, repeats: int = 1) -> Tensor:
        return self.reconstruction.decode(received)

    def reconstructions(self, test: FaceData, n: int | None = None) -> tuple[Tensor, Tensor]:
        """``(originals, reconstructions)`` for a grid (Fig. 11), as :meth:`ReconstructionAttack.reconstructions`."""
        return self.reconstruction.reconstructions(test, n)

    @property
    def details(self) -> dict[str, Any]:
        """The base details plus this run's decoder config, for the report."""
        return {**super().details, "config": asdict(self.config)}


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
