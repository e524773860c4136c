"""Activation thresholds in a model's graph (FATReLU's, found by dstcore.sparsity.fatrelu).

A threshold t on layer l's input is a ``torch.nn.Threshold(t, 0)`` module (out = x where
x > t, else 0) inserted before l in the model's ``torch.fx`` graph: eager torch, torch.compile,
the ONNX export and the whole-model runner all see it, and parameter names do not change, so a
saved model (``act_thresholds`` in ``model.pt``) is its plain state dict plus the thresholds.
"""

from __future__ import annotations

import copy

import torch
import torch.fx
from torch import nn

from dstcore import DstError, error_line

PREFIX = "input_threshold_"  # the inserted nn.Threshold modules: PREFIX + layer name, dots as _


def threshold_module_name(layer: str) -> str:
    """Name of the ``nn.Threshold`` submodule :func:`apply_thresholds` inserts before ``layer``."""
    return PREFIX + layer.replace(".", "_")


def apply_thresholds(model: nn.Module, thresholds: dict[str, float]) -> nn.Module:
    """``model`` as a GraphModule with ``nn.Threshold(t, 0)`` before each layer named in
    ``thresholds`` (t > 0; zeros are skipped). Parameter and buffer names are unchanged, so the
    state dict of the result loads into ``model`` and back. A model that already has thresholds
    keeps them except where ``thresholds`` names the layer again."""
    thresholds = {**thresholds_of(model), **thresholds}
    base = _without_thresholds(model)
    try:
        gm = torch.fx.symbolic_trace(base)
    except Exception as err:  # noqa: BLE001 - fx raises many types for untraceable code
        raise DstError(f"FATReLU: cannot trace {type(base).__name__} to insert thresholds "
                       f"({error_line(err)})") from None
    known = {n.target for n in gm.graph.nodes if n.op == "call_module"}
    unknown = sorted(set(thresholds) - known)
    if unknown:
        raise DstError(f"FATReLU thresholds name layers the model does not call: {unknown}")
    for node in list(gm.graph.nodes):
        t = thresholds.get(node.target) if node.op == "call_module" else None
        if not t:
            continue
        name = threshold_module_name(node.target)
        gm.add_submodule(name, nn.Threshold(float(t), 0.0))
        with gm.graph.inserting_before(node):
            cut = gm.graph.call_module(name, (node.args[0],))
        node.replace_input_with(node.args[0], cut)
    gm.graph.lint()
    gm.recompile()
    return gm.train(model.training)


def _without_thresholds(model: nn.Module) -> nn.Module:
    """``model`` with its inserted thresholds removed (``model`` itself when it has none)."""
    if not isinstance(model, torch.fx.GraphModule) or not thresholds_of(model):
        return model
    gm = torch.fx.GraphModule(model, copy.deepcopy(model.graph))  # the same modules
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and str(node.target).startswith(PREFIX):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            gm.delete_submodule(node.target)
    gm.recompile()
    return gm


def thresholds_of(model: nn.Module) -> dict[str, float]:
    """{layer name: threshold} of the thresholds :func:`apply_thresholds` inserted (empty for a
    plain model), read from the graph."""
    if not isinstance(model, torch.fx.GraphModule):
        return {}
    out = {}
    for node in model.graph.nodes:
        if node.op == "call_module" and str(node.target).startswith(PREFIX):
            layer = next(iter(node.users)).target
            out[layer] = float(model.get_submodule(node.target).threshold)
    return out
