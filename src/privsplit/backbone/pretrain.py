"""Library side of ``privsplit pretrain``: build an identity-bearing backbone artifact.

Methods (registered in :data:`METHODS`): ``distill`` (reproduce a teacher's descriptors, see
:mod:`privsplit.backbone.distill`), ``margin`` (ArcFace/CosFace identity training, see
:mod:`privsplit.backbone.margin`) and ``vggface`` (convert published VGG-Face weights, see
:mod:`privsplit.backbone.vggface`). Each writes a model artifact whose manifest has a ``backbone``
section (method, data, provenance) that ``privsplit train --init`` records in its run.

Auxiliary data only: the distillation and margin methods train on the *primary training split* of
the dataset's identity-disjoint splits (same rule and seed as ``privsplit train``), so neither the
attack identities nor the held-out test people are ever seen.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from privsplit.backbone.distill import descriptor_agreement, distill
from privsplit.backbone.teachers import TEACHERS, Teacher, teacher_descriptors
from privsplit.registry import Registry
from privsplit.train import distributed as ddp
from privsplit.train.artifacts import save_model
from privsplit.train.loops import TrainConfig
from privsplit.train.run import PreparedData, RunSpec, prepare_data

if TYPE_CHECKING:
    from torch import nn

    from privsplit.models.vgg import VGGConfig

__all__ = ["METHODS", "PretrainOptions", "pretrain", "pretrain_distill", "pretrain_margin", "pretrain_vggface"]

METHODS: Registry[Any] = Registry("pretraining method", help_ref="privsplit pretrain --help")


@dataclass(frozen=True)
class PretrainOptions:
    """Options of every method (each uses the ones it needs).

    Args:
        teacher: distillation teacher, a name in :data:`~privsplit.backbone.teachers.TEACHERS`.
        max_images: distil on at most this many auxiliary images (bounds the teacher's time).
        kind, dim: margin loss (``cosface``/``arcface``) and embedding size of identity training.
        weights: the converted VGG-Face file (``.safetensors`` or a tensors-only ``.pth``).
        bgr: the VGG-Face file expects BGR input (Caffe); the DAG conversion is RGB.
    """

    teacher: str = "dlib"
    max_images: int | None = None
    kind: str = "cosface"
    dim: int = 128
    weights: str | None = None
    bgr: bool = False
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=10, lr=2e-3, class_weight="none"))


def pretrain(method: str, spec: RunSpec, out: str | Path, *, options: PretrainOptions = PretrainOptions(),
             prepared: PreparedData | None = None, resume: bool = False, progress: bool = True) -> Path:
    """Build a backbone with the registered ``method`` into ``out``; returns ``out``."""
    return METHODS.get(method)(spec, out, options=options, prepared=prepared, resume=resume, progress=progress)


def _aux_subset(p: PreparedData, max_images: int | None, seed: int) -> Any:
    """The primary training split, or a seeded random ``max_images`` of it."""
    if max_images is None or max_images >= len(p.train):
        return p.train
    gen = torch.Generator().manual_seed(seed)
    return p.train.subset(torch.randperm(len(p.train), generator=gen)[:max_images].sort().values)


def _dataset_record(spec: RunSpec, p: PreparedData, used: Any) -> dict[str, Any]:
    m = p.data.manifest
    return {"name": m.name, "label": m.label, "fingerprint": m.fingerprint(), "rows_used": len(used),
            "identities_used": len(set(used.labels[spec.sensitive].tolist())), "split_seed": spec.train.seed,
            "excluded": "attack and test identities of the identity-disjoint split"}


def pretrain_distill(spec: RunSpec, out: str | Path, *, teacher: Teacher | str = "dlib",
                     config: TrainConfig = TrainConfig(epochs=10, lr=2e-3, class_weight="none"),
                     prepared: PreparedData | None = None, resume: bool = False, progress: bool = True,
                     agreement_sample: int = 256, max_images: int | None = None, center: bool = False) -> Path:
    """Distil ``teacher`` into ``spec``'s architecture on the primary training split; write the artifact.

    ``max_images`` distils on a seeded random subset of the split (the teacher costs ~80 ms per image
    on one core, so this bounds the build time).
    """
    spec = spec.resolved()
    teacher = TEACHERS.build(teacher) if isinstance(teacher, str) else teacher
    ddp.setup()
    with ddp.main_first():  # rank 0 decodes and asks the teacher; the others read its caches
        p = prepared or prepare_data(spec, progress=progress and ddp.is_main())
        aux = _aux_subset(p, max_images, spec.train.seed)
        t0 = time.perf_counter()
        targets = teacher_descriptors(teacher, aux.images, progress=progress and ddp.is_main())
    t_teacher = time.perf_counter() - t0

    out = Path(out)
    model, cfg, result = distill(aux, targets, arch=spec.arch or "vgg16", width=spec.width, config=config, center=center,
                                 checkpoint=out / "checkpoint" / "last", resume=resume, progress=progress)
    mean = targets.float().mean(0) if center else None  # see cosine_distill_loss
    agree = {"train": descriptor_agreement(model, aux, targets, mean=mean)}
    if len(p.test) and ddp.is_main():  # unseen people: does the student generalise? (a sample: the teacher is slow)
        sample = p.test.subset(range(min(len(p.test), agreement_sample)))
        agree["test_people_sample"] = descriptor_agreement(model, sample, teacher_descriptors(
            teacher, sample.images, progress=progress), mean=mean)
    backbone = {"method": "distill", **teacher.provenance(), "dim": teacher.dim, "centred_targets": center, "dataset": _dataset_record(spec, p, aux),
                "train": asdict(config), "teacher_seconds": t_teacher, "train_seconds": result.seconds,
                "cosine_agreement": agree, "history": result.history}
    return _save_backbone(out, model, cfg, p, primary=f"{teacher.name}-descriptor", dim=teacher.dim,
                          backbone=backbone)


def _save_backbone(out: Path, model: nn.Module, cfg: VGGConfig, p: PreparedData, *, primary: str, dim: int,
                   backbone: dict[str, Any]) -> Path:
    """Write the backbone artifact (its ``dim`` outputs named ``d0..``) on the main process only; ``out``."""
    if ddp.is_main():
        save_model(out, model, config=cfg, preprocess=p.data.preprocess, primary=primary,
                   classes=[f"d{i}" for i in range(dim)], extra={"backbone": backbone})
    return out


@METHODS.register("distill")
def _distill(spec: RunSpec, out: str | Path, *, options: PretrainOptions, **kw: Any) -> Path:
    return pretrain_distill(spec, out, teacher=options.teacher, config=options.train, max_images=options.max_images,
                            **kw)


@METHODS.register("margin")
def pretrain_margin(spec: RunSpec, out: str | Path, *, options: PretrainOptions = PretrainOptions(),
                    prepared: PreparedData | None = None, resume: bool = False, progress: bool = True) -> Path:
    """CosFace/ArcFace identity training on the primary training split's people (e.g. CelebA's)."""
    from privsplit.backbone.margin import train_identity

    spec = spec.resolved()
    ddp.setup()
    with ddp.main_first():
        p = prepared or prepare_data(spec, progress=progress and ddp.is_main())
    out = Path(out)
    model, cfg, result = train_identity(p.train, column=spec.sensitive, kind=options.kind, dim=options.dim,
                                        arch=spec.arch or "vgg16", width=spec.width, config=options.train,
                                        checkpoint=out / "checkpoint" / "last", resume=resume, progress=progress)
    backbone = {"method": "margin", "loss": options.kind, "dim": options.dim, "dataset": _dataset_record(spec, p, p.train),
                "identities": len(set(p.train.labels[spec.sensitive].tolist())), "train": asdict(options.train),
                "train_seconds": result.seconds, "history": result.history}
    return _save_backbone(out, model, cfg, p, primary=f"{options.kind}-embedding", dim=options.dim,
                          backbone=backbone)


@METHODS.register("vggface")
def pretrain_vggface(spec: RunSpec, out: str | Path, *, options: PretrainOptions = PretrainOptions(),
                     prepared: PreparedData | None = None, resume: bool = False, progress: bool = True) -> Path:
    """Convert a VGG-Face file (no training): our VGG-16 at width 1.0, 224 px, no BatchNorm."""
    from safetensors.torch import load_file

    from privsplit.backbone.vggface import VGGFACE_PREPROCESS, load_vggface
    from privsplit.train.artifacts import sha256_file

    if not options.weights:
        raise ValueError("--method vggface needs --weights PATH (a converted VGG-Face state_dict, e.g. vgg_face_dag.pth)")
    path = Path(options.weights)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: download/convert VGG-Face first (see docs/backbone.md)")
    state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu",
                                                                                   weights_only=True)
    model, cfg = load_vggface(state, bgr=options.bgr)
    backbone = {"method": "vggface", "source": str(path.resolve()), "source_sha256": sha256_file(path),
                "bgr": options.bgr}
    save_model(out, model, config=cfg, preprocess=VGGFACE_PREPROCESS, primary="vggface-identity",
               classes=[f"id{i}" for i in range(cfg.num_classes)], extra={"backbone": backbone})
    return Path(out)
