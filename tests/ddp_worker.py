"""Worker for tests/test_distributed.py: one training run, launched alone or under torchrun.

    python tests/ddp_worker.py OUT [--stop-after 1] [--resume] [--batch-norm]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_faces  # noqa: E402

from privsplit.models.vgg import VGGConfig, build_model  # noqa: E402
from privsplit.train import distributed as ddp  # noqa: E402
from privsplit.train.loops import TrainConfig, train_classifier  # noqa: E402


def run(out: Path, *, stop_after: int | None = None, resume: bool = False, batch_norm: bool = False) -> None:
    torch.set_num_threads(1)
    data = make_faces(n=40, size=32, n_ids=8)
    torch.manual_seed(0)
    model = build_model(VGGConfig(width=0.125, input_size=32, batch_norm=batch_norm, dropout=0.0))
    cfg = TrainConfig(epochs=2, batch_size=12, lr=1e-3, class_weight="none", seed=0)  # 40 rows: a ragged last batch
    res = train_classifier(model, data, column="gender", config=cfg, checkpoint=out / "ckpt" / "last",
                           resume=resume, progress=False, stop_after_epoch=stop_after, eval_data=data)
    if ddp.is_main():
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / "weights.safetensors"))
        (out / "history.json").write_text(json.dumps({"history": res.history, "world": ddp.world()}))


if __name__ == "__main__":
    args = sys.argv[1:]
    stop = int(args[args.index("--stop-after") + 1]) if "--stop-after" in args else None
    run(Path(args[0]), stop_after=stop, resume="--resume" in args, batch_norm="--batch-norm" in args)
