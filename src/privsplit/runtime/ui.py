"""``privsplit serve --ui``: a web page that runs the client extractor in the browser (onnxruntime-web).

The page (``ui_static/``) decodes the user's photo, centre-crops and resizes it exactly like the Python client
(Pillow's resize ported integer-for-integer to ``preprocess.js``), runs the client bundle's exported ONNX
extractor with onnxruntime-web (WebAssembly, one thread, vendored files: no CDN), adds the bundle's Gaussian
noise and POSTs only the ``k`` noisy numbers to ``/v2/models/{name}/infer`` (OIP v2 JSON). The photo never
leaves the page.

Noise modes, as in the Python client (:mod:`privsplit.defenses.keyed`, ``docs/keyed_noise.md``): **keyed**
(``keyed.js``: HMAC-SHA256 of the crop's SHA-256 under a per-browser device key in WebCrypto, a
non-extractable key kept in the origin's IndexedDB and never sent: the same photo always gets the same
noise) or **fresh** (``crypto.getRandomValues``, new noise every send). The page starts in the bundle's
mode (``keyed-gaussian`` -> keyed, ``gaussian`` -> fresh; ``noise_mode=`` overrides it) and the user can
switch it on the page.

Every script, the WebAssembly binary and the model are pinned by Subresource Integrity (SHA-384, computed
here at start-up); a Content-Security-Policy allows this origin only. The page carries no API key: ``--ui`` is
for loopback demos, or behind the provider's own authentication (a proxy that authenticates users and
forwards ``/v2`` with its key).

The routes live in their own router so the OIP service (:mod:`privsplit.runtime.server`) stays unchanged::

    app = create_app(server_bundle)
    mount_ui(app, "bundles/x/client")   # GET /ui/, /ui/app.js, /ui/client.onnx, ...
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse, Response

from privsplit.defenses.bundles import INPUT_NAME, OUTPUT_NAMES, BundleError, ClientBundle, load_client_bundle

__all__ = ["UI_STATIC", "VENDOR_FILES", "UiAssetsMissing", "client_onnx", "ui_router", "mount_ui"]

UI_STATIC = Path(__file__).with_name("ui_static")
VENDOR_FILES = ("ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm")
PAGE_FILES = {"app.js": "text/javascript", "preprocess.js": "text/javascript", "keyed.js": "text/javascript",
              "style.css": "text/css"}
#: the page's noise modes by the bundle's noise kind
NOISE_MODES = {"gaussian": "fresh", "keyed-gaussian": "keyed", "none": "none"}
_TYPES = {".mjs": "text/javascript", ".wasm": "application/wasm"}


class UiAssetsMissing(FileNotFoundError):
    """The vendored onnxruntime-web files are not in the package (a source checkout without ``npm ci``)."""


def _sri(data: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


def client_onnx(bundle: ClientBundle, folder: Path, onnx_path: str | Path | None = None) -> Any:
    """The client extractor's ONNX file as an ``OnnxExtractor``: ``onnx_path``, else ``FOLDER/client.onnx``, else
    exported once into the cache (``privsplit export``'s code); refused unless exported from this very bundle."""
    from privsplit.edge.onnx_runtime import OnnxExtractor

    path = Path(onnx_path) if onnx_path else folder / "client.onnx"
    if not path.is_file():
        if onnx_path:
            raise FileNotFoundError(f"ONNX extractor not found: {path}")
        from privsplit.config import cache_dir
        from privsplit.edge.export import export_client_onnx

        path = cache_dir() / "ui" / f"client-{bundle.embedding_id}.onnx"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            export_client_onnx(bundle, path)
    ext = OnnxExtractor(path, threads=1)
    ext.check_bundle(bundle)
    return ext


@dataclass(frozen=True)
class _Asset:
    body: bytes
    media_type: str
    cache: str = "no-cache"


def _vendor() -> dict[str, bytes]:
    missing = [n for n in VENDOR_FILES if not (UI_STATIC / "vendor" / n).is_file()]
    if missing:
        raise UiAssetsMissing(f"--ui needs the vendored onnxruntime-web files ({', '.join(missing)}) in "
                              f"{UI_STATIC / 'vendor'}: in a source checkout run `npm ci --prefix web && npm run "
                              "--prefix web vendor` (or install a built wheel)")
    return {n: (UI_STATIC / "vendor" / n).read_bytes() for n in VENDOR_FILES}


def _noise(bundle: ClientBundle, mode: str | None) -> dict[str, Any]:
    """The page's noise config: sigma, per-feature std (or None), and the starting mode (bundle's, or ``mode``)."""
    spec = bundle.manifest.get("noise", {})
    kind = spec.get("kind")
    if kind not in NOISE_MODES:
        raise BundleError(f"the page adds Gaussian noise (fresh or keyed) only; this bundle's noise is {kind!r}")
    if mode not in (None, "keyed", "fresh"):
        raise ValueError(f"noise_mode must be 'keyed', 'fresh' or None (the bundle's own), got {mode!r}")
    if kind == "none":
        return {"sigma": 0.0, "noise_std": None, "noise_mode": "none"}
    std = spec.get("std") if spec.get("scale") == "std" else None
    return {"sigma": float(spec["sigma"]), "noise_std": None if std is None else [float(v) for v in _flat(std)],
            "noise_mode": mode or NOISE_MODES[kind]}


def _flat(x: Any) -> list[Any]:
    return [v for item in x for v in _flat(item)] if isinstance(x, list) else [x]


def _page(bundle: ClientBundle, prefix: str, ext: Any, files: dict[str, bytes], vendor: dict[str, bytes],
          noise_mode: str | None = None) -> tuple[bytes, str]:
    """index.html with the bundle's config and every SRI hash filled in; and its CSP header."""
    noise = _noise(bundle, noise_mode)
    pre, onnx = bundle.preprocess, ext.path.read_bytes()
    if pre.align != "none":
        raise BundleError(f"this bundle detects and aligns faces ({pre.align}); the page only centre-crops, so it "
                          "would feed the extractor other framings than training did")
    config = {
        "model_name": bundle.model_name, "embedding_id": bundle.embedding_id,
        "onnx_url": f"{prefix}/client.onnx", "onnx_sri": _sri(onnx), "onnx_sha256": hashlib.sha256(onnx).hexdigest(),
        "wasm_url": f"{prefix}/vendor/{VENDOR_FILES[1]}",
        "wasm_sri": _sri(vendor[VENDOR_FILES[1]]),
        "input_name": ext.input_name, "output_name": ext.output_name, "feature_name": INPUT_NAME,
        "outputs": list(OUTPUT_NAMES), "infer_url": f"/v2/models/{quote(bundle.model_name, safe='')}/infer",
        "size": pre.size, "crop": pre.crop, "mean": list(pre.mean), "std": list(pre.std),
        "feature_shape": list(bundle.feature_shape), "k": math.prod(bundle.feature_shape),
        **noise,
    }
    importmap = json.dumps({"imports": {"onnxruntime-web": f"{prefix}/vendor/{VENDOR_FILES[0]}"},
                            "integrity": {f"{prefix}/vendor/{VENDOR_FILES[0]}": _sri(vendor[VENDOR_FILES[0]]),
                                          **{f"{prefix}/{n}": _sri(files[n]) for n in ("preprocess.js", "keyed.js")}}})
    html = (UI_STATIC / "index.html").read_text()
    for key, value in {"{{STYLE_SRI}}": _sri(files["style.css"]), "{{APP_SRI}}": _sri(files["app.js"]),
                       "{{IMPORTMAP}}": importmap,
                       "{{CONFIG}}": json.dumps(config).replace("<", "\\u003c")}.items():
        html = html.replace(key, value)
    map_hash = base64.b64encode(hashlib.sha256(importmap.encode()).digest()).decode()
    csp = ("default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
           f"script-src 'self' 'wasm-unsafe-eval' 'sha256-{map_hash}'; style-src 'self'; connect-src 'self'; "
           "img-src 'self' blob: data:; media-src 'self' blob: mediastream:")
    return html.encode(), csp


def ui_router(client_bundle: str | Path, *, onnx_path: str | Path | None = None, prefix: str = "/ui",
              noise_mode: str | None = None) -> APIRouter:
    """Routes of the page: ``{prefix}/`` (the page), its scripts, the vendored runtime and ``client.onnx``.

    ``noise_mode``: the page's starting noise mode, ``"keyed"`` or ``"fresh"`` (default: the bundle's)."""
    folder = Path(client_bundle)
    bundle = load_client_bundle(folder)
    vendor = _vendor()
    ext = client_onnx(bundle, folder, onnx_path)
    onnx = ext.path.read_bytes()
    files = {n: (UI_STATIC / n).read_bytes() for n in PAGE_FILES}
    html, csp = _page(bundle, prefix, ext, files, vendor, noise_mode)
    assets = {"": _Asset(html, "text/html; charset=utf-8", "no-store"), "client.onnx": _Asset(onnx, "application/octet-stream")}
    assets |= {n: _Asset(b, t) for n, (b, t) in ((n, (files[n], PAGE_FILES[n])) for n in PAGE_FILES)}
    assets |= {f"vendor/{n}": _Asset(b, _TYPES[Path(n).suffix]) for n, b in vendor.items()}
    headers = {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
               "Cross-Origin-Resource-Policy": "same-origin"}
    router = APIRouter()

    @router.get(prefix, include_in_schema=False)
    def redirect() -> Response:
        return RedirectResponse(f"{prefix}/")

    @router.get(prefix + "/{name:path}", include_in_schema=False)
    def asset(name: str) -> Response:
        a = assets.get(name)
        if a is None:
            return Response(b'{"error":"not found"}', 404, media_type="application/json")
        return Response(a.body, media_type=a.media_type, headers={**headers, "Cache-Control": a.cache})

    return router


def mount_ui(app: FastAPI, client_bundle: str | Path, **options: Any) -> FastAPI:
    """Add the page's routes to an app from :func:`privsplit.runtime.server.create_app`; returns ``app``."""
    app.include_router(ui_router(client_bundle, **options))
    return app
