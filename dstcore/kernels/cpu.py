"""CPU kernels for conv2d / linear: ``dense`` (torch/oneDNN) and the Numba sparse kernels.

Every kernel object is built once from a weight (``prepare``; weight compression and
re-layout happen here) and then called on inputs. A call is ``compute(prepare_input(x))``:
``prepare_input`` does the input-dependent work (activation compression, padding/phase
split) and is part of the measured latency; ``compute`` alone is the compute-only time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import llvmlite.binding as llvm
import numba
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dstcore.core.geometry import pair
from dstcore.kernels import _compress as C
from dstcore.kernels import _conv as K
from dstcore.kernels._simd import LANES, KSpec

_HAS_AVX512 = bool(llvm.get_host_cpu_features().get("avx512f", False))
#: accumulator lanes kept in registers (16 zmm of 32 with AVX-512, 4 ymm pairs otherwise)
MAX_ACC_LANES = 192 if _HAS_AVX512 else 64
_BLOCKS = (16, 32, 48, 64, 96, 128, 192)


def _round_up(a: int, b: int) -> int:
    return -(-a // b) * b


def _parallel() -> bool:
    return numba.get_num_threads() > 1


@dataclass(frozen=True)
class ConvParams:
    """Static conv2d hyper-parameters (weight [K, C/groups, R, S])."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        """Output height and width for an h x w input; ValueError if the input is too small."""
        (r, s), (sh, sw) = self.kernel_size, self.stride
        (ph, pw), (dh, dw) = self.padding, self.dilation
        oh = (h + 2 * ph - dh * (r - 1) - 1) // sh + 1
        ow = (w + 2 * pw - dw * (s - 1) - 1) // sw + 1
        if oh <= 0 or ow <= 0:
            raise ValueError(f"input {h}x{w} too small for {self}")
        return oh, ow


def _geo_array(fields: dict[int, int]) -> np.ndarray:
    """The int64 ``geo`` array of the Numba kernels: ``fields`` maps K.G_* indices to values."""
    geo = np.zeros(K.GEO_LEN, np.int64)
    for i, v in fields.items():
        geo[i] = v
    return geo


def conv_params(module: nn.Conv2d) -> ConvParams:
    """ConvParams of an ``nn.Conv2d`` (zero padding only; 'same'/'valid' resolved)."""
    if module.padding_mode != "zeros":
        raise NotImplementedError(f"padding_mode={module.padding_mode!r} is not supported")
    pad = module.padding
    if isinstance(pad, str):
        if pad == "valid":
            pad = (0, 0)
        else:  # 'same' (stride 1): symmetric only when the dilated kernel extent is odd
            ext = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size, strict=True)]
            if any(e % 2 for e in ext):
                raise NotImplementedError("padding='same' with an asymmetric pad")
            pad = tuple(e // 2 for e in ext)
    return ConvParams(module.in_channels, module.out_channels, pair(module.kernel_size),
                      pair(module.stride), pair(pad), pair(module.dilation), module.groups)


def choose_block(taps: int, kg: int, max_lanes: int = MAX_ACC_LANES) -> int:
    """Output-channel block KB (lanes) for act/dual kernels: taps*KB accumulators in registers.

    Minimises (padded / real channels) * (1 + 1 / vector FMAs per entry), i.e. padding waste
    versus per-entry loop overhead.
    """
    best, best_cost = LANES, math.inf
    for kb in _BLOCKS:
        if taps * kb > max_lanes or kb > _round_up(kg, LANES):
            continue
        waste = _round_up(kg, kb) / kg
        cost = waste * (1.0 + LANES / (taps * kb))
        if cost < best_cost - 1e-12:
            best, best_cost = kb, cost
    return best


def act_weight_layout(w: Tensor, bias: Tensor | None, groups: int,
                      kb: int) -> tuple[Tensor, Tensor]:
    """Weights and bias as the act/dual kernels read them, for output-channel block ``kb``.

    w: [K, C/groups, R, S] -> flat [G][nkb][R][Cg][S][KB] (output channels zero padded to a
    multiple of KB) + S*KB zeros of slack; bias -> flat [G][Kpad] + KB zeros (zeros if None).
    """
    w = w.detach().to("cpu", torch.float32)
    kout, cg, r, s = w.shape
    kg = kout // groups
    nkb = -(-kg // kb)
    wp = torch.zeros(groups, nkb * kb, cg, r, s)
    wp[:, :kg] = w.reshape(groups, kg, cg, r, s)
    # [G, nkb, KB, Cg, R, S] -> [G, nkb, R, Cg, S, KB]
    wl = wp.reshape(groups, nkb, kb, cg, r, s).permute(0, 1, 4, 3, 5, 2).contiguous()
    bp = torch.zeros(groups, nkb * kb)
    if bias is not None:
        bp[:, :kg] = bias.detach().to("cpu", torch.float32).reshape(groups, kg)
    return (torch.cat([wl.reshape(-1), torch.zeros(s * kb)]),
            torch.cat([bp.reshape(-1), torch.zeros(kb)]))


def _check_input(x: Tensor, ndim: int) -> Tensor:
    """x detached (the kernels are inference only), after checking dtype/device/rank."""
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != ndim:
        raise TypeError(f"expected a float32 CPU tensor with {ndim} dims, got "
                        f"{tuple(x.shape)} {x.dtype} on {x.device}")
    return x.detach()


def _empty(n: int) -> Tensor:
    """Flat float32 buffer; 64-byte aligned by torch's CPU allocator."""
    return torch.empty(n, dtype=torch.float32)


