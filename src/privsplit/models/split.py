"""Split a model into an on-device feature extractor and a cloud analyzer.

``split(model, at=name)`` returns ``(extractor, analyzer)`` with ``analyzer(extractor(x)) == model(x)``.

* ``nn.Sequential`` (the VGGs here, or a user's): the cut is after the named child; both halves are
  ``nn.Sequential`` views sharing the original modules (and so its weights: fine-tuning the
  extractor fine-tunes the model).
* any other ``nn.Module``: traced with ``torch.fx``; valid cut points are nodes whose output is the
  *only* value the rest of the graph needs (no skip connection crosses the cut). Names are fx node
  names; for a called submodule its dotted module path works too.

An unknown or invalid name raises ``ValueError`` listing the valid ones (:func:`split_points`).
"""
from __future__ import annotations

from collections import OrderedDict

import torch.fx as fx
from torch import nn

__all__ = ["split", "split_points"]


def _is_plain_sequential(model: nn.Module) -> bool:
    return isinstance(model, nn.Sequential)


def _fx_cut_points(gm: fx.GraphModule) -> list[fx.Node]:
    """Nodes after which exactly one value (the node's own output) is live, excluding the final one."""
    nodes = list(gm.graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    last_use = {n: max((pos[u] for u in n.users), default=pos[n]) for n in nodes}
    cuts = []
    for i, n in enumerate(nodes):
        if n.op in ("placeholder", "output", "get_attr") or any(u.op == "output" for u in n.users):
            continue
        if [m for m in nodes[: i + 1] if last_use[m] > i] == [n]:
            cuts.append(n)
    return cuts


def _names(gm: fx.GraphModule, node: fx.Node) -> list[str]:
    return [node.name, str(node.target)] if node.op == "call_module" else [node.name]


def split_points(model: nn.Module) -> list[str]:
    """The names ``split`` accepts for ``model``, in forward order (the last layer is excluded)."""
    if _is_plain_sequential(model):
        return [name for name, _ in model.named_children()][:-1]
    gm = fx.symbolic_trace(model)
    return [_names(gm, n)[-1] for n in _fx_cut_points(gm)]


def split(model: nn.Module, *, at: str) -> tuple[nn.Module, nn.Module]:
    """Cut ``model`` after layer ``at``; see the module docstring."""
    if _is_plain_sequential(model):
        names = [name for name, _ in model.named_children()]
        if at not in names[:-1]:
            raise ValueError(f"cannot split at '{at}'; valid split points: {', '.join(names[:-1])}")
        k = names.index(at) + 1
        children = list(model.named_children())
        return nn.Sequential(OrderedDict(children[:k])), nn.Sequential(OrderedDict(children[k:]))
    gm = fx.symbolic_trace(model)
    cuts = _fx_cut_points(gm)
    match = [n for n in cuts if at in _names(gm, n)]
    if not match:
        valid = [_names(gm, n)[-1] for n in cuts]
        raise ValueError(f"cannot split at '{at}'; valid split points: {', '.join(valid)}")
    return _fx_halves(gm, match[0])


def _fx_halves(gm: fx.GraphModule, cut: fx.Node) -> tuple[fx.GraphModule, fx.GraphModule]:
    head, tail = fx.Graph(), fx.Graph()
    env_head: dict[fx.Node, fx.Node] = {}
    env_tail: dict[fx.Node, fx.Node] = {}
    before = True
    for node in gm.graph.nodes:
        if node.op == "output":
            tail.output(env_tail[node.args[0]] if isinstance(node.args[0], fx.Node)
                        else fx.map_arg(node.args[0], lambda a: env_tail[a]))
            continue
        if before:
            env_head[node] = head.node_copy(node, lambda a: env_head[a])
            if node is cut:
                head.output(env_head[node])
                env_tail[node] = tail.placeholder("features")
                before = False
        else:
            env_tail[node] = tail.node_copy(node, lambda a: env_tail[a])
    extractor, analyzer = fx.GraphModule(gm, head), fx.GraphModule(gm, tail)
    extractor.graph.eliminate_dead_code()
    analyzer.graph.eliminate_dead_code()
    extractor.recompile()
    analyzer.recompile()
    return extractor, analyzer
