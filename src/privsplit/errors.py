"""Errors shared by every layer. Foundation: imports nothing of privsplit.

:class:`MissingDependency` is the one exception for "an optional extra is not installed": it is an
``ImportError`` (so ``except ImportError`` around an optional import keeps working) whose message names
the extra to install, e.g. ``pip install 'privsplit[edge]'``.
"""
from __future__ import annotations

__all__ = ["MissingDependency"]


class MissingDependency(ImportError):
    """An optional extra is missing; the message says what needs it and which extra to install.

    Args:
        what: what needs the dependency ("ONNX export", "SSIM/PSNR", ...).
        extra: the privsplit extra that provides it ("edge", "attacks", ...), or ``None`` when no extra does.
        packages: the packages themselves, named for users who install them by hand.
        hint: a full install line to use instead of the generated one.
    """

    def __init__(self, what: str, *, extra: str | None = None, packages: tuple[str, ...] | list[str] = (),
                 hint: str | None = None) -> None:
        self.what, self.extra, self.packages = what, extra, tuple(packages)
        if hint is None:
            parts = [f"pip install 'privsplit[{extra}]'"] if extra else []
            if self.packages:
                parts.append(f"pip install {' '.join(self.packages)}")
            hint = "  (or: ".join(parts) + (")" if len(parts) == 2 else "")
        super().__init__(f"{what}: {hint}" if hint else what, name=self.packages[0] if self.packages else None)
