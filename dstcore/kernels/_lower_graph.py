"""Lowering of a traced model (torch.fx graph) to runner ops: the graph walk, the handler of
each supported node, and the non-conv layers (ReLU, add, pooling, affine, flatten, cat).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dstcore.core.geometry import pair
from dstcore.kernels._lower_conv import _lower_conv
from dstcore.kernels._lowering import UnsupportedModel, _is_add, _is_relu, _Lowering, _name, _single_user
from dstcore.kernels._ops import _Eltwise, _Output, _Pool, _ToNHWC


def _pool_out(size: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    """torch's pooling output size (with ceil_mode's rule that a window must start inside)."""
    num = size + 2 * p - d * (k - 1) - 1
    out = (-(-num // s) if ceil else num // s) + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out


def _lower_graph(low: _Lowering, chw: tuple[int, int, int]) -> None:
    gm = low.gm
    for node in gm.graph.nodes:
        if node in low.done:
            continue
        if node.op == "placeholder":
            if low.ops:
                raise UnsupportedModel("compile_model: models with more than one input")
            vid = low.new_value((chw[1], chw[2], chw[0]))
            low.ops.append(_ToNHWC([], vid))
            low.env[node] = vid
        elif node.op == "output":
            _lower_output(low, node)
        elif node.op == "get_attr":
            raise UnsupportedModel(f"compile_model: unsupported tensor attribute {node.target!r}")
        else:
            _lower_node(low, node)


def _lower_output(low: _Lowering, node: torch.fx.Node) -> None:
    arg = node.args[0]
    if not isinstance(arg, torch.fx.Node):
        raise UnsupportedModel("compile_model: the model must return one tensor")
    v = low.env[arg]
    if isinstance(v, tuple):  # flatten as the last op: torch order is NCHW
        low.ops.append(_Output([v[1]], None, as_nchw=True))
        low.out_shape = ("flat", v[1])
    else:
        h, w, _ = low.shapes[v]
        low.ops.append(_Output([v], None, as_nchw=(h * w > 1)))
        low.out_shape = ("flat" if low.flat[v] else "nchw", v)


def _lower_node(low: _Lowering, node: torch.fx.Node) -> None:
    handler = _handler(node, low.gm)
    if handler is None:
        raise UnsupportedModel(
            f"compile_model: unsupported module or operation {_name(node, low.gm)}")
    handler(low, node)


def _alias(low: _Lowering, node: torch.fx.Node) -> None:
    low.env[node] = low.env[node.args[0]]


def _lower_relu(low: _Lowering, node: torch.fx.Node) -> None:
    x = low.value_of(node.args[0])
    y = low.new_value(low.shapes[x], low.flat[x])
    low.ops.append(_Eltwise([x], y, what="relu"))
    low.env[node] = y


def _lower_threshold(low: _Lowering, node: torch.fx.Node, mod: nn.Threshold) -> None:
    """FATReLU's threshold (dstcore.sparsity.fatrelu) on a map or a pending flatten."""
    source = low.env[node.args[0]]
    x = source[1] if isinstance(source, tuple) else source
    a, b = low.add_weights(np.array([mod.threshold], np.float32))
    y = low.new_value(low.shapes[x], low.flat[x])
    low.ops.append(_Eltwise([x], y, what="threshold", w_range=(a, b)))
    low.env[node] = ("flatten", y) if isinstance(source, tuple) else y


