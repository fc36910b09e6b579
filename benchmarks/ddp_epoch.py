"""Wall time of one LFW training epoch: one process vs ``torchrun --nproc-per-node 2`` (gloo, CPU).

    python benchmarks/ddp_epoch.py --out runs/ddp-bench [--epochs 1] [--dataset lfw]

Both runs train the same model with the same global batch (64) and seed from random weights; the
one-process run uses every core (``--threads 0``), each of the two processes one thread, so both use
all cores of this machine. Reported: the command's wall time (process start, data from the image cache,
training, evaluation, writing), the training loop's own seconds, held-out accuracy, and the 1-minute
load average before and after each run. Results go to OUT/ddp_epoch.json and stdout as a table.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def run(cmd: list[str], folder: Path) -> dict:
    shutil.rmtree(folder, ignore_errors=True)
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    subprocess.run(cmd + ["--out", str(folder)], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    m = json.loads((folder / "metrics.json").read_text())
    return {"command": " ".join(cmd + ["--out", str(folder)]), "wall_s": wall, "train_s": m["train_seconds"],
            "accuracy": m["test"]["accuracy"], "processes": m["processes"],
            "load_before": load0, "load_after": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/ddp-bench"))
    ap.add_argument("--dataset", default="lfw")
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()
    exe = str(Path(sys.executable).with_name("privsplit"))
    train = ["train", "--dataset", args.dataset, "--epochs", str(args.epochs)]
    rows = {"1 process": run([exe, *train, "--threads", "0"], args.out / "p1")}
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    rows["2 processes"] = run([torchrun, "--standalone", "--nproc-per-node", "2", "--no-python", exe, *train,
                               "--threads", "1"], args.out / "p2")
    (args.out / "ddp_epoch.json").write_text(json.dumps(rows, indent=1))
    print("| run | wall s | training loop s | held-out accuracy | load before / after |\n|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['wall_s']:.0f} | {r['train_s']:.0f} | {r['accuracy']:.1%} | "
              f"{r['load_before']:.1f} / {r['load_after']:.1f} |")


if __name__ == "__main__":
    main()
