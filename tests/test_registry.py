"""The generic registry every concept registers through."""
from __future__ import annotations

import pytest

from privsplit.registry import Registry, RegistryError


def test_register_decorator_build_and_order():
    reg: Registry = Registry("widget", help_ref="help(privsplit.widgets)")

    @reg.register("b")
    class B:
        def __init__(self, x: int, *, y: int = 0) -> None:
            self.x, self.y = x, y

    reg.register("a", lambda: "made")
    assert reg.names() == ["b", "a"]
    obj = reg.build("b", 3, y=4)
    assert (obj.x, obj.y) == (3, 4)
    assert reg.build("a") == "made"
    assert "a" in reg and "zz" not in reg and len(reg) == 2


def test_unknown_name_lists_choices_and_help():
    reg: Registry = Registry("attack", help_ref="help(privsplit.attacks)")
    reg.register("1-nn", object)
    reg.register("transfer", object)
    with pytest.raises(RegistryError) as err:
        reg.get("tranfser")
    assert str(err.value) == ("unknown attack 'tranfser'; choose one of: 1-nn, transfer; "
                              "see help(privsplit.attacks)")
    assert isinstance(err.value, ValueError) and isinstance(err.value, KeyError)


def test_duplicate_needs_replace_and_unregister():
    reg: Registry = Registry("noise")
    reg.register("g", int)
    with pytest.raises(RegistryError, match="already registered; pass replace=True"):
        reg.register("g", float)
    reg.register("g", float, replace=True)
    assert reg.get("g") is float
    reg.unregister("g")
    assert reg.names() == []
    with pytest.raises(ValueError, match="non-empty string"):
        reg.register("", int)


def test_getitem_reads_like_the_dict_it_replaced():
    from privsplit.defenses.embedding import EMBEDDINGS

    reg: Registry = Registry("thing")
    reg.register("x", 1)
    assert reg["x"] == 1
    with pytest.raises(KeyError, match="unknown thing 'y'; choose one of: x"):
        reg["y"]
    assert EMBEDDINGS["advanced"].noisy and list(EMBEDDINGS)[0] == "simple"
