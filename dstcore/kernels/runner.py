"""Whole-model CPU runner: ``compile_model(model, kind)`` -> one native call per forward.

The model is traced with ``torch.fx``, BatchNorm is folded into the preceding conv
(``torch.fx.experimental.optimization.fuse``), and the graph is lowered to a list of ops on
NHWC float32 buffers: conv / linear with a fused epilogue (ReLU, residual add, add + ReLU),
pooling, channel concatenation, affine (an unfolded BatchNorm), add, ReLU. From the op list a
small Python function is generated that calls the Numba kernels in order with slices of four
arenas (weights, activations, int64 and int32 workspaces) whose offsets come from an int64
plan array; it is compiled with Numba once per op sequence (and cached on disk), so the whole
forward pass is one call from Python. Buffers are planned once per input shape (liveness-based
reuse) and kept. See docs/kernels.md ("Whole-model runner").
"""

from __future__ import annotations

import hashlib
import importlib.util
import operator
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numba
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dstcore import DstError
from dstcore.kernels import _conv as K
from dstcore.kernels._runner_ops import BLOCK_OUT
from dstcore.kernels._simd import KSpec
from dstcore.kernels.cpu import (
    _HAS_AVX512,
    MAX_ACC_LANES,
    ConvParams,
    _geo_array,
    act_weight_layout,
    choose_block,
    conv_params,
)

RUNNER_KINDS = ("dense", "act_sparse", "dual_sparse")
#: block-pruned path of dual_sparse: used when at least this fraction of the (16 output
#: channels x 1 input channel) weight units of a layer is entirely zero
BLOCK_ZERO_FRACTION = 0.25
#: ... and whose kernel is at least this wide: a block list entry feeds S*16 accumulator lanes,
#: and with S = 1 (1x1 convs, linear) the list overhead outweighs the skipped blocks
#: (ResNet50, 80% block-pruned, 90% input sparsity: 97 ms with 1x1 blocks vs 47 ms without)
BLOCK_MIN_WIDTH = 3
SLACK = 256  # float32 elements after every buffer (vector loads may read past the end)
ALIGN = 16
#: convs with at most this many input channels (the image layer, the first stage of the
#: CIFAR-style ResNets) run as a dense direct conv in every kind unless dual_sparse takes
#: the block path: the per-position non-zero lists are too short to pay for themselves
#: (ResNet-20 16-channel 3x3 convs at 62% input sparsity: 40 us direct vs 75 us sparse;
#: at 32 channels the two are level, so sparsity decides and the sparse path is kept)
DIRECT_MAX_CHANNELS = 16
#: direct conv output tile (pixels x channels) held in registers: 16 of 32 zmm with AVX-512
DIRECT_ACC_LANES = 256 if _HAS_AVX512 else 64


MAX_OPERATIONS = 250  # traced operations; ResNet50 has 122, GoogLeNet 140, DenseNet121 372


class UnsupportedModel(DstError):
    """The model has a module or operation the runner cannot compile."""


# ----------------------------------------------------------------------------- memory


