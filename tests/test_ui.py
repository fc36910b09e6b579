"""``privsplit serve --ui``: the page's routes, its Pillow-exact resize in JavaScript, and a real headless
Chromium run (Selenium + Debian's chromium/chromium-driver; skipped outside CI when missing, required with CI=true).
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from browser_support import Recorder, browser_missing, have_node, in_ci, run_page
from runtime_support import build_bundles, client_bundle, face_images

pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from privsplit.runtime.ui import UI_STATIC, VENDOR_FILES, UiAssetsMissing  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FEATURE_ATOL = 1e-4  # |browser - Python| pre-noise features, plus FEATURE_RTOL * |feature|: float32 WASM vs torch
FEATURE_RTOL = 1e-3


def _need(reason: str | None) -> None:
    if reason:
        if in_ci():
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)


def _vendor_missing() -> str | None:
    missing = [n for n in VENDOR_FILES if not (UI_STATIC / "vendor" / n).is_file()]
    return (f"vendored onnxruntime-web files missing ({', '.join(missing)}): npm ci --prefix web && npm run --prefix "
            "web vendor") if missing else None


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    pairs = build_bundles(tmp_path_factory.mktemp("ui"), copies=2)
    return pairs


def test_js_resize_is_pillows_exactly(tmp_path):
    """preprocess.js (run by node) gives Pillow's uint8 pixels for crop + resize, for sizes that hit every branch."""
    _need(None if have_node() else "node is not installed")
    rng = np.random.default_rng(0)
    cases = []
    for w, h, size, crop in [(250, 250, 64, 0.6), (500, 375, 64, 0.6), (301, 301, 64, 1.0), (97, 131, 32, 1.0),
                             (1000, 700, 64, 0.6), (40, 40, 64, 1.0), (777, 513, 48, 0.5), (64, 64, 64, 1.0)]:
        img = rng.integers(0, 256, (h // 5 + 1, w // 5 + 1, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BICUBIC))
        from privsplit.data.transforms import Preprocess, prepare_image

        want = prepare_image(img, Preprocess(size=size, crop=crop))
        rgba = np.concatenate([img, np.full((h, w, 1), 255, np.uint8)], axis=2)
        cases.append({"w": w, "h": h, "size": size, "crop": crop, "rgba": base64.b64encode(rgba.tobytes()).decode(),
                      "want": base64.b64encode(want.tobytes()).decode()})
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    script = f"""
import {{ centreBox, cropRGB, pilResize }} from {json.dumps((UI_STATIC / 'preprocess.js').as_uri())};
import {{ readFileSync }} from "node:fs";
const out = [];
for (const c of JSON.parse(readFileSync({json.dumps(str(tmp_path / 'cases.json'))}))) {{
  const rgba = Uint8Array.from(Buffer.from(c.rgba, "base64")), want = Buffer.from(c.want, "base64");
  const box = centreBox(c.w, c.h, c.crop);
  const got = pilResize(cropRGB(rgba, c.w, box), box.side, box.side, c.size);
  let diff = 0; for (let i = 0; i < want.length; i++) diff = Math.max(diff, Math.abs(got[i] - want[i]));
  out.push(diff);
}}
console.log(JSON.stringify(out));
"""
    (tmp_path / "check.mjs").write_text(script)
    diffs = json.loads(subprocess.run(["node", str(tmp_path / "check.mjs")], capture_output=True, text=True,
                                      check=True).stdout)
    assert diffs == [0] * len(cases)


def _app(pair, **kw):
    from privsplit.runtime.server import create_app
    from privsplit.runtime.ui import mount_ui

    return mount_ui(create_app(pair[1], api_keys=[]), pair[0], **kw)


def test_page_routes_pin_every_script_and_the_model(bundles):
    _need(_vendor_missing())
    from fastapi.testclient import TestClient

    with TestClient(_app(bundles[0])) as http:
        page = http.get("/ui/")
        assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
        html = page.text
        cfg = json.loads(re.search(r'id="privsplit-config">(.*?)</script>', html, re.S).group(1))
        onnx = http.get("/ui/client.onnx").content
        assert cfg["onnx_sha256"] == hashlib.sha256(onnx).hexdigest() and cfg["k"] == 4
        assert cfg["embedding_id"] == client_bundle(bundles[0][0]).embedding_id
        # SRI on the stylesheet, the app, and (import map) the runtime + preprocess.js; the wasm and model via fetch
        for name in ("style.css", "app.js"):
            body = http.get(f"/ui/{name}").content
            assert f'integrity="sha384-{base64.b64encode(hashlib.sha384(body).digest()).decode()}"' in html
        imap = json.loads(re.search(r'<script type="importmap">(.*?)</script>', html, re.S).group(1))
        for url, sri in imap["integrity"].items():
            assert sri == "sha384-" + base64.b64encode(hashlib.sha384(http.get(url).content).digest()).decode()
        wasm = http.get(cfg["wasm_url"]).content
        assert cfg["wasm_sri"] == "sha384-" + base64.b64encode(hashlib.sha384(wasm).digest()).decode()
        assert "https://" not in html and "http://" not in html  # nothing from elsewhere
        assert http.get("/ui/../server.json").status_code == 404 and http.get("/ui/vendor/x.js").status_code == 404


def test_page_refuses_an_onnx_file_of_another_embedding(bundles, tmp_path):
    _need(_vendor_missing())
    from privsplit.defenses.bundles import BundleError
    from privsplit.edge.export import export_client_onnx

    export_client_onnx(client_bundle(bundles[1][0]), tmp_path / "other.onnx")
    with pytest.raises(BundleError, match="not from this client bundle"):
        _app(bundles[0], onnx_path=tmp_path / "other.onnx")


def _photos(tmp_path: Path, n: int) -> list[Path]:
    """LFW photos (as PNG: JPEG decoders may differ by a grey level) when the data is there, else synthetic."""
    from privsplit.config import data_root

    root = data_root()
    lfw = None if root is None else root / "lfw_gender"
    paths = []
    if lfw is not None and (lfw / "labels.csv").exists():
        rows = [line.split(",")[0] for line in (lfw / "labels.csv").read_text().splitlines()[1:]]
        for i, rel in enumerate(rows[:: max(1, len(rows) // n)][:n]):
            Image.open(lfw / rel).convert("RGB").save(tmp_path / f"lfw{i}.png")
            paths.append(tmp_path / f"lfw{i}.png")
    else:
        for i, img in enumerate(face_images(n)):
            Image.fromarray(np.asarray(Image.fromarray(img).resize((120, 100)))).save(tmp_path / f"syn{i}.png")
            paths.append(tmp_path / f"syn{i}.png")
    return paths


def test_browser_extracts_noises_and_sends_only_k_floats(bundles, tmp_path):
    """Headless Chromium: the page's pre-noise features equal the Python client's; every request goes to the test
    server; every POST is an OIP infer request with exactly k floats and no pixels."""
    _need(browser_missing() or _vendor_missing())
    from privsplit.data.transforms import normalize
    from privsplit.runtime.client import load_images
    from privsplit.runtime.server import ServerThread

    app = Recorder(_app(bundles[0]))
    photos = _photos(tmp_path, 6)
    bundle = client_bundle(bundles[0][0])
    with ServerThread(app) as server:
        got = run_page(server.url, photos)
        page_requests = list(app.requests)  # before the Python client and tritonclient add theirs
        sent = np.array([r["noisy"] for r in got["results"]], dtype=np.float32)
        others = _labels_elsewhere(server.url, bundle, sent)
    k = math.prod(bundle.feature_shape)
    results = got["results"]
    assert [r.get("error") for r in results] == [None] * len(photos) and len(results) == len(photos)
    pix = load_images(photos, bundle.preprocess)
    with torch.no_grad():
        want = bundle.extractor(normalize(torch.from_numpy(pix).permute(0, 3, 1, 2), bundle.preprocess)).numpy()
    clean = np.array([r["clean"] for r in results], dtype=np.float32)
    np.testing.assert_allclose(clean, want.reshape(len(photos), -1), atol=FEATURE_ATOL, rtol=FEATURE_RTOL)
    scale = bundle.noise.sigma * (1.0 if bundle.noise.std is None else bundle.noise.std.numpy().reshape(-1))
    assert 0.3 < float(((sent - clean) / scale).std()) < 3  # fresh noise of the bundle's level
    # where the page went: only the test server
    urls = [r["url"] for r in got["requests"]]
    assert urls and all(u.startswith(server.url + "/") or u.startswith("blob:") for u in urls), urls
    posts = [r for r in page_requests if r["method"] == "POST"]
    assert len(posts) == len(photos)
    for post in posts:
        assert post["path"] == f"/v2/models/{bundle.model_name}/infer"
        body = json.loads(post["body"])
        assert set(body) == {"id", "inputs", "outputs"} and len(body["inputs"]) == 1
        tensor = body["inputs"][0]
        assert tensor["shape"] == [1, k] and len(tensor["data"]) == k
        assert all(isinstance(v, float) for v in tensor["data"])
        assert len(post["body"]) < 200 + 30 * k  # a few hundred bytes: no image could fit
    assert {r["label"] for r in results} <= {"F", "M"}
    assert all(0.5 <= r["probability"] <= 1 for r in results)
    # the same features sent by the Python client and by stock tritonclient get the page's labels
    page_labels = [r["label"] for r in results]
    assert others == {"python client": page_labels, "tritonclient": page_labels}


def _labels_elsewhere(url: str, bundle, sent: np.ndarray) -> dict[str, list[str]]:
    """Labels for the page's own noisy features from the Python client and from ``tritonclient.http``."""
    import tritonclient.http as triton_http

    from privsplit.runtime.client import Client

    feats = sent.reshape(len(sent), *bundle.feature_shape)
    python = [p.label for p in Client(bundle, url).infer_features(feats)]
    triton = triton_http.InferenceServerClient(url=url.removeprefix("http://"))
    try:
        inp = triton_http.InferInput("features", list(feats.shape), "FP32")
        inp.set_data_from_numpy(feats, binary_data=True)
        res = triton.infer(bundle.model_name, [inp], outputs=[triton_http.InferRequestedOutput("label")],
                           parameters={"embedding_id": bundle.embedding_id})
        labels = [v.decode() if isinstance(v, bytes) else v for v in res.as_numpy("label").tolist()]
    finally:
        triton.close()
    return {"python client": python, "tritonclient": labels}


TEST_KEY = bytes(range(32))  # docs/keyed_noise.md's test key
SET_TEST_KEY = """const done = arguments[arguments.length - 1], k = window.__privsplit.keyed;
k.importKey(Uint8Array.from({length: 32}, (_, i) => i)).then(k.saveDeviceKey).then(() => done(null), (e) => done(String(e)));"""
VECTORS_THEN_FRESH = """const [digests, png, done] = arguments;
(async () => {
  const s = window.__privsplit, k = s.keyed, key = await k.importKey(Uint8Array.from({length: 32}, (_, i) => i));
  const hex = (bytes) => Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  const normals = [];
  for (const d of digests) normals.push(Array.from(await k.keyedNormals(key, Uint8Array.from(d.match(/../g), (h) => parseInt(h, 16)), 6)));
  document.getElementById("noise-mode").value = "fresh";  // the user switches mode on the page
  const blob = new Blob([Uint8Array.from(atob(png), (c) => c.charCodeAt(0))], {type: "image/png"});
  await s.handle("fresh 1", blob);
  await s.handle("fresh 2", blob);
  return {zeros: hex(await k.sha256(new Uint8Array(64 * 64 * 3))), normals};
})().then(done, (e) => done({error: String(e)}));"""


@pytest.fixture(scope="module")
def keyed_bundles(tmp_path_factory):
    return build_bundles(tmp_path_factory.mktemp("ui-keyed"), dim=16, noise_mode="keyed")  # 48 numbers: float32 steps matter


def test_page_starts_in_the_bundles_noise_mode(bundles, keyed_bundles):
    _need(_vendor_missing())
    from fastapi.testclient import TestClient

    def config(pair, **kw) -> dict:
        with TestClient(_app(pair, **kw)) as http:
            html = http.get("/ui/").text
        return json.loads(re.search(r'id="privsplit-config">(.*?)</script>', html, re.S).group(1))

    assert config(bundles[0])["noise_mode"] == "fresh" and config(keyed_bundles[0])["noise_mode"] == "keyed"
    assert config(keyed_bundles[0], noise_mode="fresh")["noise_mode"] == "fresh"
    with pytest.raises(ValueError, match="noise_mode must be"):
        _app(bundles[0], noise_mode="sometimes")


def test_browser_keyed_noise_matches_the_python_client_and_the_published_vectors(keyed_bundles, tmp_path):
    """Headless Chromium, keyed bundle: the page's WebCrypto normals are the published vectors (float64 within a few
    ulps -- V8's libm is not glibc's -- and bit-identical as float32, what the device adds); the same photo twice
    sends identical numbers, another photo other numbers; with the same key the Python client's keyed noise on the
    page's clean features gives the page's noisy features bit for bit; switched to fresh, repeats differ."""
    _need(browser_missing() or _vendor_missing())
    from test_keyed_noise import VECTORS

    from privsplit.defenses import MemoryKeyStore, load_client_bundle
    from privsplit.defenses.keyed import crop_hash
    from privsplit.runtime.client import load_images
    from privsplit.runtime.server import ServerThread

    a, b = _photos(tmp_path, 2)
    a_again = tmp_path / "again.png"
    a_again.write_bytes(a.read_bytes())
    png = base64.b64encode(a.read_bytes()).decode()
    with ServerThread(_app(keyed_bundles[0])) as server:
        got = run_page(server.url, [a, a_again, b], before=SET_TEST_KEY, after=VECTORS_THEN_FRESH,
                       after_args=([v[1] for v in VECTORS], png))
    assert got["before"] is None and "error" not in got["after"], got["after"]
    assert got["after"]["zeros"] == VECTORS[0][1]
    for (_, _, want), page in zip(VECTORS, got["after"]["normals"]):
        want, page = np.array(want), np.array(page)
        assert np.all(np.abs(page - want) <= 4 * np.spacing(np.abs(want))), (page, want)
        np.testing.assert_array_equal(page.astype(np.float32), want.astype(np.float32))
    keyed, fresh = got["results"][:3], got["results"][3:]
    assert [r.get("error") for r in got["results"]] == [None] * 5
    assert [r["noiseMode"] for r in got["results"]] == ["keyed"] * 3 + ["fresh"] * 2
    hashes = [crop_hash(p).hex() for p in load_images([a, a_again, b], client_bundle(keyed_bundles[0][0]).preprocess)]
    assert [r["cropSha256"] for r in keyed] == hashes and hashes[0] == hashes[1] != hashes[2]
    assert keyed[0]["noisy"] == keyed[1]["noisy"] != keyed[2]["noisy"]
    bundle = load_client_bundle(keyed_bundles[0][0])
    bundle.noise.key_store = MemoryKeyStore(TEST_KEY)
    clean = torch.tensor([r["clean"] for r in keyed], dtype=torch.float32).reshape(3, *bundle.feature_shape)
    with torch.no_grad():
        want = bundle.noise(clean, crop_hashes=[bytes.fromhex(h) for h in hashes]).reshape(3, -1).numpy()
    np.testing.assert_array_equal(np.array([r["noisy"] for r in keyed], dtype=np.float32), want)
    assert fresh[0]["noisy"] != fresh[1]["noisy"] and keyed[0]["noisy"] not in (fresh[0]["noisy"], fresh[1]["noisy"])


def test_serve_ui_needs_a_matching_client_bundle(bundles):
    from typer.testing import CliRunner

    from privsplit.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["serve", str(bundles[0][1]), "--ui"])
    assert res.exit_code != 0 and "--ui needs --client-bundle" in res.output
    res = runner.invoke(app, ["serve", str(bundles[0][1]), "--ui", "--client-bundle", str(bundles[1][0])])
    assert res.exit_code != 0 and "client bundle" in res.output and "server bundle" in res.output
    res = runner.invoke(app, ["serve", str(bundles[0][1]), "--ui", "--client-bundle", str(bundles[0][0]),
                              "--ui-noise", "sometimes"])
    assert res.exit_code != 0 and "--ui-noise must be bundle, keyed or fresh" in res.output
