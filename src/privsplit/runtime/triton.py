"""Serve a server bundle's analyzer on NVIDIA Triton Inference Server through PyTriton.

Run it with an interpreter that has ``nvidia-pytriton`` (0.7 pins ``numpy<2``, so give it its own
virtual environment with torch and privsplit's dependencies)::

    python -m privsplit.runtime.triton runs/emb/server --http-port 8000 --grpc-port 8001

Triton then speaks the same Open Inference Protocol v2 as ``privsplit serve``: model
``bundle.model_name``, input ``features`` FP32 ``[-1, *input_shape]``, outputs ``probabilities``
FP32 ``[-1, C]`` and ``label`` BYTES ``[-1, 1]`` (Triton keeps a per-row dimension; the
:class:`~privsplit.runtime.client.Client` accepts both), with Triton's own dynamic batching. The
:class:`Client` works unchanged. Unlike ``privsplit serve``, this does not enforce the client's
``embedding_id`` parameter (PyTriton fails a whole dynamic batch on an error, which would hurt
innocent requests batched with a mismatched one) and has no API keys: keep it behind a gateway.

Triton's Python-backend stub loads ``libpython3.X`` by name; with an interpreter built outside the
system (pyenv, conda) the system's library gets loaded instead and the stub fails with
``'_thread.RLock' object has no attribute '_recursion_count'``. :func:`fix_libpython_path` puts
this interpreter's ``LIBDIR`` first on ``LD_LIBRARY_PATH`` before Triton starts (``main`` calls it).
"""
from __future__ import annotations

import argparse
import logging
import os
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from privsplit.defenses.bundles import OUTPUT_NAMES, ServerBundle, load_server_bundle

__all__ = ["fix_libpython_path", "bind_analyzer", "main"]


def fix_libpython_path(env: dict[str, str] | None = None) -> str | None:
    """Prepend this interpreter's ``LIBDIR`` to ``LD_LIBRARY_PATH`` (in ``env``, default ``os.environ``)."""
    env = os.environ if env is None else env
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir:
        return None
    parts = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    if libdir not in parts:
        env["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *parts])
    return libdir


def bind_analyzer(triton: Any, bundle: ServerBundle, *, model_name: str | None = None, max_batch: int = 32,
                  max_delay_us: int = 2000) -> str:
    """Bind ``bundle``'s analyzer to a started-or-not ``pytriton.triton.Triton``; returns the model name."""
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    labels = np.array([c.encode("utf-8") for c in bundle.classes], dtype=object)
    analyzer = bundle.analyzer.eval()

    @batch
    def infer(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(inputs[bundle.input_name], dtype=np.float32)
        with torch.inference_mode():
            probs = torch.softmax(analyzer(torch.from_numpy(x)).float(), dim=1).numpy()
        return {OUTPUT_NAMES[0]: probs, OUTPUT_NAMES[1]: labels[probs.argmax(axis=1)].reshape(-1, 1)}

    name = model_name or bundle.model_name
    triton.bind(
        model_name=name, infer_func=infer,
        inputs=[Tensor(name=bundle.input_name, dtype=np.float32, shape=tuple(bundle.input_shape))],
        outputs=[Tensor(name=OUTPUT_NAMES[0], dtype=np.float32, shape=(len(bundle.classes),)),
                 Tensor(name=OUTPUT_NAMES[1], dtype=bytes, shape=(1,))],
        config=ModelConfig(max_batch_size=max_batch,
                           batcher=DynamicBatcher(max_queue_delay_microseconds=max_delay_us)),
        strict=True)
    return name


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m privsplit.runtime.triton SERVER_BUNDLE [--host --http-port --grpc-port ...]``."""
    parser = argparse.ArgumentParser(prog="python -m privsplit.runtime.triton", description=__doc__.split("\n")[0])
    parser.add_argument("bundle", type=Path, help="server bundle folder")
    parser.add_argument("--host", default="127.0.0.1", help="address Triton binds (HTTP and gRPC)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--model-name", default=None, help="default: the bundle's model name")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-delay-us", type=int, default=2000)
    parser.add_argument("--log-verbose", type=int, default=0)
    args = parser.parse_args(argv)

    fix_libpython_path()
    from pytriton.triton import Triton, TritonConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    bundle = load_server_bundle(args.bundle)
    config = TritonConfig(http_address=args.host, http_port=args.http_port, grpc_address=args.host,
                          grpc_port=args.grpc_port, metrics_address=args.host, metrics_port=args.metrics_port,
                          log_verbose=args.log_verbose,
                          exit_timeout_secs=5)
    with Triton(config=config) as triton:
        name = bind_analyzer(triton, bundle, model_name=args.model_name, max_batch=args.max_batch,
                             max_delay_us=args.max_delay_us)
        print(f"privsplit: serving {name} on Triton at http://{args.host}:{args.http_port}", flush=True)
        triton.serve()


if __name__ == "__main__":
    main()
