"""Data errors. Every message names the file or column at fault and says what to do."""
from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """Raised for unreadable images, missing label columns and malformed manifests."""
