"""API keys: where they come from and the constant-time check both front ends use.

A key travels as ``Authorization: Bearer KEY`` (REST header or gRPC metadata) or ``X-API-Key: KEY``.
Health endpoints never need one (load balancers and kubelets probe them without secrets).
"""
from __future__ import annotations

import hmac
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from privsplit.runtime.service import ServiceError

__all__ = ["API_KEYS_ENV", "KeyCheck", "load_api_keys"]

API_KEYS_ENV = "PRIVSPLIT_API_KEYS"


def load_api_keys(file: str | Path | None = None, *, env: dict[str, str] | None = None) -> list[str]:
    """Keys from ``file`` (one per line; blank lines and ``#`` comments ignored) plus the
    comma/whitespace-separated ``PRIVSPLIT_API_KEYS`` variable of ``env`` (default ``os.environ``)."""
    keys: list[str] = []
    if file is not None:
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"API key file not found: {path}")
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(line)
        if not keys:
            raise ValueError(f"API key file {path} holds no key (one key per line)")
    raw = (os.environ if env is None else env).get(API_KEYS_ENV, "")
    keys += [k for k in raw.replace(",", " ").split() if k]
    return keys


class KeyCheck:
    """Constant-time API key check against every configured key (no keys: everyone is let in).

    Call it with anything that has ``.get(lowercase_name)``: Starlette headers or a dict of gRPC metadata.
    """

    def __init__(self, keys: Iterable[str]) -> None:
        self.keys = [k.encode("utf-8") for k in keys]
        if any(len(k) < 8 for k in self.keys):
            raise ValueError("API keys must be at least 8 characters long")

    @staticmethod
    def _given(headers: Mapping[str, str]) -> str | None:
        auth = headers.get("authorization")
        if auth is not None:
            scheme, _, value = auth.strip().partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                return value.strip()
        return headers.get("x-api-key")

    def __call__(self, headers: Mapping[str, str]) -> None:
        if not self.keys:
            return
        key = self._given(headers)
        if not key:
            raise ServiceError(401, "missing API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                               {"WWW-Authenticate": "Bearer"})
        given = key.encode("utf-8", "replace")
        ok = False
        for k in self.keys:  # no early exit: time does not depend on which key matched
            ok |= hmac.compare_digest(given, k)
        if not ok:
            raise ServiceError(401, "invalid API key", {"WWW-Authenticate": "Bearer"})
