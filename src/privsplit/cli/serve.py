"""``privsplit serve``: the cloud analyzer of a server bundle over the Open Inference Protocol v2."""
from __future__ import annotations

import functools
import ipaddress
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from privsplit.cli.common import console, friendly_errors

if TYPE_CHECKING:
    from privsplit.defenses.bundles import ServerBundle

DEFAULT_MAX_BODY_BYTES = 8 * 2**20  # = privsplit.runtime.server.DEFAULT_MAX_BODY_BYTES (no fastapi import here)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@friendly_errors
def serve(
    server_bundle: Path = typer.Argument(..., help="Server bundle folder (server.json + server.safetensors)."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind (0.0.0.0 for all: then use API keys and TLS)."),
    port: int = typer.Option(8000, min=0, max=65535, help="REST (HTTP) port."),
    grpc_port: int = typer.Option(None, min=0, max=65535, help="Also serve OIP v2 over gRPC on this port "
                                                               "(needs the grpc extra)."),
    workers: int = typer.Option(0, min=0, help="Server processes sharing the ports (SO_REUSEPORT), each with "
                                               "its own batcher and one torch thread; 0 = number of cores."),
    grpc_workers: int = typer.Option(0, min=0, help="How many of the workers also serve gRPC (0 = all). Both gRPC "
                                                    "engines run threads of their own, so on small machines fewer "
                                                    "gRPC workers cut the tail (docs/runtime.md)."),
    grpc_engine: str = typer.Option("grpcio", help="gRPC engine: grpcio | native (pygrpc-native: HTTP/2 in Rust "
                                    "outside the GIL, the grpc-native extra; no TLS; docs/runtime.md)."),
    api_key_file: Path = typer.Option(None, help="File with one accepted API key per line (also: "
                                                 "$PRIVSPLIT_API_KEYS, comma-separated)."),
    max_batch: int = typer.Option(32, min=1, help="Most rows merged into one analyzer call."),
    max_delay_ms: float = typer.Option(2.0, min=0.0, help="How long a batch waits for more requests after its "
                                       "first (not when already full)."),
    max_body_bytes: int = typer.Option(DEFAULT_MAX_BODY_BYTES, min=1, help="Larger request bodies get 413."),
    ssl_keyfile: str = typer.Option(None, help="TLS private key (PEM), passed to uvicorn."),
    ssl_certfile: str = typer.Option(None, help="TLS certificate chain (PEM), passed to uvicorn."),
    threads: int = typer.Option(0, help="Torch CPU threads per worker (0 = 1 with several workers, else "
                                        "torch's default)."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
    access_log: bool = typer.Option(False, help="Log every request (costs throughput)."),
    http: str = typer.Option("auto", help="uvicorn HTTP parser: auto | h11 | httptools."),
    loop: str = typer.Option("auto", help="uvicorn event loop: auto | asyncio | uvloop."),
    ui: bool = typer.Option(False, "--ui", help="Also serve a web page at /ui/ that runs the client extractor in the "
                                               "browser (the photo never leaves the page). No login: loopback demos "
                                               "or behind your own authentication."),
    client_bundle: Path = typer.Option(None, "--client-bundle", help="Client bundle for --ui (the page's extractor "
                                                                     "and noise)."),
    onnx: Path = typer.Option(None, "--onnx", help="--ui: the client's exported ONNX file (default: CLIENT_BUNDLE/"
                                                   "client.onnx, else exported into the cache)."),
    ui_noise: str = typer.Option("bundle", "--ui-noise", help="--ui: the page's starting noise mode: bundle (the "
                                 "client bundle's, like the Python client) | keyed | fresh; users can switch it on "
                                 "the page (docs/keyed_noise.md says which to use when)."),
) -> None:
    """Serve the analyzer: /v2 health, metadata, infer (JSON or binary tensors), /metrics; gRPC beside it; --ui adds a web page."""
    workers = workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if grpc_workers and grpc_port is None:
        raise ValueError("--grpc-workers needs --grpc-port")
    if grpc_workers > workers:
        raise ValueError(f"--grpc-workers ({grpc_workers}) cannot exceed --workers ({workers})")
    if grpc_port is not None and grpc_port == port and port != 0:
        raise ValueError(f"--grpc-port must differ from --port (both {port})")
    load_api_keys, run_server = _server_functions(grpc=grpc_port is not None, engine=grpc_engine)
    from privsplit.defenses.bundles import load_server_bundle

    keys = load_api_keys(api_key_file)
    bundle = load_server_bundle(server_bundle)
    scheme = "https" if ssl_certfile else "http"
    _announce(bundle, host=host, port=port, grpc_port=grpc_port, workers=workers, keys=keys, tls=bool(ssl_certfile))
    configure = _ui(bundle, client_bundle, onnx, host=host, port=port, keys=keys, scheme=scheme, noise=ui_noise) \
        if ui or client_bundle is not None else None
    run_server(bundle if workers == 1 else server_bundle,  # workers load it from the folder
               host=host, port=port, api_keys=keys, max_batch=max_batch, max_delay_ms=max_delay_ms,
               max_body_bytes=max_body_bytes, ssl_keyfile=ssl_keyfile, ssl_certfile=ssl_certfile,
               log_level=log_level, access_log=access_log, torch_threads=threads or None, http=http, loop=loop,
               grpc_port=grpc_port, workers=workers, grpc_workers=grpc_workers or None, grpc_engine=grpc_engine,
               configure=configure)


def _server_functions(*, grpc: bool, engine: str = "grpcio") -> tuple[Any, Any]:
    """``(load_api_keys, serve)`` from the serving runtime; a clear error naming the extra when it is missing."""
    try:
        from privsplit.runtime.server import load_api_keys
        from privsplit.runtime.server import serve as run_server
    except ImportError as exc:
        raise ValueError(f"`privsplit serve` needs the serve extra ({exc}): pip install 'privsplit[serve]'") from None
    if grpc:
        try:
            from privsplit.runtime.grpc_server import grpc_server_class
        except ImportError as exc:
            raise ValueError(f"--grpc-port needs the grpc extra ({exc}): pip install 'privsplit[grpc]'") from None
        grpc_server_class(engine)  # unknown or not installed: say so before loading anything
    return load_api_keys, run_server


def _announce(bundle: ServerBundle, *, host: str, port: int, grpc_port: int | None, workers: int, keys: list[str],
              tls: bool) -> None:
    """Say what is served where, and warn when it is reachable beyond loopback without API keys or TLS."""
    scheme = "https" if tls else "http"
    console.print(f"serving [bold]{bundle.model_name}[/] (embedding {bundle.embedding_id[:12]}, input "
                  f"{bundle.input_name} {bundle.input_shape}, classes {bundle.classes}) on {scheme}://{host}:{port}"
                  + (f" and grpc://{host}:{grpc_port}" if grpc_port is not None else "")
                  + f"; {workers} worker process(es); API keys: {len(keys) or 'none'}")
    if not _is_loopback(host) and not keys:
        console.print("[bold yellow]warning:[/] listening beyond loopback without API keys: anyone who can reach "
                      "this port can use the analyzer (pass --api-key-file or set PRIVSPLIT_API_KEYS)")
    if not _is_loopback(host) and not tls:
        console.print("[bold yellow]warning:[/] no TLS: features and API keys travel in clear text "
                      "(pass --ssl-keyfile/--ssl-certfile or terminate TLS at a proxy)")


def _ui(bundle: object, client_bundle: Path | None, onnx: Path | None, *, host: str, port: int, keys: list[str],
        scheme: str, noise: str = "bundle") -> Any:
    """``serve --ui``: check the pair, warn where the page is exposed, and return the hook that mounts
    :func:`privsplit.runtime.ui.mount_ui` on every worker's app (a partial, so it pickles)."""
    if client_bundle is None:
        raise ValueError("--ui needs --client-bundle CLIENT_BUNDLE (the page runs its extractor and adds its noise)")
    if noise not in ("bundle", "keyed", "fresh"):
        raise ValueError(f"--ui-noise must be bundle, keyed or fresh, got {noise!r}")
    from privsplit.defenses.bundles import check_pair, load_client_bundle
    from privsplit.runtime.ui import mount_ui

    check_pair(load_client_bundle(client_bundle), bundle)  # type: ignore[arg-type]
    if keys:
        console.print("[bold yellow]warning:[/] --ui with API keys: the page holds no key, so its requests get 401 "
                      "unless a proxy in front adds one after authenticating the user")
    if not _is_loopback(host):
        console.print("[bold yellow]warning:[/] --ui beyond loopback: the page has no login; put it behind your own "
                      "authentication" + ("" if scheme == "https" else " (and https: browsers give keyed noise's "
                                          "WebCrypto to https and localhost pages only)"))
    console.print(f"page: {scheme}://{host}:{port}/ui/")
    return functools.partial(mount_ui, client_bundle=client_bundle, onnx_path=onnx,
                             noise_mode=None if noise == "bundle" else noise)