class _Arena:
    """First-fit allocator of element ranges in one flat array (sizes rounded to ALIGN)."""

    def __init__(self) -> None:
        self.top = 0
        self.free_blocks: list[tuple[int, int]] = []

    def alloc(self, size: int, persistent: bool = False) -> int:
        """Offset of ``size`` free elements; ``persistent`` ranges (written once, before the
        first call) never reuse freed space, so no per-call buffer can overwrite them."""
        size = -(-max(size, 1) // ALIGN) * ALIGN
        for i, (off, sz) in enumerate([] if persistent else self.free_blocks):
            if sz >= size:
                if sz > size:
                    self.free_blocks[i] = (off + size, sz - size)
                else:
                    self.free_blocks.pop(i)
                return off
        off = self.top
        self.top += size
        return off

    def free(self, off: int, size: int) -> None:
        self.free_blocks.append((off, -(-max(size, 1) // ALIGN) * ALIGN))
        self.free_blocks.sort()
        merged: list[tuple[int, int]] = []
        for o, s in self.free_blocks:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + s)
            else:
                merged.append((o, s))
        self.free_blocks = merged


class _Mem:
    """Arenas of one input shape: F (float32 activations and value lists), I (int64 geometry,
    list pointers), Q (int32 list channels); values are written after allocation."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.arenas = {"F": _Arena(), "I": _Arena(), "Q": _Arena()}
        self.values: dict[int, tuple[int, int]] = {}
        self.temps: list[tuple[str, int, int]] = []
        self.inits: list[tuple[str, int, np.ndarray]] = []

    def value(self, vid: int, numel: int) -> tuple[int, int]:
        off = self.arenas["F"].alloc(numel + SLACK)
        self.values[vid] = (off, off + numel + SLACK)
        return self.values[vid]

    def temp(self, arena: str, size: int, init: np.ndarray | None = None) -> tuple[int, int]:
        off = self.arenas[arena].alloc(size)
        self.temps.append((arena, off, size))
        if init is not None:
            self.inits.append((arena, off, init))
        return off, off + size

    def const(self, arena: str, data: np.ndarray) -> tuple[int, int]:
        """A range that lives as long as the plan (geometry, block masks)."""
        off, end = self.zeros(arena, data.size)
        self.inits.append((arena, off, data))
        return off, end

    def zeros(self, arena: str, size: int) -> tuple[int, int]:
        """A range that lives as long as the plan and starts as zeros (the arenas do)."""
        off = self.arenas[arena].alloc(size, persistent=True)
        return off, off + size

    def release_temps(self) -> None:
        for arena, off, size in self.temps:
            self.arenas[arena].free(off, size)
        self.temps = []

    def release_value(self, vid: int) -> None:
        a, b = self.values.pop(vid)
        self.arenas["F"].free(a, b - a)


# ----------------------------------------------------------------------------- ops


@dataclass
class _Call:
    """One kernel call of the generated function; args are ('F'|'I'|'Q'|'W', key) slices,
    ('P', key) integers, ('spec', index), ('x',) the input or ('out',) the output array."""

    fn: str
    args: list[tuple]


@dataclass
class _Op:
    """A lowered op: reads values ``ins``, writes value ``out`` (shapes are (H, W, C))."""

    ins: list[int]
    out: int | None

    def calls(self) -> list[_Call]:
        raise NotImplementedError

    def fill(self, mem: _Mem, shapes: dict[int, tuple[int, int, int]]) -> dict[str, Any]:
        raise NotImplementedError


def _numel(n: int, shape: tuple[int, int, int]) -> int:
    return n * shape[0] * shape[1] * shape[2]


@dataclass
class _ToNHWC(_Op):
    def calls(self) -> list[_Call]:
        return [_Call("nchw_to_nhwc", [("x",), ("F", "y"), ("P", "n"), ("P", "c"), ("P", "h"),
                                       ("P", "w")])]

    def fill(self, mem, shapes):
        h, w, c = shapes[self.out]
        return {"y": mem.values[self.out], "n": mem.n, "c": c, "h": h, "w": w}


@dataclass
class _Output(_Op):
    as_nchw: bool = False

    def calls(self) -> list[_Call]:
        if self.as_nchw:
            return [_Call("nhwc_to_nchw", [("F", "x"), ("out",), ("P", "n"), ("P", "c"),
                                           ("P", "h"), ("P", "w")])]
        return [_Call("copy_into", [("F", "x"), ("out",), ("P", "numel")])]

    def fill(self, mem, shapes):
        h, w, c = shapes[self.ins[0]]
        return {"x": mem.values[self.ins[0]], "n": mem.n, "c": c, "h": h, "w": w,
                "numel": _numel(mem.n, (h, w, c))}


@dataclass
class _Conv(_Op):
    """conv2d / linear (as a conv) + epilogue; ``path`` is 'gemm', 'direct', 'compress' or
    'block'."""

    params: ConvParams = None  # type: ignore[assignment]
    path: str = "compress"
    spec_index: int = 0
    w_range: tuple[int, int] = (0, 0)
    b_range: tuple[int, int] = (0, 0)
    kb: int = 16
    mode: int = 0
    res: int | None = None
    amask: np.ndarray | None = None  # block path: alive-channel bit masks [nblk * C/16]
    parallel: bool = False
    kd: int = 0  # gemm path: inner dimension (input channels x kernel taps)
    in_hwc: tuple[int, int, int] | None = None  # read the input as this shape (same buffer)

    def calls(self) -> list[_Call]:
        suf = "parallel" if self.parallel else "serial"
        tail = [("W", "wf"), ("W", "bias"), ("F", "y"), ("F", "res"), ("P", "mode")]
        if self.path == "gemm":
            return [_Call(f"gemm_{suf}", [("F", "x"), *tail, ("P", "m"), ("P", "kd"),
                                          ("P", "nout")])]
        if self.path == "direct":
            return [_Call(f"direct_{suf}", [("spec", self.spec_index), ("I", "geo"), ("F", "x"),
                                            ("F", "xp"), *tail])]
        lists = [("I", "ptr"), ("Q", "q"), ("F", "val")]
        if self.path == "block":
            return [
                _Call("compress_blocks", [("F", "x"), ("P", "np"), ("P", "c"), ("P", "nblk"),
                                          ("I", "amask"), *lists, ("I", "cnt")]),
                _Call(f"block_conv_{suf}", [("spec", self.spec_index), ("I", "geo"),
                                            ("P", "nblk"), ("P", "np"), *lists, ("W", "wf"),
                                            ("P", "wstride"), *tail[1:]])]
        return [
            _Call(f"compress_nhwc_{suf}", [("F", "x"), ("P", "n"), ("P", "p"), ("P", "c"),
                                           ("P", "one"), *lists, ("I", "cnt")]),
            _Call(f"conv_{suf}", [("spec", self.spec_index), ("I", "geo"), *lists, *tail])]

    def fill(self, mem, shapes):
        n, p = mem.n, self.params
        h, w, c = self.in_hwc or shapes[self.ins[0]]
        oh, ow = p.out_hw(h, w)
        res = mem.values[self.res] if self.res is not None else (0, 1)
        if self.path == "gemm":
            return {"x": mem.values[self.ins[0]], "wf": self.w_range, "bias": self.b_range,
                    "y": mem.values[self.out], "res": res, "mode": self.mode,
                    "m": n * oh * ow, "kd": self.kd, "nout": p.out_channels}
        block = self.path == "block"
        if block:
            kg, kpad, nkb = BLOCK_OUT, BLOCK_OUT, 1
        else:
            nkb = -(-p.out_channels // self.kb)
            kg, kpad = p.out_channels, nkb * self.kb
        (r, s), (sh, sw), (ph, pw), (dh, dw) = p.kernel_size, p.stride, p.padding, p.dilation
        geo = _geo_array({K.G_N: n, K.G_G: 1, K.G_CG: c, K.G_H: h, K.G_W: w, K.G_OH: oh,
                          K.G_OW: ow, K.G_K: p.out_channels, K.G_KG: kg, K.G_KPAD: kpad,
                          K.G_R: r, K.G_S: s, K.G_SH: sh, K.G_SW: sw, K.G_PH: ph, K.G_PW: pw,
                          K.G_DH: dh, K.G_DW: dw, K.G_NKB: nkb})
        if self.path == "direct":
            padded = n * (h + 2 * ph) * (w + 2 * pw) * c + SLACK
            return {"geo": mem.const("I", geo), "x": mem.values[self.ins[0]],
                    "xp": mem.zeros("F", padded), "wf": self.w_range, "bias": self.b_range,
                    "y": mem.values[self.out], "res": res, "mode": self.mode}
        npos = n * h * w
        nblk = p.out_channels // BLOCK_OUT if block else 1
        vals = {"geo": mem.const("I", geo), "wf": self.w_range, "bias": self.b_range,
                "x": mem.values[self.ins[0]], "y": mem.values[self.out], "mode": self.mode,
                "res": res,
                "n": n, "p": h * w, "c": c, "one": 1, "np": npos, "nblk": nblk,
                "wstride": r * c * s * BLOCK_OUT}
        cap = nblk * npos * c + 16
        vals |= {"ptr": mem.temp("I", nblk * (npos + 1)), "cnt": mem.temp("I", nblk * npos),
                 "q": mem.temp("Q", cap), "val": mem.temp("F", cap)}
        if block:
            vals["amask"] = mem.const("I", self.amask)
        return vals


@dataclass
class _Pool(_Op):
    """Max / average pooling (``adaptive`` = torch's adaptive pooling to ``size``)."""

    is_max: bool = True
    adaptive: bool = False
    size: tuple[int, int] = (1, 1)
    geo: tuple[int, ...] = ()  # kh, kw, sh, sw, ph, pw, dh, dw
    include_pad: bool = True

    def calls(self) -> list[_Call]:
        if self.adaptive:
            return [_Call("adaptive_pool_nhwc", [("F", "x"), ("F", "y"), ("P", "n"), ("P", "h"),
                                                 ("P", "w"), ("P", "c"), ("P", "oh"), ("P", "ow"),
                                                 ("P", "max")])]
        return [_Call("pool_nhwc", [("F", "x"), ("F", "y"), ("I", "geo"), ("P", "max"),
                                    ("P", "pad")])]

    def fill(self, mem, shapes):
        h, w, c = shapes[self.ins[0]]
        oh, ow, _ = shapes[self.out]
        vals = {"x": mem.values[self.ins[0]], "y": mem.values[self.out], "n": mem.n, "h": h,
                "w": w, "c": c, "oh": oh, "ow": ow, "max": int(self.is_max),
                "pad": int(self.include_pad)}
        if not self.adaptive:
            vals["geo"] = mem.const("I", np.array([mem.n, h, w, c, oh, ow, *self.geo], np.int64))
        return vals


@dataclass
class _Im2Col(_Op):
    """Patches of the input (see :func:`_runner_ops.im2col_nhwc`)."""

    geo: tuple[int, ...] = ()  # R, S, sh, sw, ph, pw, dh, dw

    def calls(self) -> list[_Call]:
        return [_Call("im2col_nhwc", [("F", "x"), ("F", "y"), ("I", "geo")])]

    def fill(self, mem, shapes):
        h, w, c = shapes[self.ins[0]]
        oh, ow, _ = shapes[self.out]
        geo = np.array([mem.n, h, w, c, oh, ow, *self.geo], np.int64)
        return {"x": mem.values[self.ins[0]], "y": mem.values[self.out],
                "geo": mem.const("I", geo)}


@dataclass
class _Gather(_Op):
    """The input channels ``channels`` only (see :func:`_runner_ops.gather_channels`)."""

    channels: tuple[int, ...] = ()

    def calls(self) -> list[_Call]:
        return [_Call("gather_channels", [("F", "x"), ("F", "y"), ("P", "np"), ("P", "c"),
                                          ("I", "idx"), ("P", "m")])]

    def fill(self, mem, shapes):
        h, w, c = shapes[self.ins[0]]
        return {"x": mem.values[self.ins[0]], "y": mem.values[self.out], "np": mem.n * h * w,
                "c": c, "idx": mem.const("I", np.array(self.channels, np.int64)),
                "m": len(self.channels)}


@dataclass
class _Eltwise(_Op):
    """'add' (+ ReLU), 'relu', 'affine' (+ ReLU) or 'concat' (channel offsets ``offsets``)."""

    what: str = "relu"
    relu: bool = False
    w_range: tuple[int, int] = (0, 0)  # affine: scale then shift, C each
    offsets: tuple[int, ...] = ()

    def calls(self) -> list[_Call]:
        if self.what == "add":
            return [_Call("add_ep", [("F", "a"), ("F", "b"), ("F", "y"), ("P", "numel"),
                                     ("P", "relu")])]
        if self.what == "relu":
            return [_Call("relu_into", [("F", "a"), ("F", "y"), ("P", "numel")])]
        if self.what == "affine":
            return [_Call("affine_ep", [("F", "a"), ("F", "y"), ("P", "np"), ("P", "c"),
                                        ("W", "scale"), ("W", "shift"), ("P", "relu")])]
        return [_Call("copy_channels", [("F", f"a{i}"), ("F", "y"), ("P", "np"), ("P", f"c{i}"),
                                        ("P", "ctot"), ("P", f"o{i}")])
                for i in range(len(self.ins))]

    def fill(self, mem, shapes):
        h, w, c = shapes[self.out]
        vals: dict[str, Any] = {"y": mem.values[self.out], "numel": _numel(mem.n, (h, w, c)),
                                "relu": int(self.relu), "np": mem.n * h * w, "c": c, "ctot": c}
        for i, vid in enumerate(self.ins):
            vals[f"a{i}"] = mem.values[vid]
            vals[f"c{i}"] = shapes[vid][2]
            vals[f"o{i}"] = self.offsets[i] if self.offsets else 0
        vals["a"], vals["b"] = vals["a0"], vals.get("a1", vals["a0"])
        a, b = self.w_range
        vals["scale"], vals["shift"] = (a, a + c), (a + c, b)
        return vals


# ----------------------------------------------------------------------------- lowering


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


def _pool_out(size: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    """torch's pooling output size (with ceil_mode's rule that a window must start inside)."""
    num = size + 2 * p - d * (k - 1) - 1
    out = (-(-num // s) if ceil else num // s) + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out


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


def _fuse_epilogue(low: _Lowering, node: torch.fx.Node) -> tuple[torch.fx.Node, int, int | None]:
    """The last node an op at ``node`` can absorb (ReLU, add of an available value, add + ReLU),
    its epilogue mode and the residual value."""
    user = _single_user(node)
    if user is not None and _is_relu(user, low.gm):
        low.done.add(user)
        return user, 1, None
    if user is not None and _is_add(user):
        other = user.args[1] if user.args[0] is node else user.args[0]
        if other in low.env and not isinstance(low.env[other], tuple):
            low.done.add(user)
            after = _single_user(user)
            if after is not None and _is_relu(after, low.gm):
                low.done.add(after)
                return after, 3, low.env[other]
            return user, 2, low.env[other]
    return node, 0, None


def _conv_weight(low: _Lowering, node: torch.fx.Node,
                 mod: nn.Module) -> tuple[Tensor, ConvParams, int]:
    """(weight [K, C, R, S], params, input value) of a Conv2d, or of a Linear as a conv."""
    if isinstance(mod, nn.Conv2d):
        if mod.groups != 1:
            raise UnsupportedModel(f"compile_model: grouped convolution {_name(node, low.gm)}")
        return mod.weight.detach(), conv_params(mod), low.value_of(node.args[0])
    src = low.env[node.args[0]]
    w = mod.weight.detach()
    if isinstance(src, tuple):  # flatten of an HxW map -> a conv with an HxW kernel
        h, wd, c = low.shapes[src[1]]
        return (w.reshape(w.shape[0], c, h, wd),
                ConvParams(c, w.shape[0], (h, wd)), src[1])
    c = low.shapes[src][2]
    if low.shapes[src][:2] != (1, 1) or w.shape[1] != c:
        raise UnsupportedModel(f"compile_model: Linear {_name(node, low.gm)} on a "
                               f"{low.shapes[src]} (HxWxC) input")
    return w[:, :, None, None], ConvParams(c, w.shape[0], (1, 1)), src


def _block_mask(w: Tensor) -> np.ndarray | None:
    """Alive-channel bit masks [K/16 * C/16] when the layer is block pruned, else None."""
    k, c = w.shape[:2]
    if k % BLOCK_OUT or c % 16:
        return None
    alive = w.reshape(k // BLOCK_OUT, BLOCK_OUT, c, -1).ne(0).any(-1).any(1)  # [nblk, C]
    if 1.0 - alive.float().mean().item() < BLOCK_ZERO_FRACTION:
        return None
    bits = alive.reshape(-1, 16).to(torch.int64) << torch.arange(16)
    return bits.sum(-1).numpy().astype(np.int64)


def _alive_channels(w: Tensor) -> list[int] | None:
    """The input channels with a non-zero weight, when that is fewer than all (at least one,
    so a fully pruned layer still has an input); None when every channel is alive."""
    alive = w.ne(0).flatten(2).any(-1).any(0).nonzero().flatten().tolist()
    if len(alive) == w.shape[1]:
        return None
    return alive or [0]


def _gather_alive(low: _Lowering, x: int, w: Tensor, params: ConvParams, alive: list[int]
                  ) -> tuple[int, Tensor, ConvParams]:
    """A conv whose other input channels have only zero weights, as the same conv on a copy
    of just the channels ``alive`` (``dual_sparse``: pruned weights skipped, computed densely)."""
    h, wd, _ = low.shapes[x]
    y = low.new_value((h, wd, len(alive)))
    low.ops.append(_Gather([x], y, channels=tuple(alive)))
    return y, w[:, alive], replace(params, in_channels=len(alive))


def _lower_conv(low: _Lowering, node: torch.fx.Node, mod: nn.Module) -> None:
    w, params, x = _conv_weight(low, node, mod)
    last, mode, res = _fuse_epilogue(low, node)
    h, wd, _ = low.shapes[x]
    oh, ow = params.out_hw(h, wd)
    y = low.new_value((oh, ow, params.out_channels), flat=isinstance(mod, nn.Linear))
    use_blocks = low.kind == "dual_sparse" and params.kernel_size[1] >= BLOCK_MIN_WIDTH
    amask = _block_mask(w) if use_blocks else None
    direct_shape = params.kernel_size != (h, wd)
    alive = _alive_channels(w) if low.kind == "dual_sparse" else None
    weight_sparsity = float((w == 0).float().mean())
    if direct_shape and alive is not None and len(alive) <= DIRECT_MAX_CHANNELS:
        x, w, params = _gather_alive(low, x, w, params, alive)
        op = _direct_conv(low, x, w, mod.bias, params)
    elif amask is None and direct_shape and params.in_channels <= DIRECT_MAX_CHANNELS:
        op = _direct_conv(low, x, w, mod.bias, params)
    elif low.kind == "dense":
        op = _gemm_conv(low, x, w, mod.bias, params)
    else:
        op = _sparse_conv(low, x, w, mod.bias, params, amask)
    op.out, op.mode, op.res, op.parallel = y, mode, res, low.parallel
    op.ins += [res] if res is not None else []
    low.ops.append(op)
    low.layers.append({"layer": str(node.target), "path": op.path, "block": op.kb,
                       "weight_sparsity": weight_sparsity})
    low.env[last] = y
    low.env[node] = y


def _gemm_conv(low: _Lowering, x: int, w: Tensor, bias: Tensor | None,
               params: ConvParams) -> _Conv:
    """A dense layer as one GEMM over [positions, kernel taps x C] (im2col first unless the
    input already is that matrix: a 1x1 stride-1 conv, or a kernel covering the whole map)."""
    h, wd, _ = low.shapes[x]
    plain_1x1 = params.kernel_size == (1, 1) and params.stride == (1, 1)
    whole_map = params.kernel_size == (h, wd)
    if params.padding != (0, 0) or not (plain_1x1 or whole_map):
        x, w, params = _im2col(low, x, w, params)
    k = params.out_channels
    wt = w.permute(0, 2, 3, 1).reshape(k, -1).t().contiguous()  # [R*S*C, K], NHWC patch order
    b = bias.detach() if bias is not None else torch.zeros(k)
    return _Conv([x], None, params=params, path="gemm", w_range=low.add_weights(wt.numpy()),
                 b_range=low.add_weights(b.float().numpy()), kb=0, kd=wt.shape[0])


def _direct_conv(low: _Lowering, x: int, w: Tensor, bias: Tensor | None,
                 params: ConvParams) -> _Conv:
    """A dense conv over few input channels as output tiles of T pixels x KB channels in
    registers (KB = K rounded up to 16, at most 64; T*KB at most DIRECT_ACC_LANES, and T
    splits a row evenly: OW = 28 with room for 16 gives two tiles of 14, not 16 + 16)."""
    k, c, r, s = w.shape
    kb = min(64, -(-k // 16) * 16)
    nkb = -(-k // kb)
    wp = torch.zeros(nkb * kb, c, r, s)
    wp[:k] = w
    wf = wp.reshape(nkb, kb, c, r, s).permute(0, 3, 4, 2, 1)  # [nkb, R, S, C, KB]
    bp = torch.zeros(nkb * kb)
    if bias is not None:
        bp[:k] = bias.detach()
    ow = params.out_hw(*low.shapes[x][:2])[1]
    tiles = -(-ow // max(1, DIRECT_ACC_LANES // kb))
    return _Conv([x], None, params=params, path="direct",
                 spec_index=low.spec(-(-ow // tiles), kb, params.stride[1] * c),
                 w_range=low.add_weights(wf.contiguous().numpy()),
                 b_range=low.add_weights(bp.numpy()), kb=kb)


def _sparse_conv(low: _Lowering, x: int, w: Tensor, bias: Tensor | None,
                 params: ConvParams, amask: np.ndarray | None) -> _Conv:
    """A layer that skips zero inputs (and, on block-pruned weights, dead weight blocks).

    A kernel covering the whole unpadded map (a linear layer after a flatten) becomes a 1x1
    conv over its H*W*C inputs, read from the same NHWC buffer: one list of non-zeros and
    no taps that land outside the single output pixel."""
    h, wd, c = low.shapes[x]
    in_hwc = None
    if (params.kernel_size == (h, wd) != (1, 1) and params.padding == (0, 0)
            and params.dilation == (1, 1)):
        k = params.out_channels
        w = w.permute(0, 2, 3, 1).reshape(k, h * wd * c, 1, 1)  # NHWC patch order
        params, in_hwc = ConvParams(h * wd * c, k, (1, 1)), (1, 1, h * wd * c)
    path = "block" if amask is not None else "compress"
    taps = params.kernel_size[1]
    kb = BLOCK_OUT if path == "block" else choose_block(taps, params.out_channels, MAX_ACC_LANES)
    wf, bf = act_weight_layout(w, bias, 1, kb)
    return _Conv([x], None, params=params, path=path, spec_index=low.spec(taps, kb),
                 w_range=low.add_weights(wf.numpy()), b_range=low.add_weights(bf.numpy()),
                 kb=kb, amask=amask, in_hwc=in_hwc)


def _im2col(low: _Lowering, x: int, w: Tensor, params: ConvParams
            ) -> tuple[int, Tensor, ConvParams]:
    """Lower a conv to im2col (patches [OH, OW, R*S*C]) + a 1x1 conv over R*S*C channels."""
    h, wd, c = low.shapes[x]
    oh, ow = params.out_hw(h, wd)
    (r, s), k = params.kernel_size, params.out_channels
    col = low.new_value((oh, ow, r * s * c))
    low.ops.append(_Im2Col([x], col, geo=(r, s, *params.stride, *params.padding,
                                           *params.dilation)))
    w1 = w.permute(0, 2, 3, 1).reshape(k, r * s * c, 1, 1)
    return col, w1, ConvParams(r * s * c, k, (1, 1))


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
    k = _pair_of(mod.kernel_size)
    s = _pair_of(mod.stride or mod.kernel_size)
    p = _pair_of(mod.padding)
    d = _pair_of(getattr(mod, "dilation", 1))
    oh = _pool_out(h, k[0], s[0], p[0], d[0], mod.ceil_mode)
    ow = _pool_out(w, k[1], s[1], p[1], d[1], mod.ceil_mode)
    y = low.new_value((oh, ow, c))
    low.ops.append(_Pool([x], y, is_max=is_max, geo=(*k, *s, *p, *d),
                         include_pad=bool(getattr(mod, "count_include_pad", True))))
    low.env[node] = y


def _pair_of(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


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


# ----------------------------------------------------------------------------- code


_HEADER = '''"""Generated by dstcore.kernels.runner: one forward pass of a compiled model."""
from numba import njit

from dstcore.kernels._compress import compress_nhwc_parallel, compress_nhwc_serial  # noqa: F401
from dstcore.kernels._runner_ops import *  # noqa: F401,F403
from dstcore.kernels._simd import KSpec  # noqa: F401

{specs}
@njit(cache=True)
def forward(x, out, W, F, I, Q, P):
'''


def _source(ops: list[_Op], specs: list[KSpec], profile: bool = False
            ) -> tuple[str, list[dict[str, tuple[int, bool]]]]:
    """The generated module and, per op, its plan slots: key -> (first P index, is a range).

    Kernel specs are module globals (compile-time constants), not arguments: Numba types a
    tuple argument in Python on every call (~20 us for four specs), a global once.
    ``profile``: ``forward`` takes a last argument ``only`` and runs op ``only`` alone.
    """
    lines, layout, slot = [], [], 0
    for k, op in enumerate(ops):
        if profile:
            lines.append(f"    if only == {k}:")
        keys: dict[str, tuple[int, bool]] = {}
        for call in op.calls():
            args = []
            for a in call.args:
                if a[0] in ("F", "I", "Q", "W", "P"):
                    rng = a[0] != "P"
                    if a[1] not in keys:
                        keys[a[1]] = (slot, rng)
                        slot += 2 if rng else 1
                    i = keys[a[1]][0]
                    args.append(f"{a[0]}[P[{i}]:P[{i + 1}]]" if rng else f"P[{i}]")
                elif a[0] == "spec":
                    args.append(f"SPEC{a[1]}")
                else:
                    args.append(a[0])
            lines.append(f"{'    ' * (1 + profile)}{call.fn}({', '.join(args)})")
        layout.append(keys)
    header = _HEADER.replace("P):", "P, only):") if profile else _HEADER
    header = header.replace("{specs}", "".join(
        f"SPEC{i} = KSpec({s.taps}, {s.block}, {s.step})\n" for i, s in enumerate(specs)))
    header = header.replace('"""\nfrom numba', f'"""\n# kernels {_kernels_digest()}\nfrom numba', 1)
    return header + "\n".join(lines) + "\n", layout


def cache_dir() -> Path:
    """Where generated forward functions (and Numba's cache of them) live."""
    root = os.environ.get("DST_RUNNER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dstcore", "runner")
    return Path(root)


_FORWARDS: dict[str, Callable[..., None]] = {}
# a parallel forward with a gemm layer holds BLAS function pointers and cannot be cached on
# disk (Numba says so at each compile); it recompiles in well under a second
warnings.filterwarnings("ignore", "Cannot cache compiled function", numba.NumbaWarning)
#: modules whose compiled code a generated forward inlines: Numba's disk cache checks only the
#: generated file, so their source hash goes into it (an edited kernel -> a new forward file)
_KERNEL_MODULES = ("_runner_ops.py", "_conv.py", "_compress.py", "_simd.py")


def _kernels_digest() -> str:
    h = hashlib.sha256()
    for name in _KERNEL_MODULES:
        h.update((Path(__file__).parent / name).read_bytes())
    return h.hexdigest()[:16]


def _load_forward(source: str) -> Callable[..., None]:
    """Compile (or load from the disk cache) the generated ``forward`` of ``source``.

    The file is named by the SHA-256 of its text and is only imported after its bytes were
    checked to equal ``source`` (a file planted under that name is overwritten, not run).
    """
    digest = hashlib.sha256(source.encode()).hexdigest()[:24]
    if digest in _FORWARDS:
        return _FORWARDS[digest]
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"fwd_{digest}.py"
    if not path.exists() or path.read_bytes() != source.encode():
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(source)
        os.replace(tmp, path)
    name = f"dstcore_runner_fwd_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    _FORWARDS[digest] = module.forward
    return module.forward


@dataclass
class _Plan:
    """Arenas and plan array of one input shape."""

    P: np.ndarray
    F: np.ndarray
    I: np.ndarray  # noqa: E741
    Q: np.ndarray
    out_shape: tuple[int, ...]
    out_numel: int


def _make_plan(low: _Lowering, layout: list[dict[str, tuple[int, bool]]], n: int) -> _Plan:
    mem = _Mem(n)
    last_use: dict[int, int] = {}
    for i, op in enumerate(low.ops):
        for v in op.ins:
            last_use[v] = i
    nslots = max((s + (2 if r else 1) for keys in layout for s, r in keys.values()), default=0)
    P = np.zeros(nslots + 1, np.int64)
    for i, (op, keys) in enumerate(zip(low.ops, layout, strict=True)):
        if op.out is not None:
            mem.value(op.out, _numel(n, low.shapes[op.out]))
        vals = op.fill(mem, low.shapes)
        for key, (slot, rng) in keys.items():
            if rng:
                P[slot], P[slot + 1] = vals[key]
            else:
                P[slot] = vals[key]
        mem.release_temps()
        for v in set(op.ins):
            if last_use[v] == i:
                mem.release_value(v)
    arrays = {"F": np.zeros(mem.arenas["F"].top + SLACK, np.float32),
              "I": np.zeros(mem.arenas["I"].top + 1, np.int64),
              "Q": np.zeros(mem.arenas["Q"].top + 16, np.int32)}
    for arena, off, data in mem.inits:
        arrays[arena][off:off + data.size] = data.reshape(-1)
    kind, vid = low.out_shape
    h, w, c = low.shapes[vid]
    out_shape = (n, c * h * w) if kind == "flat" else (n, c, h, w)
    return _Plan(P, arrays["F"], arrays["I"], arrays["Q"], out_shape, int(np.prod(out_shape)))


# ----------------------------------------------------------------------------- API


_BLAS_LIMITED = False


def _single_thread_blas() -> None:
    """Set the BLAS that Numba's ``np.dot`` calls (SciPy's) to one thread, once per process.

    The runner's gemm layers parallelise over rows with Numba's own threads (one 1-thread
    sgemm each); a second, spinning BLAS pool would compete with them for the cores. Other
    BLAS libraries in the process (NumPy's, torch's) are left alone when SciPy's is found.
    """
    global _BLAS_LIMITED
    if _BLAS_LIMITED:
        return
    import scipy.linalg.cython_blas  # noqa: F401 - loads SciPy's BLAS
    from threadpoolctl import ThreadpoolController

    blas = [c for c in ThreadpoolController().lib_controllers if c.user_api == "blas"]
    for c in [c for c in blas if "scipy" in Path(c.filepath).parent.name] or blas:
        c.set_num_threads(1)
    _BLAS_LIMITED = True


class CompiledModel:
    """``compiled(x)`` == ``model.eval()(x)`` for float32 NCHW CPU tensors (see compile_model).

    Not re-entrant: one call at a time per object (buffers are reused across calls).
    """

    def __init__(self, gm: torch.fx.GraphModule, kind: str, threads: int,
                 name: str = "model") -> None:
        self.gm, self.kind, self.threads, self.name = gm, kind, threads, name
        self._lowered: dict[tuple[int, int, int], tuple[_Lowering, list, Callable, np.ndarray]] = {}
        self._plans: dict[tuple[int, ...], tuple[_Plan, Callable, np.ndarray]] = {}

    def _lower(self, chw: tuple[int, int, int]):
        if chw not in self._lowered:
            low = _Lowering(self.gm, self.kind, parallel=self.threads > 1)
            _lower_graph(low, chw)
            source, layout = _source(low.ops, low.specs)
            weights = np.concatenate(low.weights + [np.zeros(SLACK, np.float32)])
            self._lowered[chw] = (low, layout, _load_forward(source), weights)
        return self._lowered[chw]

    def prepare(self, shape: tuple[int, ...]) -> None:
        """Plan buffers (and compile, on first use) for inputs of ``shape`` [N, C, H, W]."""
        if tuple(shape) in self._plans:
            return
        low, layout, fn, weights = self._lower(tuple(shape[1:]))
        _single_thread_blas()
        self._plans[tuple(shape)] = (_make_plan(low, layout, shape[0]), fn, weights)

    def profile(self, x: Tensor, repeats: int = 10) -> list[dict[str, Any]]:
        """Median ms of each lowered op on input ``x`` (ops run alone, in order, ``repeats``
        times after one warm-up forward): where a forward pass spends its time."""
        import time

        self(x)
        low = self._lower(tuple(x.shape[1:]))[0]
        plan, _, weights = self._plans[tuple(x.shape)]
        fn = _load_forward(_source(low.ops, low.specs, profile=True)[0])
        out = torch.empty(plan.out_shape)
        args = (x.detach().contiguous().view(-1).numpy(), out.view(-1).numpy(), weights,
                plan.F, plan.I, plan.Q, plan.P)
        times = np.zeros((repeats, len(low.ops)))
        for r in range(repeats + 1):
            for k in range(len(low.ops)):
                t0 = time.perf_counter()
                fn(*args, k)
                if r:
                    times[r - 1, k] = time.perf_counter() - t0
        med = np.median(times, axis=0) * 1e3
        return [{"op": k, "what": type(op).__name__.lstrip("_").lower(),
                 "path": getattr(op, "path", ""), "shape": low.shapes.get(op.out),
                 "ms": float(med[k])} for k, op in enumerate(low.ops)]

    def layers(self, chw: tuple[int, int, int]) -> list[dict[str, Any]]:
        """Per conv/linear layer: the kernel path taken ('gemm', 'compress' or 'block')."""
        return self._lower(tuple(chw))[0].layers

    def __call__(self, x: Tensor) -> Tensor:
        if x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 4:
            raise TypeError(f"compiled model: expected a float32 CPU tensor [N, C, H, W], got "
                            f"{tuple(x.shape)} {x.dtype} on {x.device}")
        key = tuple(x.shape)
        entry = self._plans.get(key)
        if entry is None:
            self.prepare(key)
            entry = self._plans[key]
        plan, fn, weights = entry
        if numba.get_num_threads() != self.threads:
            numba.set_num_threads(self.threads)
        out = np.empty(plan.out_numel, np.float32)
        fn(x.detach().contiguous().numpy().reshape(-1), out, weights, plan.F, plan.I, plan.Q,
           plan.P)
        return torch.from_numpy(out).view(plan.out_shape)


def compile_model(model: nn.Module, kind: str, *, batch_size: int | None = None,
                  threads: int = 1, input_shape: tuple[int, int, int] | None = None
                  ) -> CompiledModel:
    """Compile ``model`` (eval mode, BatchNorm folded) into one native call per forward.

    kind: 'dense' (every multiplication: convs over at most 16 input channels as a direct
    convolution, the other layers as one BLAS GEMM each, after im2col where the kernel is
    not 1x1), 'act_sparse' (skips zero input activations; convs over at most 16 input
    channels, the image layer among them, stay dense and direct) or 'dual_sparse' (also
    skips pruned weights: input channels whose weights are all zero, and whole (16 output
    channels x 1 input channel) units). See docs/kernels.md for the path of each layer.
    threads: Numba threads used by each call (1 = serial code, no thread pool). With
    ``batch_size`` and ``input_shape`` (C, H, W) the buffers are planned and the code
    compiled now, else on the first call of each input shape. Raises
    :class:`UnsupportedModel` (one line, naming the module) for what the runner cannot run.
    """
    from torch.fx.experimental.optimization import fuse

    from dstcore import error_line

    if kind not in RUNNER_KINDS:
        raise DstError(f"unknown runner kind {kind!r}; choose from {', '.join(RUNNER_KINDS)}")
    if not 1 <= int(threads) <= numba.config.NUMBA_NUM_THREADS:
        raise DstError(f"threads must be in [1, {numba.config.NUMBA_NUM_THREADS}], got {threads}")
    import copy

    m = copy.deepcopy(model).cpu().float().eval()
    try:
        gm = fuse(m, inplace=True)
    except Exception as e:  # noqa: BLE001 - fx raises many types for untraceable code
        raise UnsupportedModel(f"compile_model: cannot trace {type(model).__name__}: "
                               f"{error_line(e)}") from None
    calls = [node for node in gm.graph.nodes
             if node.op in ("call_module", "call_function", "call_method")]
    if len(calls) > MAX_OPERATIONS:
        raise UnsupportedModel(
            f"compile_model: {type(model).__name__} has {len(calls)} operations after BatchNorm "
            f"folding; the runner compiles one native function per model and accepts at most "
            f"{MAX_OPERATIONS} (compile time grows faster than linearly: DenseNet121 took > 10 min)")
    for node in calls:
        if _handler(node, gm) is None:
            raise UnsupportedModel(
                f"compile_model: unsupported module or operation {_name(node, gm)}")
    compiled = CompiledModel(gm, kind, int(threads), type(model).__name__)
    if batch_size is not None and input_shape is not None:
        compiled.prepare((int(batch_size), *input_shape))
    return compiled
