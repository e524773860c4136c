"""State of lowering a torch.fx graph to runner ops, and the fx node predicates it shares."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dstcore import DstError
from dstcore.kernels._memory import ALIGN
from dstcore.kernels._ops import _Op
from dstcore.kernels._simd import KSpec


class UnsupportedModel(DstError):
    """The model has a module or operation the runner cannot compile."""


def _is_relu(node: torch.fx.Node, gm: torch.fx.GraphModule) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), nn.ReLU)
    if node.op == "call_function":
        return node.target in (F.relu, torch.relu)
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _is_add(node: torch.fx.Node) -> bool:
    return (node.op == "call_function" and node.target in (operator.add, operator.iadd, torch.add)
            and len(node.args) == 2 and not node.kwargs
            and all(isinstance(a, torch.fx.Node) for a in node.args))


def _single_user(node: torch.fx.Node) -> torch.fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


@dataclass
class _Lowering:
    """fx graph -> ops for one input (C, H, W) and kind; holds the weight arena."""

    gm: torch.fx.GraphModule
    kind: str
    parallel: bool
    ops: list[_Op] = field(default_factory=list)
    shapes: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    flat: dict[int, bool] = field(default_factory=dict)
    env: dict[torch.fx.Node, Any] = field(default_factory=dict)
    done: set = field(default_factory=set)
    weights: list[np.ndarray] = field(default_factory=list)
    wsize: int = 0
    specs: list[KSpec] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)
    out_shape: tuple = ()

    def new_value(self, shape: tuple[int, int, int], flat: bool = False) -> int:
        vid = len(self.shapes)
        self.shapes[vid] = shape
        self.flat[vid] = flat
        return vid

    def add_weights(self, arr: np.ndarray) -> tuple[int, int]:
        a = self.wsize
        self.weights.append(np.ascontiguousarray(arr, np.float32).reshape(-1))
        self.wsize += self.weights[-1].size
        pad = (-self.wsize) % ALIGN
        if pad:
            self.weights.append(np.zeros(pad, np.float32))
            self.wsize += pad
        return a, a + arr.size

    def spec(self, taps: int, block: int, step: int = 0) -> int:
        for i, s in enumerate(self.specs):
            if (s.taps, s.block, s.step) == (taps, block, step):
                return i
        self.specs.append(KSpec(taps, block, step))
        return len(self.specs) - 1

    def value_of(self, arg: Any) -> int:
        v = self.env[arg]
        if isinstance(v, tuple):  # a pending flatten feeding something other than a linear
            return self.materialise_flatten(arg, v[1])
        return v

    def materialise_flatten(self, node: torch.fx.Node, src: int) -> int:
        raise UnsupportedModel(f"compile_model: flatten of a {self.shapes[src]} (HxWxC) map is "
                               f"used by '{node}' other than a Linear layer")


def _name(node: torch.fx.Node, gm: torch.fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"'{node.target}' ({type(gm.get_submodule(node.target)).__name__})"
    return f"'{node.name}' ({getattr(node.target, '__name__', node.target)})"
