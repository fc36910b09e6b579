"""Building the paper's embeddings from a trained primary model (Section III).

``build_embedding("advanced", model, layer="conv5_3", train=data, column="gender", dim=4, sigma=0.5)``:

1. **Siamese fine-tuning** (``siamese``, ``reduced-siamese``, ``advanced``): a copy of the model is
   fine-tuned with cross-entropy + ``weight`` x contrastive loss on the split-layer features
   (:class:`~privsplit.train.losses.SiameseObjective`). Pairs are formed *inside each batch* from a
   single forward pass (similar = same primary label), so an epoch costs about what a plain epoch
   costs -- no two-tower network. Defaults: 2 epochs, lr 5e-4, weight 1, margin 1 on L2-normalised
   features, all layers trainable (``trainable="extractor"`` freezes the analyzer, ``"all"`` trains both).
2. **Reduction** (``reduced-*``, ``advanced``): PCA (or an autoencoder) fitted on the split-layer
   features of the training images (eval mode, no augmentation) becomes a dense reduction layer at the
   end of the extractor and a dense reconstruction layer at the start of the analyzer (Fig. 3b). The
   analyzer is *not* retrained afterwards, as in the paper.
3. **Noise** (``noisy-reduced-simple``, ``advanced``): Gaussian noise on the reduced features, scaled
   by the per-dimension std of the training features by default (``scale="std"``), so ``sigma`` is
   in units of each feature's spread; ``scale="isotropic"`` gives the paper's symmetric Gaussian.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from privsplit.data.faces import FaceData
from privsplit.defenses.embedding import EMBEDDINGS, Embedding, embedding_kind
from privsplit.models.presets import PAPER_DIMS, paper_dim  # noqa: F401  (PAPER_DIMS: its old home)
from privsplit.defenses.keyed import KeyedGaussianNoise
from privsplit.defenses.noise import GaussianNoise
from privsplit.defenses.reduction import fit_reduction
from privsplit.models.split import split
from privsplit.train import distributed as ddp
from privsplit.train.artifacts import ModelArtifact, load_model, save_model
from privsplit.train.loops import LossFn, TrainConfig, class_weights, predict, train_classifier
from privsplit.train.losses import SiameseObjective

__all__ = ["SiameseConfig", "siamese_loss", "siamese_finetune", "cached_siamese", "extract_features", "build_embedding"]


#: deployment noise modes: fresh per call (the paper's) or keyed per photo (repeats carry identical noise)
NOISE_MODES = {"fresh": GaussianNoise, "keyed": KeyedGaussianNoise}


@dataclass(frozen=True)
class SiameseConfig:
    """The paper's Siamese fine-tuning (Section III-A): contrastive ``weight`` and ``margin``, which pairs
    and layers train, and the training loop's own settings."""

    weight: float = 1.0
    margin: float = 1.0
    pairs: str = "all"
    normalize: str = "l2"
    trainable: str = "all"  # "all" | "extractor"
    train: TrainConfig = TrainConfig(epochs=2, lr=5e-4, warmup_fraction=0.0)


def siamese_loss(extractor: nn.Module, analyzer: nn.Module, objective: SiameseObjective) -> LossFn:
    """A training-loop loss: one forward pass, CE on the logits + contrastive on the split features."""
    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        features = extractor(x)
        total, parts = objective(analyzer(features), features, y)
        return total, {k: float(v) for k, v in parts.items()}
    return loss_fn


def siamese_finetune(model: nn.Sequential, train: FaceData, *, column: str, layer: str,
                     config: SiameseConfig = SiameseConfig(), progress: bool = True) -> nn.Sequential:
    """Return a Siamese fine-tuned copy of ``model`` (the original is left untouched)."""
    tuned = copy.deepcopy(model)
    extractor, analyzer = split(tuned, at=layer)
    if config.trainable not in ("all", "extractor"):
        raise ValueError(f"trainable='{config.trainable}' unknown; use 'all' or 'extractor'")
    params = list((tuned if config.trainable == "all" else extractor).parameters())
    weights = class_weights(train.labels[column], len(train.classes[column]), config.train.class_weight)
    objective = SiameseObjective(weight=config.weight, margin=config.margin, pairs=config.pairs,  # type: ignore[arg-type]
                                 normalize=config.normalize, seed=config.train.seed,  # type: ignore[arg-type]
                                 class_weight=weights)
    train_classifier(tuned, train, column=column, config=config.train, params=params,
                     loss_fn=siamese_loss(extractor, analyzer, objective), progress=progress)
    return tuned.eval()


