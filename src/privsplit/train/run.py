"""A complete primary-task run: data -> identity-disjoint splits -> train -> evaluate -> artifact.

Used by ``privsplit train``, ``privsplit demo`` and later by reproduction reports.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from privsplit.data.faces import FaceData, load_faces
from privsplit.data.loaders import load_manifest
from privsplit.data.splits import Splits, identity_disjoint_split
from privsplit.data.transforms import Preprocess
from privsplit.models.vgg import VGGConfig, build_model
from privsplit.train import distributed as ddp
from privsplit.train.artifacts import save_model
from privsplit.train.loops import TrainConfig, evaluate, train_classifier

if TYPE_CHECKING:
    from privsplit.train.artifacts import ModelArtifact

__all__ = ["RunSpec", "RunResult", "DATASET_DEFAULTS", "prepare_data", "run_training", "load_run", "attack_group"]

#: per-dataset defaults: primary column, sensitive column, architecture, input size, attack split rule
DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "lfw": {"primary": "gender", "arch": "vgg16", "size": 64, "attack_min_images": 20, "attack_count": None},
    # CK+: 3 near-identical frames per sequence, so attacker train/test images never share a sequence
    "ckplus": {"primary": "expression", "arch": "vgg_s", "size": 48, "attack_min_images": 12, "attack_count": 20,
               "attack_group": "sequence"},
    "synthetic": {"primary": "gender", "arch": "vgg16", "size": 64, "attack_min_images": 20, "attack_count": 20},
    "celeba": {"primary": "gender", "arch": "vgg16", "size": 64, "attack_min_images": 30, "attack_count": 100},
}


@dataclass
class RunSpec:
    """One ``privsplit train`` run: dataset, labels, architecture, training and attack-split settings
    (``None`` fields take the dataset's defaults, see :meth:`resolved`)."""

    dataset: str = "synthetic"
    data_root: str | None = None
    primary: str | None = None
    sensitive: str = "identity"
    arch: str | None = None
    width: float = 0.25
    size: int | None = None
    attack_min_images: int | None = None
    attack_count: int | None = None
    test_fraction: float = 0.15
    skip_bad: bool = False
    align: str = "none"  # "none" (centre crop: pre-aligned data) or a face detector (photos: detect + align)
    init: str | None = None  # backbone folder (``privsplit pretrain``) to fine-tune from; None = from scratch
    train: TrainConfig = field(default_factory=TrainConfig)

    def resolved(self) -> RunSpec:
        """Fill unset fields from :data:`DATASET_DEFAULTS`."""
        d = DATASET_DEFAULTS.get(self.dataset, DATASET_DEFAULTS["lfw"])
        return RunSpec(**{**asdict(self), "train": self.train,
                          "primary": self.primary or d["primary"], "arch": self.arch or d["arch"],
                          "size": self.size or d["size"],
                          # aligned runs skip photos without a detectable face (counted in dataset.skipped)
                          "skip_bad": self.skip_bad or self.align != "none",
                          "attack_min_images": self.attack_min_images or d["attack_min_images"],
                          "attack_count": self.attack_count or d["attack_count"]})


@dataclass
class PreparedData:
    """A loaded dataset with its identity-disjoint splits and the three subsets they select."""

    data: FaceData
    splits: Splits
    train: FaceData
    test: FaceData
    attack: FaceData


@dataclass
class RunResult:
    """Where a run was saved, its test metrics and its training seconds."""

    folder: Path
    metrics: dict[str, Any]
    seconds: float


def prepare_data(spec: RunSpec, *, progress: bool = True) -> PreparedData:
    """Load ``spec``'s dataset and make (or reuse) its identity-disjoint train/test/attack splits."""
    spec = spec.resolved()
    manifest = load_manifest(spec.dataset, spec.data_root)
    pre = Preprocess(size=spec.size, crop=manifest.crop, align=spec.align)
    if spec.init:  # a backbone fixes the input size and normalisation it was trained with (e.g. VGG-Face's)
        bb = Preprocess.from_dict(json.loads((Path(spec.init) / "model.json").read_text())["preprocess"])
        pre = Preprocess(size=bb.size, crop=manifest.crop, mean=bb.mean, std=bb.std, align=spec.align)
    data = load_faces(manifest, pre, columns=[spec.primary, spec.sensitive], required=[spec.primary],
                      skip_bad=spec.skip_bad, progress=progress)
    splits = identity_disjoint_split(data.manifest.column(spec.sensitive), attack_min_images=spec.attack_min_images,
                                     attack_count=spec.attack_count, test_fraction=spec.test_fraction, seed=spec.train.seed)
    return PreparedData(data, splits, data.subset(splits.train), data.subset(splits.test), data.subset(splits.attack))


def run_training(spec: RunSpec, out: str | Path, *, resume: bool = False, progress: bool = True,
                 prepared: PreparedData | None = None) -> RunResult:
    """Train the primary model of ``spec`` into ``out`` (artifact + splits + checkpoint)."""
    spec = spec.resolved()
    out = Path(out)
    ddp.setup()
    if ddp.is_main():
        out.mkdir(parents=True, exist_ok=True)
    with ddp.main_first():  # rank 0 decodes (and caches) the images, the others then read the cache
        p = prepared or prepare_data(spec, progress=progress and ddp.is_main())
    num_classes = len(p.data.classes[spec.primary])
    torch.manual_seed(spec.train.seed)  # weight init must not depend on what ran before in this process
    if spec.init:
        from privsplit.backbone.init import init_from_backbone

        model, cfg, backbone = init_from_backbone(spec.init, num_classes=num_classes,
                                                  input_size=p.data.preprocess.size)
    else:
        cfg = VGGConfig(arch=spec.arch, num_classes=num_classes, width=spec.width, input_size=spec.size)
        model, backbone = build_model(cfg), {"method": "scratch"}
    t0 = time.perf_counter()
    result = train_classifier(model, p.train, column=spec.primary, config=spec.train, eval_data=p.test,
                              checkpoint=out / "checkpoint" / "last", resume=resume, progress=progress)
    metrics = {"test": result.report.to_dict(), "train_seconds": result.seconds,
               "wall_seconds": time.perf_counter() - t0, "history": result.history}
    if len(p.attack):
        metrics["attack_identities"] = evaluate(model, p.attack, column=spec.primary).to_dict()
    metrics["processes"] = ddp.world()
    if not ddp.is_main():  # under torchrun only rank 0 writes
        return RunResult(out, metrics, result.seconds)
    p.splits.to_json(out / "splits.json")
    m = p.data.manifest
    save_model(out, model, config=cfg, preprocess=p.data.preprocess, primary=spec.primary,
               classes=p.data.classes[spec.primary],
               extra={"sensitive": spec.sensitive,
                      "dataset": {"name": m.name, "label": m.label, "synthetic": m.synthetic, "n": len(p.data),
                                  "fingerprint": m.fingerprint(), "skipped": len(p.data.skipped),
                                  "sizes": {"train": len(p.train), "test": len(p.test), "attack": len(p.attack)}},
                      "run": {**asdict(spec), "train": spec.train.to_dict()}, "metrics": metrics,
                      "splits": "splits.json", "backbone": backbone})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return RunResult(out, metrics, result.seconds)


def load_run(folder: str | Path, *, data_root: str | None = None, progress: bool = True) -> tuple[ModelArtifact, PreparedData]:
    """Reload a run's model artifact and its data with the *saved* identity-disjoint splits."""
    from privsplit.train.artifacts import load_model

    folder = Path(folder)
    art = load_model(folder)
    run = art.manifest["run"]
    manifest = load_manifest(run["dataset"], data_root or run.get("data_root"))
    data = load_faces(manifest, art.preprocess, columns=[art.primary, run["sensitive"]], required=[art.primary],
                      skip_bad=run.get("skip_bad", False), progress=progress)
    if data.classes[art.primary] != art.classes:
        raise ValueError(f"label map of '{art.primary}' differs from the model's: {data.classes[art.primary]} "
                         f"vs {art.classes}")
    splits = Splits.from_json(folder / art.manifest["splits"], data.manifest.column(run["sensitive"]))
    return art, PreparedData(data, splits, data.subset(splits.train), data.subset(splits.test),
                             data.subset(splits.attack))


def attack_group(art: ModelArtifact) -> str | None:
    """The column that groups near-duplicate images of the run's dataset (CK+: ``sequence``), if any."""
    return DATASET_DEFAULTS.get(art.manifest["run"]["dataset"], {}).get("attack_group")
