"""torchrun with 2 processes (gloo, CPU) gives the one-process result; checkpoints/resume still work."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).parent / "ddp_worker.py"
#: float-rounding tolerance between 1 and 2 processes (gradients summed in another order), batch_norm=False
ATOL, RTOL = 1e-5, 1e-4


def _env() -> dict[str, str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}


def _launch(out: Path, *extra: str, procs: int = 2) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
           str(WORKER), str(out), *extra]
    if procs == 1:
        cmd = [sys.executable, str(WORKER), str(out), *extra]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "history.json").read_text())


@pytest.mark.timeout(150)
def test_two_processes_equal_one_and_resume(tmp_path):
    one = _launch(tmp_path / "one", procs=1)
    # two processes, interrupted after epoch 1 and resumed from rank 0's checkpoint
    _launch(tmp_path / "two", "--stop-after", "1")
    assert not (tmp_path / "two" / "ckpt" / "last.tmp").exists()
    two = _launch(tmp_path / "two", "--resume")
    assert two["world"] == 2 and one["world"] == 1
    w1, w2 = load_file(str(tmp_path / "one" / "weights.safetensors")), load_file(str(tmp_path / "two" / "weights.safetensors"))
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=ATOL, rtol=RTOL, msg=k)
    for a, b in zip(one["history"], two["history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=RTOL)
        assert a["eval_accuracy"] == b["eval_accuracy"]


def test_not_distributed_is_a_no_op(monkeypatch):
    from privsplit.train import distributed as ddp

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert ddp.setup() is False and ddp.world() == 1 and ddp.is_main()
    rows = torch.arange(5)
    assert torch.equal(ddp.shard(rows), rows) and ddp.shard_weight(5, 5) == 1.0
    assert ddp.all_sum([1.0, 2.0]) == [1.0, 2.0]
