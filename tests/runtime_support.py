"""Helpers shared by the runtime tests: tiny bundles, a real uvicorn server, raw HTTP calls, free ports,
and the module-scoped fixtures ``bundles`` / ``pair`` / ``model`` (import them into a test module to use them)."""
from __future__ import annotations

import functools
import http.client
import json
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="the runtime tests need the serve extra: pip install -e '.[dev]'")
pytest.importorskip("uvicorn", reason="the runtime tests need the serve extra: pip install -e '.[dev]'")

from conftest import make_faces  # noqa: E402

from privsplit.runtime.server import ServerThread, create_app  # noqa: E402

SEED = 7
API_KEY = "test-key-0123456789"


def build_bundles(folder: Path, *, sigma: float = 0.5, dim: int = 4, copies: int = 1,
                  noise_mode: str = "fresh") -> list[tuple[Path, Path]]:
    """Tiny noisy-reduced-simple embedding (~1 s) saved ``copies`` times (each with its own embedding id)."""
    from privsplit.defenses import build_embedding, save_bundles
    from privsplit.models import vgg16

    torch.manual_seed(0)
    faces = make_faces()
    model = vgg16(width=0.0625, input_size=32).eval()
    emb = build_embedding("noisy-reduced-simple", model, layer="conv5_3", train=faces, column="gender", dim=dim,
                          sigma=sigma, noise_mode=noise_mode, progress=False)
    return [save_bundles(emb, folder / f"b{i}", config=model.config, preprocess=faces.preprocess,
                         classes=["F", "M"], primary="gender") for i in range(copies)]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Two exports of the tiny embedding (two embedding ids), built once per test module."""
    return build_bundles(tmp_path_factory.mktemp("bundles"), copies=2)


@pytest.fixture(scope="module")
def pair(bundles):
    """(client folder, server folder) of the first export."""
    return bundles[0]


@pytest.fixture(scope="module")
def model(pair):
    """The served model's name."""
    return server_bundle(pair[1]).model_name


def free_port() -> int:
    """A loopback TCP port free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def face_images(n: int = 6, seed: int = 3) -> np.ndarray:
    """uint8 N x 32 x 32 x 3 faces (the bundles' input size)."""
    return make_faces(n=n, seed=seed).images.permute(0, 2, 3, 1).contiguous().numpy()


@functools.lru_cache(maxsize=None)
def server_bundle(path: Path):
    """The loaded server bundle at ``path`` (cached: loading builds the VGG, ~0.7 s on a busy CPU)."""
    from privsplit.defenses import load_server_bundle

    return load_server_bundle(path)


@functools.lru_cache(maxsize=None)
def client_bundle(path: Path):
    """The loaded client bundle at ``path`` in deployment mode (cached; its noise is stateless)."""
    from privsplit.defenses import load_client_bundle

    return load_client_bundle(path)


@functools.lru_cache(maxsize=None)
def _seeded_client_bundle(path: Path):
    from privsplit.defenses import load_client_bundle

    return load_client_bundle(path, deterministic_noise=True, seed=SEED)


def seeded_client_bundle(path: Path):
    """The client bundle with test-mode noise from ``SEED``, its noise sequence restarted."""
    bundle = _seeded_client_bundle(path)
    bundle.noise.reset()
    return bundle


def reference(client_dir: Path, server_dir: Path, images: np.ndarray) -> np.ndarray:
    """In-process pipeline with the same deterministic noise: softmax(analyzer(noise(extractor(x))))."""
    from privsplit.data.transforms import normalize

    client = seeded_client_bundle(client_dir)
    x = normalize(torch.from_numpy(images).permute(0, 3, 1, 2), client.preprocess)
    with torch.no_grad():
        probs = torch.softmax(server_bundle(server_dir).analyzer(client.noise(client.extractor(x))), dim=1).numpy()
    client.noise.reset()
    return probs


def analyze(server_dir: Path, features: np.ndarray) -> np.ndarray:
    """In-process analyzer probabilities for given features."""
    with torch.no_grad():
        return torch.softmax(server_bundle(server_dir).analyzer(torch.from_numpy(features)), dim=1).numpy()


@contextmanager
def running(bundle: Any, port: int = 0, **options: Any):
    """A real uvicorn server for ``bundle`` on 127.0.0.1 (free port by default), always stopped.

    ``ssl_*`` options go to uvicorn, the others to ``create_app``."""
    uv = {k: options.pop(k) for k in list(options) if k.startswith("ssl_")}
    server = ServerThread(create_app(bundle, **{"api_keys": [], **options}), port=port, **uv)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Raw:
    """One keep-alive connection for hand-made requests; reconnects when the server closed it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def __call__(self, method: str, path: str, body: bytes | str | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        if isinstance(body, str):
            body = body.encode()
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                resp = self.conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self.conn.close()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
             ) -> tuple[int, Any]:
        status, _, data = self(method, path, None if body is None else json.dumps(body), headers)
        return status, json.loads(data)

    def close(self) -> None:
        self.conn.close()


def infer_body(features: np.ndarray, **extra: Any) -> dict[str, Any]:
    """A JSON OIP request for ``features``."""
    return {"inputs": [{"name": "features", "shape": list(features.shape), "datatype": "FP32",
                        "data": features.reshape(-1).tolist()}], **extra}