class Kernel:
    """Base class: ``kernel(x) == compute(prepare_input(x))``."""

    kind: str = "?"
    layer_type: str = "?"

    def prepare_input(self, x: Tensor) -> Any:
        return x

    def compute(self, prepared: Any) -> Tensor:
        raise NotImplementedError

    def __call__(self, x: Tensor) -> Tensor:
        return self.compute(self.prepare_input(x))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r})"


# ----------------------------------------------------------------------------- dense


class DenseConv2d(Kernel):
    """torch's conv2d (oneDNN on CPU): the reference."""

    kind = "dense"
    layer_type = "conv2d"

    def __init__(self, weight: Tensor, bias: Tensor | None, params: ConvParams) -> None:
        self.weight = weight.detach()
        self.bias = None if bias is None else bias.detach()
        self.params = params

    def compute(self, x: Tensor) -> Tensor:
        p = self.params
        with torch.no_grad():
            return F.conv2d(x, self.weight, self.bias, p.stride, p.padding, p.dilation, p.groups)


class DenseLinear(Kernel):
    """torch's linear (MKL sgemm/sgemv on CPU): the reference."""

    kind = "dense"
    layer_type = "linear"

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        self.weight = weight.detach()
        self.bias = None if bias is None else bias.detach()

    def compute(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return F.linear(x, self.weight, self.bias)


# ----------------------------------------------------------------------------- act / dual


@dataclass
class Compressed:
    """Compressed activations of one call (views into the kernel's workspace)."""

    n: int
    h: int
    w: int
    ptr: np.ndarray
    q: np.ndarray
    val: np.ndarray
    nnz: int


class _ActBase(Kernel):
    """Shared prepare/compress logic of ``act_sparse`` and ``dual_sparse``.

    Conv weights are re-laid out as [G][nkb][R][Cg][S][KB] so that, for one non-zero input
    (channel c, kernel row r), the S*KB weights it multiplies are contiguous; linear layers
    are handled as 1x1 convs on a 1x1 image. Output is produced in NHWC order.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, params: ConvParams | None,
                 contiguous_output: bool = False, max_lanes: int = MAX_ACC_LANES) -> None:
        w = weight.detach().to("cpu", torch.float32)
        if params is None:  # linear
            self.layer_type = "linear"
            params = ConvParams(w.shape[1], w.shape[0], (1, 1))
            w = w[:, :, None, None]
        else:
            self.layer_type = "conv2d"
        self.params = params
        self.contiguous_output = contiguous_output
        kout, cg, r, s = w.shape
        g = params.groups
        kg = kout // g
        self.kb = choose_block(s, kg, max_lanes)
        self.spec = KSpec(s, self.kb)
        self.nkb = -(-kg // self.kb)
        self.kpad = self.nkb * self.kb
        self._wf_t, self._bias_t = act_weight_layout(w, bias, g, self.kb)
        self.wf = self._wf_t.numpy()
        self.bias = self._bias_t.numpy()
        self._ws_key: tuple | None = None

    # -- per-shape workspace (reused across calls; kernels are not re-entrant)
    def _workspace(self, n: int, h: int, w: int) -> None:
        key = (n, h, w)
        if key == self._ws_key:
            return
        p = self.params
        g = p.groups
        cg = p.in_channels // g
        oh, ow = p.out_hw(h, w)
        b = n * g * h * w
        self._ptr = np.empty(b + 1, np.int64)
        self._cnt = np.empty(b, np.int64)
        cap = n * p.in_channels * h * w + LANES
        self._q = np.empty(cap, np.int32)
        self._val = np.empty(cap, np.float32)
        (r, s), (sh, sw), (ph, pw), (dh, dw) = (p.kernel_size, p.stride, p.padding, p.dilation)
        self._geo = _geo_array({
            K.G_N: n, K.G_G: g, K.G_CG: cg, K.G_H: h, K.G_W: w, K.G_OH: oh, K.G_OW: ow,
            K.G_K: p.out_channels, K.G_KG: p.out_channels // g, K.G_KPAD: self.kpad,
            K.G_R: r, K.G_S: s, K.G_SH: sh, K.G_SW: sw, K.G_PH: ph, K.G_PW: pw,
            K.G_DH: dh, K.G_DW: dw, K.G_NKB: self.nkb})
        self._out_shape = (n, oh, ow, p.out_channels)
        self._ws_key = key

    def prepare_input(self, x: Tensor) -> Compressed:
        """Compress the non-zeros of x (NCHW or channels_last conv input, or [N, F])."""
        if self.layer_type == "linear":
            x = _check_input(x, 2)
            n, f = x.shape
            if f != self.params.in_channels:
                raise ValueError(f"expected {self.params.in_channels} features, got {f}")
            xc = x.contiguous()
            self._workspace(n, 1, 1)
            fn = C.compress_nhwc_parallel if _parallel() else C.compress_nhwc_serial
            nnz = fn(xc.view(-1).numpy(), n, 1, f, 1, self._ptr, self._q, self._val, self._cnt)
            return Compressed(n, 1, 1, self._ptr, self._q, self._val, int(nnz))
        x = _check_input(x, 4)
        n, c, h, w = x.shape
        p = self.params
        if c != p.in_channels:
            raise ValueError(f"expected {p.in_channels} channels, got {c}")
        self._workspace(n, h, w)
        g = p.groups
        if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            flat = x.permute(0, 2, 3, 1).reshape(-1).numpy()
            fn = C.compress_nhwc_parallel if _parallel() else C.compress_nhwc_serial
            nnz = fn(flat, n, h * w, c, g, self._ptr, self._q, self._val, self._cnt)
        else:
            flat = x.contiguous().view(-1).numpy()
            fn = C.compress_nchw_parallel if _parallel() else C.compress_nchw_serial
            nnz = fn(flat, n * g, c // g, h * w, self._ptr, self._q, self._val, self._cnt)
        return Compressed(n, h, w, self._ptr, self._q, self._val, int(nnz))

    def _wrap_output(self, out_t: Tensor) -> Tensor:
        n, oh, ow, k = self._out_shape
        y = out_t[: n * oh * ow * k].view(n, oh, ow, k)
        if self.layer_type == "linear":
            return y.view(n, k)
        y = y.permute(0, 3, 1, 2)  # NCHW shape, channels_last memory
        return y.contiguous() if self.contiguous_output else y

    def _new_output(self) -> Tensor:
        n, oh, ow, k = self._out_shape
        return _empty(n * oh * ow * k + self.kb)


class ActSparse(_ActBase):
    """Skips zero input activations: per non-zero input, one register-blocked vector FMA over
    its contiguous S*KB weights (all output channels of the block, all kernel columns)."""

    kind = "act_sparse"

    def compute(self, c: Compressed) -> Tensor:
        self._workspace(c.n, c.h, c.w)
        out_t = self._new_output()
        fn = K.act_conv_parallel if _parallel() else K.act_conv_serial
        fn(self.spec, self._geo, c.ptr, c.q, c.val, self.wf, self.bias, out_t.numpy())
        return self._wrap_output(out_t)


class DualSparse(_ActBase):
    """Skips a product when the input is zero or its weight is zero (at SIMD granularity).

    - Input channels whose weights are all zero are removed before compression (their
      activations are multiplied by 0, so they never enter the non-zero lists): no branch.
    - Weights are cut into blocks (kb, r, c) of S*KB lanes made of 16-lane chunks. An
      all-zero block is skipped (one branch per non-zero input); a block whose fraction of
      non-zero chunks is at most ``dense_fraction`` stores only those chunks (packed) and
      accumulates them in a stack buffer; other blocks run act_sparse's register FMA.
    - Zeros inside a non-zero 16-lane chunk are still multiplied (one vector FMA).

    The default ``dense_fraction=0`` never uses the packed path: measured on this CPU it is
    slower than the dense block FMA at every sparsity up to 99.5% (see docs/kernels.md).
    When no block is all-zero or packed (typical for unstructured pruning: with 80% random
    zeros only 0.8**16 = 2.8% of 16-lane chunks are empty) the act_sparse loop is run.
    """

    kind = "dual_sparse"

    def __init__(self, weight: Tensor, bias: Tensor | None, params: ConvParams | None,
                 contiguous_output: bool = False, max_lanes: int = MAX_ACC_LANES,
                 dense_fraction: float = 0.0) -> None:
        super().__init__(weight, bias, params, contiguous_output, max_lanes)
        w = weight.detach().to("cpu", torch.float32)
        g = self.params.groups
        kg = w.shape[0] // g
        # input channel c of group gi is dead if W[gi*kg:(gi+1)*kg, c] == 0 everywhere
        alive = w.reshape(g, kg, w.shape[1], -1).ne(0).any(-1).any(1).reshape(-1)
        self.dead_inputs = int((~alive).sum())
        shape = (1, -1) if self.layer_type == "linear" else (1, -1, 1, 1)
        self._keep = alive.to(torch.float32).reshape(shape) if self.dead_inputs else None
        sk = self.spec.taps * self.kb
        nch = sk // LANES
        blocks = self._wf_t[: self._wf_t.numel() - sk].view(-1, nch, LANES)
        nzc = blocks.ne(0).any(-1)  # [nblocks, nch]
        cnt = nzc.sum(-1)
        mode = torch.where(cnt > dense_fraction * nch, torch.full_like(cnt, -1), cnt)
        mode[cnt == 0] = 0
        self.bmode = mode.to(torch.int32).numpy()
        packed_sel = nzc & (mode > 0)[:, None]
        counts = packed_sel.sum(-1)
        self.boff = torch.cumsum(counts, 0).sub(counts).to(torch.int64).numpy()
        bi, ci = torch.nonzero(packed_sel, as_tuple=True)  # row-major: grouped by block
        self.cidx = torch.cat([ci.to(torch.int32), torch.zeros(1, dtype=torch.int32)]).numpy()
        self._packed_t = torch.cat([blocks[bi, ci].reshape(-1), torch.zeros(LANES)]).contiguous()
        self.packed = self._packed_t.numpy()
        n_blocks = int(mode.numel())
        self.block_stats = {
            "blocks": n_blocks,
            "dense_blocks": int((mode < 0).sum()),
            "zero_blocks": int((mode == 0).sum()),
            "packed_blocks": int((mode > 0).sum()),
            "zero_chunk_fraction": float(1.0 - nzc.float().mean()) if n_blocks else 0.0,
            "dead_input_channels": self.dead_inputs,
        }
        self._all_dense = bool((mode < 0).all())

    def prepare_input(self, x: Tensor) -> Compressed:
        if self._keep is not None and x.dim() == self._keep.dim():
            x = x * self._keep  # keeps channels_last / contiguous layout
        return super().prepare_input(x)

    def compute(self, c: Compressed) -> Tensor:
        self._workspace(c.n, c.h, c.w)
        out_t = self._new_output()
        if self._all_dense:  # no block to skip: the act_sparse loop, without mode look-ups
            fn = K.act_conv_parallel if _parallel() else K.act_conv_serial
            fn(self.spec, self._geo, c.ptr, c.q, c.val, self.wf, self.bias, out_t.numpy())
        else:
            fn = K.dual_conv_parallel if _parallel() else K.dual_conv_serial
            fn(self.spec, self._geo, c.ptr, c.q, c.val, self.wf, self.bmode, self.boff,
               self.cidx, self.packed, self.bias, out_t.numpy())
        return self._wrap_output(out_t)


# ----------------------------------------------------------------------------- weight sparse


class WeightSparseConv2d(Kernel):
    """Pruned weights as CSR over output channels x direct convolution.

    The input is padded and split into stride phases once per call (``prepare_input``), so
    that every stride/dilation becomes a stride-1 access; for output channel k and a tile of
    TL consecutive output positions (rows flattened at the phase width, a few garbage columns
    discarded), acc += w * input[offset(c, r, s) + tile] for each non-zero w only.
    Output is NCHW-shaped with row stride Wq >= OW (a strided view, no copy).
    """

    kind = "weight_sparse"
    layer_type = "conv2d"

    def __init__(self, weight: Tensor, bias: Tensor | None, params: ConvParams,
                 contiguous_output: bool = False) -> None:
        self.params = params
        self.contiguous_output = contiguous_output
        self.weight = weight.detach().to("cpu", torch.float32).contiguous()
        b = torch.zeros(params.out_channels) if bias is None else bias.detach().float().cpu()
        self._bias_t = b.contiguous()
        self.bias = self._bias_t.numpy()
        self._ws_key: tuple | None = None
        self._csr_key: tuple | None = None

    def _build_csr(self, hq: int, wq: int) -> None:
        if self._csr_key == (hq, wq):
            return
        p = self.params
        (_, _), (sh, sw), (dh, dw) = p.kernel_size, p.stride, p.dilation
        kout, cg, _, _ = self.weight.shape
        k_i, c_i, r_i, s_i = torch.nonzero(self.weight, as_tuple=True)
        a, ri = (r_i * dh) % sh, (r_i * dh) // sh
        bq, sj = (s_i * dw) % sw, (s_i * dw) // sw
        off = ((a * sw + bq) * cg + c_i) * (hq * wq) + ri * wq + sj
        order = torch.argsort(k_i * (off.max().item() + 1 if off.numel() else 1) + off)
        k_i, off = k_i[order], off[order]
        self.wv = self.weight[k_i, c_i[order], r_i[order], s_i[order]].contiguous().numpy()
        self.woff = off.to(torch.int64).contiguous().numpy()
        counts = torch.bincount(k_i, minlength=kout)
        self.rp = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0)]).numpy()
        self.nnz = int(k_i.numel())
        self._csr_key = (hq, wq)

    def _workspace(self, n: int, h: int, w: int) -> None:
        key = (n, h, w)
        if key == self._ws_key:
            return
        p = self.params
        g = p.groups
        cg = p.in_channels // g
        (sh, sw), (ph, pw) = p.stride, p.padding
        oh, ow = p.out_hw(h, w)
        hq, wq = -(-(h + 2 * ph) // sh), -(-(w + 2 * pw) // sw)
        ohw = oh * wq
        tl = next((t for t in (16, 32, 64) if ohw <= t), 128)
        tiles = -(-ohw // tl)
        self.spec = KSpec(1, tl)
        self._build_csr(hq, wq)
        self._geo = _geo_array({
            K.G_N: n, K.G_G: g, K.G_CG: cg, K.G_H: h, K.G_W: w, K.G_OH: oh, K.G_OW: ow,
            K.G_K: p.out_channels, K.G_KG: p.out_channels // g, K.G_SH: sh, K.G_SW: sw,
            K.G_PH: ph, K.G_PW: pw, K.G_HQ: hq, K.G_WQ: wq, K.G_NPH: sh * sw,
            K.G_OHWPAD: tiles * tl, K.G_TILES: tiles})
        plane = sh * sw * cg * hq * wq
        self._xph = np.empty(n * g * plane + tiles * tl + LANES, np.float32)
        self._dims = (n, oh, ow, wq, tiles * tl)
        self._ws_key = key

    def prepare_input(self, x: Tensor) -> np.ndarray:
        x = _check_input(x, 4)
        n, c, h, w = x.shape
        if c != self.params.in_channels:
            raise ValueError(f"expected {self.params.in_channels} channels, got {c}")
        self._workspace(n, h, w)
        if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
            x = x.contiguous()
        xs = np.array(x.stride(), np.int64)  # NCHW or channels_last: both read in place
        flat = x.as_strided((x.numel(),), (1,)).numpy()
        fn = K.phase_split_parallel if _parallel() else K.phase_split_serial
        fn(flat, xs, self._xph, self._geo)
        return self._xph

    def compute(self, xph: np.ndarray) -> Tensor:
        n, oh, ow, wq, ohwpad = self._dims
        kout = self.params.out_channels
        out_t = _empty(n * kout * ohwpad)
        fn = K.ws_conv_parallel if _parallel() else K.ws_conv_serial
        fn(self.spec, self._geo, self.rp, self.wv, self.woff, self.bias, xph, out_t.numpy())
        y = out_t.as_strided((n, kout, oh, ow), (kout * ohwpad, ohwpad, wq, 1))
        return y.contiguous() if self.contiguous_output else y


class WeightSparseLinear(Kernel):
    """CSR weight x dense input: y[n, k] = b[k] + sum over the non-zeros of row k."""

    kind = "weight_sparse"
    layer_type = "linear"

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        w = weight.detach().to("cpu", torch.float32)
        self.out_features, self.in_features = w.shape
        k_i, j_i = torch.nonzero(w, as_tuple=True)
        self.wv = w[k_i, j_i].contiguous().numpy()
        self.col = j_i.to(torch.int32).contiguous().numpy()
        counts = torch.bincount(k_i, minlength=self.out_features)
        self.rp = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0)]).numpy()
        b = torch.zeros(self.out_features) if bias is None else bias.detach().float().cpu()
        self.bias = b.contiguous().numpy()
        self.nnz = int(k_i.numel())

    def prepare_input(self, x: Tensor) -> Tensor:
        x = _check_input(x, 2)
        if x.shape[1] != self.in_features:
            raise ValueError(f"expected {self.in_features} features, got {x.shape[1]}")
        return x.contiguous()

    def compute(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        y = _empty(n * self.out_features)
        fn = K.ws_linear_parallel if _parallel() else K.ws_linear_serial
        fn(x.view(-1).numpy(), n, self.in_features, self.rp, self.col, self.wv, self.bias,
           y.numpy())
        return y.view(n, self.out_features)
