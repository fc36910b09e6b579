"""Errors of the device client, shared by its REST and gRPC transports (a module of their own so
neither transport imports the other)."""
from __future__ import annotations

__all__ = ["ClientError", "ServerUnavailable"]


class ClientError(RuntimeError):
    """The server refused the request (4xx: not retried) or answered something unusable.

    ``status`` is the HTTP status (None when no valid answer came); ``message`` the server's text.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(f"{message} (HTTP {status})" if status is not None else message)
        self.status, self.message = status, message


class ServerUnavailable(ClientError):
    """No answer after all retries: connection errors or 5xx every time."""
