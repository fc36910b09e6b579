"""Defences and baselines beyond the paper's embeddings, one registry entry each (``privsplit embed --kind``).

Every entry is ``DEFENCES.build(name, model, layer=..., train=..., column=..., knob=..., **options)`` ->
:class:`~privsplit.defenses.embedding.Embedding`, where ``train`` is the primary training split (the
*auxiliary* identities: never the attack split) and ``knob`` the defence's main parameter, larger =
more private. ``DEFENCES.get(name).knob`` names it and ``.knobs`` are the sweep values the Pareto
benchmark uses.

| name | objective on extractor / reduction | knob | paper |
|---|---|---|---|
| ``nopeek`` | CE + w * dCor(input, features) | w | Vepakomma et al., ICDMW 2020 |
| ``adversarial`` | CE + w * reversed identity CE (linear adversary on aux identities) | w | Li et al., DeepObfuscator 2019; Liu et al., PAN 2019 |
| ``siamese-adversarial`` | CE + contrastive (Osia et al. 2017) + w * reversed identity CE | w | Osia et al. 2017 + the above |
| ``gaussian-split`` | none; N(0, (s * std)^2) noise on the unreduced split features | s | e.g. Titcombe et al. 2021 ("noise defense") |
| ``learned-noise`` | frozen model; per-feature noise scale maximised under CE | w | Mireshghallah et al., Shredder, ASPLOS 2020 |
| ``blur`` / ``pixelate`` | input Gaussian blur (radius r) / pixelation (block b), model fine-tuned on it | r / b | e.g. McPherson et al. 2016 ("defeating image obfuscation") |
| ``send-image`` | none: the server receives the face image (no split) | -- | reference |
| ``calibrated-noise`` | the paper's ``advanced`` with sigma from :func:`privsplit.defenses.calibrate.calibrate_sigma` | target x floor | this project |
| ``robust-advanced`` | the paper's ``advanced`` (Siamese + PCA + noise sigma), then the analyzer alone trained on noisy features | sigma | this project (noise-aware training of the server side) |

Times: each trained entry costs about one epoch of the primary model per ``epochs`` (2 by default).
"""
from __future__ import annotations

import copy
import inspect
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from privsplit.data.faces import FaceData
from privsplit.defenses.embedding import Embedding
from privsplit.defenses.input_transforms import InputBlur, InputPixelate, InputTransform
from privsplit.defenses.noise import GaussianNoise
from privsplit.defenses.objectives import (
    DistanceCorrelation, FinetuneConfig, IdentityAdversary, SiameseTerm, noise_trained_analyzer, privacy_finetune,
)
from privsplit.models.split import split
from privsplit.registry import Registry

__all__ = ["DEFENCES", "Defence", "InputBlur", "InputPixelate", "build_defence"]


@dataclass(frozen=True)
class Defence:
    """A registry entry: ``build(model, *, layer, train, column, knob, **options) -> Embedding``."""

    name: str
    knob: str
    knobs: tuple[float, ...]
    build: Callable[..., Embedding]
    paper: str

    def __call__(self, model: nn.Sequential, **kwargs: Any) -> Embedding:
        return self.build(model, **kwargs)

    def takes(self, option: str) -> bool:
        """Whether the builder accepts keyword ``option`` (``config``: the model's fine-tuning budget,
        ``tuned``: a Siamese model to reuse, ``dim``, ``noise_mode``, ...): callers offer what they have."""
        return option in inspect.signature(self.build).parameters

    def options(self, **offered: Any) -> dict[str, Any]:
        """The subset of ``offered`` (None values dropped) that this defence's builder accepts."""
        return {k: v for k, v in offered.items() if v is not None and self.takes(k)}


DEFENCES: Registry[Defence] = Registry("defence", help_ref="help(privsplit.defenses.zoo)")


def _entry(name: str, knob: str, knobs: tuple[float, ...], paper: str) -> Callable[[Callable[..., Embedding]], Callable[..., Embedding]]:
    def add(fn: Callable[..., Embedding]) -> Callable[..., Embedding]:
        DEFENCES.register(name, Defence(name, knob, knobs, fn, paper))
        return fn
    return add


def build_defence(name: str, model: nn.Sequential, **kwargs: Any) -> Embedding:
    """``DEFENCES.get(name)(model, **kwargs)``."""
    return DEFENCES.get(name)(model, **kwargs)


def _embedding(kind: str, model: nn.Sequential, layer: str, noise: nn.Module | None = None) -> Embedding:
    extractor, analyzer = split(copy.deepcopy(model).eval(), at=layer)
    return Embedding(kind=kind, layer=layer, extractor=extractor, analyzer=analyzer, noise=noise).eval()


def _n_features(model: nn.Sequential, layer: str, train: FaceData) -> int:
    extractor, _ = split(model, at=layer)
    was = model.training
    model.eval()
    with torch.no_grad():
        n = int(extractor(train.inputs(torch.arange(1))).flatten(1).shape[1])
    model.train(was)
    return n