def cached_siamese(run: str | Path, art: ModelArtifact, train: FaceData, *, layer: str, cfg: SiameseConfig = SiameseConfig(),
                   progress: bool = True) -> nn.Sequential:
    """Siamese fine-tuned copy of the run's model, cached in ``run/siamese-<layer>-<hash>``."""
    key = hashlib.sha256(json.dumps({"layer": layer, **asdict(cfg)}, sort_keys=True, default=str).encode()).hexdigest()
    folder = Path(run) / f"siamese-{layer}-{key[:10]}"
    if (folder / "model.json").exists():
        return load_model(folder).model
    tuned = siamese_finetune(art.model, train, column=art.primary, layer=layer, config=cfg, progress=progress)
    if not ddp.is_main():  # under torchrun every process fine-tunes its shard; rank 0 writes
        return tuned
    save_model(folder, tuned, config=art.config, preprocess=art.preprocess, primary=art.primary, classes=art.classes,
               extra={"siamese": {"layer": layer, **asdict(cfg), "train": cfg.train.to_dict()}})
    return tuned


@torch.no_grad()
def extract_features(extractor: nn.Module, data: FaceData, *, batch_size: int = 256) -> torch.Tensor:
    """Split-layer activations of every image in ``data`` (eval mode)."""
    return predict(extractor, data.inputs, len(data), batch_size=batch_size)


def build_embedding(kind: str, model: nn.Sequential, *, layer: str, train: FaceData, column: str,
                    dim: int | None = None, sigma: float = 0.0, scale: str = "std", reduction: str = "pca",
                    siamese: SiameseConfig = SiameseConfig(), tuned: nn.Sequential | None = None,
                    noise_seed: int | None = None, noise_mode: str = "fresh", progress: bool = True) -> Embedding:
    """Build the named embedding (see module docstring).

    Args:
        dim: reduced dimension (default: the paper's choice for ``layer``, else 8).
        sigma: noise level for noisy embeddings (ignored otherwise).
        tuned: an already Siamese fine-tuned model to reuse (skips step 1).
        noise_seed: reproducible noise for experiments and tests; ``None`` (default, and always in
            deployment) draws fresh noise from the OS's CSPRNG.
        noise_mode: ``"fresh"`` (new noise on every call: repeated sends of one photo average it away) or
            ``"keyed"`` (noise keyed per photo on the device, :mod:`privsplit.defenses.keyed`).
    """
    if noise_mode not in NOISE_MODES:
        raise ValueError(f"noise_mode must be one of {sorted(NOISE_MODES)}, got {noise_mode!r}")
    spec = embedding_kind(kind)
    if kind not in EMBEDDINGS:
        raise ValueError(f"'{kind}' is a defence of privsplit.defenses.zoo: build it with build_defence('{kind}', ...)")
    if spec.noisy and sigma < 0:
        raise ValueError(f"sigma={sigma} must be >= 0")
    source = model
    if spec.siamese:
        source = tuned if tuned is not None else siamese_finetune(model, train, column=column, layer=layer,
                                                                  config=siamese, progress=progress)
    source = copy.deepcopy(source).eval()
    extractor, analyzer = split(source, at=layer)
    red, noise = None, None
    if spec.reduced:
        feats = extract_features(extractor, train)
        red = fit_reduction(reduction, feats, dim=dim or paper_dim(layer))
        if spec.noisy:
            with torch.no_grad():
                reduced = red.reduce(feats)
            noise = NOISE_MODES[noise_mode](sigma=sigma, scale=scale,  # type: ignore[arg-type]
                                  deterministic=noise_seed is not None, seed=noise_seed)
            if scale == "std":
                noise.fit_scale(reduced)
    return Embedding(kind=kind, layer=layer, extractor=extractor, analyzer=analyzer, reduction=red,
                     noise=noise).eval()
