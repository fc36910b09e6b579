"""One way to register things by name: attacks, defences, noises, reductions, loaders, architectures.

A :class:`Registry` maps a name to a factory (a class or a function). Entries are added with the
``register`` decorator -- from inside the package or from user code -- and looked up with ``get`` or
``build``; an unknown name is answered with the list of choices, so a typo on the command line says
what would have worked::

    ATTACKS = Registry("attack")

    @ATTACKS.register("1-nn")
    class NearestNeighborAttack(Attack): ...

    ATTACKS.build("1-nn", embedding)        # -> NearestNeighborAttack(embedding)
    ATTACKS.names()                          # -> ["1-nn", ...] in registration order

Registration order is kept (it is the order menus and reports list entries in). Registering a name
twice is an error unless ``replace=True``: silently shadowing a built-in would change what an audit
measures without anyone noticing.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar, overload

__all__ = ["Registry", "RegistryError"]

T = TypeVar("T")


class RegistryError(KeyError, ValueError):
    """An unknown or duplicate name. A ``KeyError`` for mapping-style callers, a ``ValueError`` for
    option validation; ``str()`` is the plain message (``KeyError`` would quote it)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Name -> factory, in registration order.

    Args:
        kind: what the entries are ("attack", "noise", ...), used in error messages.
        help_ref: where a user reads more (e.g. ``"help(privsplit.attacks)"``), named in errors.
    """

    def __init__(self, kind: str, *, help_ref: str | None = None) -> None:
        self.kind, self.help_ref = kind, help_ref
        self._entries: dict[str, T] = {}

    @overload
    def register(self, name: str, *, replace: bool = False) -> Callable[[T], T]: ...
    @overload
    def register(self, name: str, factory: T, *, replace: bool = False) -> T: ...

    def register(self, name: str, factory: T | None = None, *, replace: bool = False) -> Any:
        """Add ``factory`` under ``name``; as a decorator when ``factory`` is omitted."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")

        def add(obj: T) -> T:
            if name in self._entries and not replace and self._entries[name] is not obj:
                raise RegistryError(f"{self.kind} '{name}' is already registered; pass replace=True to "
                                    "override it on purpose")
            self._entries[name] = obj
            return obj

        return add if factory is None else add(factory)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests and plug-ins that clean up after themselves)."""
        self.get(name)
        del self._entries[name]

    def get(self, name: str) -> T:
        """The factory registered as ``name``; an unknown name raises :class:`RegistryError` listing the choices."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            more = f"; see {self.help_ref}" if self.help_ref else ""
            raise RegistryError(f"unknown {self.kind} '{name}'; choose one of: {', '.join(self._entries) or '(none)'}"
                                f"{more}") from None

    def build(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call the factory registered as ``name`` with the given arguments."""
        return self.get(name)(*args, **kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """``(name, factory)`` pairs in registration order."""
        return list(self._entries.items())

    def __getitem__(self, name: str) -> T:
        """``registry[name]``: the same as :meth:`get` (so a registry reads like the dict it replaced)."""
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"