@_entry("nopeek", "weight", (0.5, 2.0, 8.0), "Vepakomma et al., NoPeek, ICDMW 2020")
def nopeek(model: nn.Sequential, *, layer: str, train: FaceData, column: str, knob: float,
           config: FinetuneConfig = FinetuneConfig()) -> Embedding:
    """NoPeek: fine-tune with CE + ``knob`` x distance correlation(input, split features)."""
    tuned, _ = privacy_finetune(model, train, layer=layer, column=column, terms={"dcor": (DistanceCorrelation(), knob)},
                                config=config)
    return _embedding("nopeek", tuned, layer)


def _adversarial(kind: str, model: nn.Sequential, *, layer: str, train: FaceData, column: str, knob: float,
                 siamese: float, config: FinetuneConfig, identity: str = "identity") -> Embedding:
    n_ids = int(torch.unique(train.labels[identity]).numel())
    terms: dict[str, tuple[nn.Module, float]] = {
        "adversary": (IdentityAdversary(_n_features(model, layer, train), n_ids), knob)}
    if siamese > 0:
        terms["siamese"] = (SiameseTerm(), siamese)
    tuned, log = privacy_finetune(model, train, layer=layer, column=column, terms=terms, identity=identity, config=config)
    emb = _embedding(kind, tuned, layer)
    emb.privacy_log = log  # type: ignore[assignment]  # last epoch's mean terms: the adversary's identity CE
    return emb


@_entry("adversarial", "weight", (0.3, 1.0, 3.0), "Li et al., DeepObfuscator, 2019; Liu et al., PAN, 2019")
def adversarial(model: nn.Sequential, *, layer: str, train: FaceData, column: str, knob: float,
                config: FinetuneConfig = FinetuneConfig()) -> Embedding:
    """Adversarial obfuscation: CE + ``knob`` x identity CE through gradient reversal (aux identities)."""
    return _adversarial("adversarial", model, layer=layer, train=train, column=column, knob=knob, siamese=0.0,
                        config=config)


@_entry("siamese-adversarial", "weight", (0.3, 1.0, 3.0), "Osia et al. 2017 + DeepObfuscator/PAN")
def siamese_adversarial(model: nn.Sequential, *, layer: str, train: FaceData, column: str, knob: float,
                        siamese: float = 1.0, config: FinetuneConfig = FinetuneConfig()) -> Embedding:
    """The paper's Siamese (contrastive on the primary label) + ``knob`` x reversed identity CE."""
    return _adversarial("siamese-adversarial", model, layer=layer, train=train, column=column, knob=knob,
                        siamese=siamese, config=config)


def _split_features(model: nn.Sequential, layer: str, data: FaceData) -> Tensor:
    from privsplit.defenses.build import extract_features

    return extract_features(split(model, at=layer)[0], data)


@_entry("gaussian-split", "sigma", (0.25, 0.5, 1.0, 2.0), "Titcombe et al., 'Practical defences against model "
        "inversion attacks for split neural networks', 2021")
def gaussian_split(model: nn.Sequential, *, layer: str, train: FaceData, column: str, knob: float) -> Embedding:
    """Plain Gaussian noise on the unreduced split features, ``knob`` x each feature's std."""
    noise = GaussianNoise(sigma=knob, scale="std").fit_scale(_split_features(model, layer, train))
    return _embedding("gaussian-split", model, layer, noise)


@_entry("learned-noise", "weight", (0.01, 0.1, 1.0), "Mireshghallah et al., Shredder, ASPLOS 2020")
def learned_noise(model: nn.Sequential, *, layer: str, train: FaceData, column: str, knob: float,
                  config: FinetuneConfig = FinetuneConfig()) -> Embedding:
    """Shredder: the model is frozen; a per-feature noise scale ``s`` (init: 0.1 x feature std) is trained with
    CE(analyzer(z + s * eps)) - ``knob`` x mean(log s) -- as much noise as the primary task tolerates.
    Deployed as ``GaussianNoise(sigma=1, scale="std", std=s)`` (fresh or keyed like any Gaussian noise)."""
    base = copy.deepcopy(model).eval()
    for p in base.parameters():
        p.requires_grad_(False)
    extractor, analyzer = split(base, at=layer)
    std = _split_features(base, layer, train).std(0).clamp_min(1e-6)
    log_s = nn.Parameter((0.1 * std).log())
    opt = torch.optim.Adam([log_s], lr=0.05)
    gen = torch.Generator().manual_seed(config.seed)
    for _ in range(config.epochs):
        for _, x, y in train.batches(config.batch_size, column=column, shuffle=True, generator=gen):
            with torch.no_grad():
                z = extractor(x)
            eps = torch.randn(z.shape, generator=gen)
            loss = F.cross_entropy(analyzer(z + log_s.exp() * eps), y) - knob * log_s.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    noise = GaussianNoise(sigma=1.0, scale="std", std=log_s.detach().exp())
    return _embedding("learned-noise", model, layer, noise)


