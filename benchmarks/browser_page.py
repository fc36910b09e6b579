"""`privsplit serve --ui` in headless Chromium: page load -> first label time, browser vs Python features, screenshot.

Serves SERVER + CLIENT bundles on 127.0.0.1 (the OIP app + the page), opens the page in Debian's headless
Chromium (Selenium), uploads the photos and records: time to the extractor being ready and to the first label
(page clock, from navigation start), the largest |browser - Python| pre-noise feature difference, and whether the
label of the clean features (Python analyzer) matches the page's label. Photos: N LFW images (converted to PNG,
as the browser test does) and, for the screenshot only, synthetic faces (no third-party photos in the repo).

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/browser_page.py \
        --bundles runs/lfw-gender/bundles/advanced-conv5_3 --lfw ../shared/data/lfw_gender --n 8 \
        --out docs/browser_page.json --screenshot docs/figures/browser_ui.png
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser_support import Recorder, run_page  # noqa: E402

from privsplit.data.synthetic import render_face, sample_identity  # noqa: E402
from privsplit.data.transforms import normalize  # noqa: E402
from privsplit.defenses.bundles import load_client_bundle, load_server_bundle  # noqa: E402
from privsplit.runtime.client import load_images  # noqa: E402
from privsplit.runtime.server import ServerThread, create_app  # noqa: E402
from privsplit.runtime.ui import mount_ui  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundles", type=Path, required=True, help="folder with client/ and server/")
    ap.add_argument("--lfw", type=Path, required=True)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--screenshot", type=Path, required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    client, server = load_client_bundle(args.bundles / "client"), load_server_bundle(args.bundles / "server")
    tmp = Path(tempfile.mkdtemp())
    rows = [line.split(",")[0] for line in (args.lfw / "labels.csv").read_text().splitlines()[1:]]
    photos = []
    for i, rel in enumerate(rows[:: len(rows) // args.n][: args.n]):
        Image.open(args.lfw / rel).convert("RGB").save(tmp / f"lfw{i}.png")
        photos.append(tmp / f"lfw{i}.png")
    rng = np.random.default_rng(0)
    synthetic = []
    for i in range(4):
        Image.fromarray(render_face(sample_identity(rng, "MF"[i % 2]), "neutral", rng, size=160)).save(tmp / f"face{i}.png")
        synthetic.append(tmp / f"face{i}.png")
    app = Recorder(mount_ui(create_app(server, api_keys=[]), args.bundles / "client"))
    with ServerThread(app) as srv:
        got = run_page(srv.url, photos)
        shot = run_page(srv.url, synthetic, screenshot=args.screenshot)
    pix = load_images(photos, client.preprocess)
    with torch.no_grad():
        clean = client.extractor(normalize(torch.from_numpy(pix).permute(0, 3, 1, 2), client.preprocess))
        probs = torch.softmax(server.analyzer(clean), dim=1)  # analyzer = reconstruction + remaining layers
    want = clean.reshape(len(photos), -1).numpy()
    page = np.array([r["clean"] for r in got["results"]], dtype=np.float32)
    t = got["page_timings_ms"]
    result = {
        "bundle": str(args.bundles), "photos": len(photos), "k": int(want.shape[1]),
        # ms since navigation start (performance.now()); first_label includes Selenium's file upload
        "page_ms": {"script_start": t["start"], "extractor_ready": t["ready"], "first_label": t["firstLabel"]},
        "wall_seconds": {"navigation_to_ready": got["seconds_to_ready"], "navigation_to_all_labels": got["seconds_to_all_labels"]},
        "max_abs_feature_diff": float(np.abs(page - want).max()), "max_abs_feature": float(np.abs(want).max()),
        "python_clean_labels": [server.classes[i] for i in probs.argmax(1).tolist()],
        "page_labels": [r["label"] for r in got["results"]],
        "posts": sum(r["method"] == "POST" for r in app.requests),
        "post_bytes": [len(r["body"]) for r in app.requests if r["method"] == "POST"],
        "photo_bytes": [p.stat().st_size for p in photos],
        "screenshot": str(args.screenshot), "screenshot_labels": [r.get("label") for r in shot["results"]],
    }
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