def _handler(node: torch.fx.Node,
             gm: torch.fx.GraphModule) -> Callable[[_Lowering, torch.fx.Node], None] | None:
    """The lowering function of a graph node, or None when the runner does not support it."""
    mod = gm.get_submodule(node.target) if node.op == "call_module" else None
    fn = node.target if node.op == "call_function" else None
    if isinstance(mod, nn.Conv2d):
        return None if mod.groups != 1 or mod.padding_mode != "zeros" else \
            (lambda low, n: _lower_conv(low, n, mod))
    if isinstance(mod, nn.Linear):
        return lambda low, n: _lower_conv(low, n, mod)
    if isinstance(mod, (nn.Identity, nn.Dropout)) or fn is F.dropout:
        return _alias
    if _is_relu(node, gm):
        return _lower_relu
    if isinstance(mod, nn.Threshold) and mod.value == 0 and mod.threshold >= 0:
        return lambda low, n: _lower_threshold(low, n, mod)
    if _is_add(node):
        return _lower_add
    if isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d)):
        return lambda low, n: _lower_pool(low, n, mod)
    if isinstance(mod, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return lambda low, n: _lower_adaptive(low, n, mod.output_size,
                                              isinstance(mod, nn.AdaptiveMaxPool2d))
    if fn in (F.max_pool2d, F.avg_pool2d):
        return _functional_pool(node, fn)
    if fn is F.adaptive_avg_pool2d:
        return lambda low, n: _lower_adaptive(low, n, n.args[1], False)
    if isinstance(mod, nn.BatchNorm2d):
        return lambda low, n: _lower_affine(low, n, mod)
    if fn is torch.flatten or (node.op == "call_method" and node.target == "flatten"):
        return _lower_flatten
    if fn is torch.cat:
        return _lower_cat
    return None


def _functional_pool(node: torch.fx.Node, fn: Callable
                     ) -> Callable[[_Lowering, torch.fx.Node], None] | None:
    """F.max_pool2d / F.avg_pool2d as the equivalent module (same argument order up to
    ``dilation`` / ``ceil_mode``), or None for arguments the module form does not take."""
    kwargs = dict(node.kwargs)
    if fn is F.max_pool2d and (len(node.args) > 5 or kwargs.pop("return_indices", False)):
        return None
    try:
        mod = (nn.MaxPool2d if fn is F.max_pool2d else nn.AvgPool2d)(*node.args[1:], **kwargs)
    except TypeError:
        return None
    return lambda low, n: _lower_pool(low, n, mod)


def _absorb_relu(low: _Lowering, node: torch.fx.Node) -> tuple[torch.fx.Node, bool]:
    """(the node whose value ``node``'s op produces, whether that includes a ReLU): a ReLU that
    is ``node``'s only user is fused into it and marked done."""
    user = _single_user(node)
    if user is not None and _is_relu(user, low.gm):
        low.done.add(user)
        return user, True
    return node, False


def _lower_add(low: _Lowering, node: torch.fx.Node) -> None:
    a, b = (low.value_of(v) for v in node.args)
    if low.shapes[a] != low.shapes[b]:
        raise UnsupportedModel(f"compile_model: broadcasting add {_name(node, low.gm)}")
    last, relu = _absorb_relu(low, node)
    y = low.new_value(low.shapes[a], low.flat[a])
    low.ops.append(_Eltwise([a, b], y, what="add", relu=relu))
    low.env[node] = low.env[last] = y


def _lower_pool(low: _Lowering, node: torch.fx.Node, mod: nn.Module) -> None:
    x = low.value_of(node.args[0])
    h, w, c = low.shapes[x]
    is_max = isinstance(mod, nn.MaxPool2d)
    if getattr(mod, "return_indices", False) or getattr(mod, "divisor_override", None):
        raise UnsupportedModel(f"compile_model: unsupported pooling option in {_name(node, low.gm)}")
    k = pair(mod.kernel_size)
    s = pair(mod.stride or mod.kernel_size)
    p = pair(mod.padding)
    d = pair(getattr(mod, "dilation", 1))
    oh = _pool_out(h, k[0], s[0], p[0], d[0], mod.ceil_mode)
    ow = _pool_out(w, k[1], s[1], p[1], d[1], mod.ceil_mode)
    y = low.new_value((oh, ow, c))
    low.ops.append(_Pool([x], y, is_max=is_max, geo=(*k, *s, *p, *d),
                         include_pad=bool(getattr(mod, "count_include_pad", True))))
    low.env[node] = y


def _lower_adaptive(low: _Lowering, node: torch.fx.Node, size: Any, is_max: bool) -> None:
    x = low.value_of(node.args[0])
    h, w, c = low.shapes[x]
    size = (size, size) if isinstance(size, int) else tuple(size)
    oh, ow = (h if size[0] is None else size[0]), (w if size[1] is None else size[1])
    y = low.new_value((oh, ow, c))
    low.ops.append(_Pool([x], y, is_max=is_max, adaptive=True, size=(oh, ow)))
    low.env[node] = y


def _lower_affine(low: _Lowering, node: torch.fx.Node, bn: nn.BatchNorm2d) -> None:
    x = low.value_of(node.args[0])
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() - bn.running_mean * scale
    last, relu = _absorb_relu(low, node)
    a, _ = low.add_weights(scale.numpy())
    _, b = low.add_weights(shift.numpy())
    y = low.new_value(low.shapes[x])
    low.ops.append(_Eltwise([x], y, what="affine", relu=relu, w_range=(a, b)))
    low.env[node] = low.env[last] = y


def _lower_flatten(low: _Lowering, node: torch.fx.Node) -> None:
    start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
    end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
    if (start, end) != (1, -1):
        raise UnsupportedModel(f"compile_model: flatten other than (1, -1) at {_name(node, low.gm)}")
    x = low.value_of(node.args[0])
    h, w, c = low.shapes[x]
    if h * w == 1:
        y = low.new_value((1, 1, c), flat=True)
        low.ops.append(_Eltwise([x], y, what="concat", offsets=(0,)))  # a copy
        low.env[node] = y
    else:
        low.env[node] = ("flatten", x)


def _lower_cat(low: _Lowering, node: torch.fx.Node) -> None:
    tensors = node.args[0]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    if dim not in (1, -3):
        raise UnsupportedModel(f"compile_model: cat along dim {dim} at {_name(node, low.gm)}")
    ins = [low.value_of(t) for t in tensors]
    hw = {low.shapes[v][:2] for v in ins}
    if len(hw) != 1:
        raise UnsupportedModel(f"compile_model: cat of maps of different sizes {_name(node, low.gm)}")
    offsets = np.cumsum([0] + [low.shapes[v][2] for v in ins]).tolist()
    y = low.new_value((*hw.pop(), offsets[-1]))
    low.ops.append(_Eltwise(ins, y, what="concat", offsets=tuple(offsets[:-1])))
    low.env[node] = y