def _obfuscated(kind: str, transform: InputTransform, model: nn.Sequential, layer: str, train: FaceData, column: str,
                config: FinetuneConfig) -> Embedding:
    """Fine-tune the whole model on transformed inputs (CE only), then split; the device runs the transform
    (a client bundle records it and rebuilds it: :mod:`privsplit.defenses.input_transforms`)."""
    wrapped = nn.Sequential(OrderedDict([("obfuscate", transform), *copy.deepcopy(model).named_children()]))
    tuned, _ = privacy_finetune(wrapped, train, layer=layer, column=column, terms={}, config=config)
    extractor, analyzer = split(nn.Sequential(OrderedDict(list(tuned.named_children())[1:])), at=layer)
    return Embedding(kind=kind, layer=layer, extractor=nn.Sequential(transform, extractor), analyzer=analyzer).eval()


@_entry("blur", "radius", (1.0, 2.0, 4.0), "McPherson et al., 'Defeating image obfuscation with deep learning', 2016")
def blur(model: nn.Sequential, *, layer: str, train: FaceData, column: str, knob: float,
         config: FinetuneConfig = FinetuneConfig(epochs=1)) -> Embedding:
    """Gaussian blur of the input (std ``knob`` px), the model fine-tuned on blurred images, simple embedding."""
    return _obfuscated("blur", InputBlur(knob), model, layer, train, column, config)


@_entry("pixelate", "block", (2.0, 4.0, 8.0), "McPherson et al., 'Defeating image obfuscation with deep learning', 2016")
def pixelate(model: nn.Sequential, *, layer: str, train: FaceData, column: str, knob: float,
             config: FinetuneConfig = FinetuneConfig(epochs=1)) -> Embedding:
    """Pixelation of the input (``knob`` px blocks), the model fine-tuned on it, simple embedding."""
    return _obfuscated("pixelate", InputPixelate(int(knob)), model, layer, train, column, config)


@_entry("send-image", "none", (0.0,), "reference: no split")
def send_image(model: nn.Sequential, *, layer: str, train: FaceData, column: str, knob: float = 0.0) -> Embedding:
    """The reference: the server receives the (normalised) face image and runs the whole model."""
    return Embedding(kind="send-image", layer="input", extractor=nn.Identity(),
                     analyzer=copy.deepcopy(model).eval()).eval()


@_entry("calibrated-noise", "target", (2.0, 1.5, 1.25), "this project (bisection over the audit's fast profile)")
def calibrated_noise(model: nn.Sequential, *, layer: str, train: FaceData, column: str, knob: float,
                     privacy: Callable[[nn.Module], tuple[float, float]], dim: int | None = None,
                     tuned: nn.Sequential | None = None) -> Embedding:
    """The paper's ``advanced`` embedding with sigma chosen so the worst case is <= ``knob`` x floor.

    ``privacy`` measures an embedding on auxiliary validation identities (never the targets); the
    Pareto benchmark passes the audit's fast profile. ``tuned``: a Siamese fine-tuned model to reuse.
    Smaller ``knob`` = more private. The calibration record is kept as ``embedding.calibration``.
    """
    from privsplit.defenses.build import build_embedding
    from privsplit.defenses.calibrate import calibrate_sigma

    emb = build_embedding("advanced", model, layer=layer, train=train, column=column, dim=dim, sigma=1.0,
                          tuned=tuned, progress=False)
    cal = calibrate_sigma(emb, privacy, target=knob)
    out = emb.with_noise(GaussianNoise(sigma=cal.sigma, scale="std", std=emb.noise.std))  # type: ignore[arg-type]
    out.kind = "calibrated-noise"
    out.calibration = cal  # type: ignore[assignment]
    return out


@_entry("robust-advanced", "sigma", (0.5, 0.75, 1.0, 2.0), "this project: Osia et al. 2017's advanced embedding + "
        "noise-aware training of the analyzer only")
def robust_advanced(model: nn.Sequential, *, layer: str, train: FaceData, column: str, knob: float,
                    dim: int | None = None, tuned: nn.Sequential | None = None, noise_mode: str = "fresh",
                    analyzer_config: FinetuneConfig = FinetuneConfig(epochs=5, lr=1e-3)) -> Embedding:
    """The paper's ``advanced`` embedding at sigma ``knob`` whose analyzer is then trained on noisy features
    (:func:`~privsplit.defenses.objectives.noise_trained_analyzer`). The device side -- and so what any
    attacker receives -- equals ``advanced`` at the same sigma; only the server's accuracy changes.
    ``tuned``: a Siamese fine-tuned model to reuse; ``noise_mode``: fresh or keyed deployment noise."""
    from privsplit.defenses.build import build_embedding

    emb = build_embedding("advanced", model, layer=layer, train=train, column=column, dim=dim, sigma=knob,
                          tuned=tuned, noise_mode=noise_mode, progress=False)
    emb.analyzer_training = noise_trained_analyzer(emb, train, column=column, config=analyzer_config)  # type: ignore[assignment]
    emb.kind = "robust-advanced"
    return emb
