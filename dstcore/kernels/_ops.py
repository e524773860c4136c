"""Ops of the whole-model runner: each reads and writes NHWC float32 values (shapes (H, W, C))
and names the Numba kernels it calls (``calls``) and their plan values for one shape (``fill``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from dstcore.kernels import _conv as K
from dstcore.kernels._memory import SLACK, _Mem, _numel
from dstcore.kernels._runner_ops import BLOCK_OUT
from dstcore.kernels.cpu import ConvParams, _geo_array


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
    """'add' (+ ReLU), 'relu', 'threshold' (FATReLU, its threshold the weight at
    ``w_range[0]``), 'affine' (+ ReLU) or 'concat' (channel offsets ``offsets``)."""

    what: str = "relu"
    relu: bool = False
    w_range: tuple[int, int] = (0, 0)  # affine: start of scale, end of shift (C each)
    offsets: tuple[int, ...] = ()

    def calls(self) -> list[_Call]:
        if self.what == "add":
            return [_Call("add_ep", [("F", "a"), ("F", "b"), ("F", "y"), ("P", "numel"),
                                     ("P", "relu")])]
        if self.what == "relu":
            return [_Call("relu_into", [("F", "a"), ("F", "y"), ("P", "numel")])]
        if self.what == "threshold":
            return [_Call("threshold_into", [("F", "a"), ("F", "y"), ("P", "numel"),
                                             ("W", "cut")])]
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
        # scale and shift each start at an aligned offset (add_weights pads): shift ends at b
        vals["scale"], vals["shift"] = (a, a + c), (b - c, b)
        vals["cut"] = (a, a + 1)
        return vals
