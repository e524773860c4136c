"""Numba building blocks of the whole-model runner (:mod:`dstcore.kernels.runner`).

Every activation is a flat float32 NHWC buffer. Convolutions (and linear layers, as 1x1
convs on a 1x1 image) run the register-blocked rows of :func:`_conv._act_rows` on
per-position non-zero lists, followed by a fused epilogue on the same output row:
``mode`` 0 = none, 1 = ReLU, 2 = add a residual, 3 = add a residual then ReLU. The runner's
``dense`` kind, and the image layer of every kind, run as one BLAS GEMM per layer (after
im2col where the kernel is not 1x1); ``act_sparse`` compresses the input first;
``dual_sparse`` on block-pruned weights keeps one list per block of 16 output channels
with only the input channels alive in it.
The remaining ops (layout changes, pooling, channel concatenation, affine, add) are plain
loops; they are memory bound and small next to the convolutions.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.core.extending import intrinsic

from dstcore.kernels._compress import _emit_seq, _prefix
from dstcore.kernels._conv import G_K, G_N, G_NKB, G_OH, G_OW, _act_rows
from dstcore.kernels._simd import nzmask16, spec_block, vpool16_mem

_FM = {"contract"}
BLOCK_OUT = 16  # output channels per block of the block-pruned (structured) dual path


@intrinsic
def popcount(typingctx, m):
    """Number of set bits of a uint64."""
    if m != types.uint64:
        return None

    def codegen(context, builder, sig, args):
        i64 = ir.IntType(64)
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64]),
                                            "llvm.ctpop.i64")
        return builder.call(fn, [args[0]])
    return types.uint64(m), codegen


# ----------------------------------------------------------------------------- layout


@njit(cache=True)
def nchw_to_nhwc(x, out, N, C, H, W):
    """out[n, h, w, c] = x[n, c, h, w] (both flat)."""
    P = H * W
    for n in range(N):
        for c in range(C):
            xo = (n * C + c) * P
            oo = n * P * C + c
            for p in range(P):
                out[oo + p * C] = x[xo + p]


@njit(cache=True)
def nhwc_to_nchw(x, out, N, C, H, W):
    """out[n, c, h, w] = x[n, h, w, c] (both flat)."""
    P = H * W
    for n in range(N):
        for p in range(P):
            xo = (n * P + p) * C
            for c in range(C):
                out[(n * C + c) * P + p] = x[xo + c]


@njit(cache=True)
def copy_into(x, out, n):
    """out[:n] = x[:n]."""
    for i in range(n):
        out[i] = x[i]


@njit(cache=True)
def copy_channels(x, out, NP, C, Ctot, c0):
    """Channel concatenation: out[p, c0:c0+C] = x[p, :] for NP positions (NHWC)."""
    for p in range(NP):
        xo = p * C
        oo = p * Ctot + c0
        for c in range(C):
            out[oo + c] = x[xo + c]


# ----------------------------------------------------------------------------- elementwise


@njit(cache=True, fastmath=_FM)
def _ep_range(of, res, mode, o0, o1):
    if mode == 1:
        for i in range(o0, o1):
            of[i] = max(of[i], np.float32(0.0))
    elif mode == 2:
        for i in range(o0, o1):
            of[i] = of[i] + res[i]
    elif mode == 3:
        for i in range(o0, o1):
            of[i] = max(of[i] + res[i], np.float32(0.0))


@njit(cache=True, fastmath=_FM)
def add_ep(a, b, out, n, relu):
    """out = a + b, then ReLU if relu."""
    for i in range(n):
        v = a[i] + b[i]
        out[i] = max(v, np.float32(0.0)) if relu else v


@njit(cache=True, fastmath=_FM)
def relu_into(x, out, n):
    for i in range(n):
        out[i] = max(x[i], np.float32(0.0))


@njit(cache=True, fastmath=_FM)
def affine_ep(x, out, NP, C, scale, shift, relu):
    """Per-channel out = x * scale + shift (a BatchNorm not folded into a conv), + ReLU."""
    for p in range(NP):
        o = p * C
        for c in range(C):
            v = x[o + c] * scale[c] + shift[c]
            out[o + c] = max(v, np.float32(0.0)) if relu else v


# ----------------------------------------------------------------------------- pooling


@njit(cache=True, fastmath=_FM, inline="always")
def _pool_into(x, out, i, o, C, is_max):
    """out[o:o+C] = max(out, x[i:i+C]) (max pooling; NaN wins) or += x[i:i+C] (average)."""
    if C % 16 == 0:
        for c in range(0, C, 16):
            vpool16_mem(out, o + c, x, i + c, is_max != 0)
    elif is_max:
        for c in range(C):
            v = x[i + c]
            if v > out[o + c] or v != v:  # a NaN propagates, as in torch
                out[o + c] = v
    else:
        for c in range(C):
            out[o + c] += x[i + c]


@njit(cache=True, fastmath=_FM)
def pool_nhwc(x, out, geo, is_max, include_pad):
    """Max / average pooling, NHWC. geo = [N, H, W, C, OH, OW, kh, kw, sh, sw, ph, pw, dh, dw].

    Average pooling divides like torch: by the window clipped to the padded input when
    ``include_pad`` (count_include_pad=True), else by the number of real inputs.
    """
    N, H, W, C, OH, OW = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5]
    kh, kw, sh, sw, ph, pw, dh, dw = geo[6], geo[7], geo[8], geo[9], geo[10], geo[11], \
        geo[12], geo[13]
    for n in range(N):
        for oh in range(OH):
            for ow in range(OW):
                o = ((n * OH + oh) * OW + ow) * C
                init = -np.inf if is_max else 0.0
                for c in range(C):
                    out[o + c] = init
                cnt = 0
                for r in range(kh):
                    h = oh * sh - ph + r * dh
                    if h < 0 or h >= H:
                        continue
                    for s in range(kw):
                        w = ow * sw - pw + s * dw
                        if w < 0 or w >= W:
                            continue
                        cnt += 1
                        _pool_into(x, out, ((n * H + h) * W + w) * C, o, C, is_max)
                if not is_max:
                    if include_pad:
                        h0 = oh * sh - ph
                        w0 = ow * sw - pw
                        cnt = (min(h0 + kh, H + ph) - h0) * (min(w0 + kw, W + pw) - w0)
                    inv = np.float32(1.0) / np.float32(max(cnt, 1))
                    for c in range(C):
                        out[o + c] *= inv


@njit(cache=True, fastmath=_FM)
def adaptive_pool_nhwc(x, out, N, H, W, C, OH, OW, is_max):
    """torch's adaptive max / average pooling: window [floor(i*H/OH), ceil((i+1)*H/OH))."""
    for n in range(N):
        for oh in range(OH):
            h0 = (oh * H) // OH
            h1 = ((oh + 1) * H + OH - 1) // OH
            for ow in range(OW):
                w0 = (ow * W) // OW
                w1 = ((ow + 1) * W + OW - 1) // OW
                o = ((n * OH + oh) * OW + ow) * C
                for c in range(C):
                    out[o + c] = -np.inf if is_max else 0.0
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        _pool_into(x, out, ((n * H + h) * W + w) * C, o, C, is_max)
                if not is_max:
                    inv = np.float32(1.0) / np.float32((h1 - h0) * (w1 - w0))
                    for c in range(C):
                        out[o + c] *= inv


# ----------------------------------------------------------------------------- convolutions


@njit(cache=True, fastmath=_FM)
def conv_serial(spec, geo, ptr, q, val, wf, bias, of, res, mode):
    """One conv/linear layer on non-zero lists (see :func:`_conv._act_rows`) + epilogue."""
    rows = geo[G_N] * geo[G_OH]
    _act_rows(spec, geo, ptr, q, val, wf, bias, of, 0, rows, 0, geo[G_NKB])
    if mode != 0:
        _ep_range(of, res, mode, 0, rows * geo[G_OW] * geo[G_K])


@njit(cache=True, fastmath=_FM, parallel=True)
def conv_parallel(spec, geo, ptr, q, val, wf, bias, of, res, mode):
    """:func:`conv_serial` over (output-channel block, row) pairs, block-major, so each thread
    keeps to a contiguous range of blocks (and their weights in its cache)."""
    rows = geo[G_N] * geo[G_OH]
    for i in prange(geo[G_NKB] * rows):
        kb = i // rows
        row = i - kb * rows
        _act_rows(spec, geo, ptr, q, val, wf, bias, of, row, row + 1, kb, kb + 1)
        if mode != 0:
            _ep_block(spec, geo, of, res, mode, row, kb)


@njit(cache=True, fastmath=_FM)
def _ep_block(spec, geo, of, res, mode, row, kb):
    """The epilogue on output row ``row``, channels of block ``kb`` only."""
    K, OW, KB = geo[G_K], geo[G_OW], spec_block(spec)
    k0 = kb * KB
    k1 = min(K, k0 + KB)
    for ow in range(OW):
        o = (row * OW + ow) * K
        _ep_range(of, res, mode, o + k0, o + k1)


@njit(cache=True)
def im2col_nhwc(x, col, geo):
    """Patches of an NHWC image: col[n, oh, ow, (r, s, c)] (zeros outside), so a conv runs as
    a 1x1 conv (a GEMM) over R*S*C channels. geo = [N, H, W, C, OH, OW, R, S, sh, sw, ph,
    pw, dh, dw]. A kernel row of S*C values inside the image (dw = 1) is one contiguous run
    of x, copied as such; runs shorter than 8 values go column-wise (:func:`_im2col_strided`),
    where the per-run overhead would dominate."""
    N, H, W, C, OH, OW, R, S = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6], geo[7]
    sh, sw, ph, pw, dh, dw = geo[8], geo[9], geo[10], geo[11], geo[12], geo[13]
    if S * C < 8:
        _im2col_strided(x, col, geo)
        return
    rsc = R * S * C
    sc = S * C
    for n in range(N):
        for oh in range(OH):
            for ow in range(OW):
                base = ((n * OH + oh) * OW + ow) * rsc
                iw0 = ow * sw - pw
                inside = dw == 1 and iw0 >= 0 and iw0 + S <= W
                for r in range(R):
                    ih = oh * sh - ph + r * dh
                    o = base + r * sc
                    if ih < 0 or ih >= H:
                        col[o:o + sc] = 0.0
                    elif inside:
                        i = ((n * H + ih) * W + iw0) * C
                        col[o:o + sc] = x[i:i + sc]
                    else:
                        _im2col_row(x, col, o, ((n * H + ih) * W) * C, iw0, S, C, W, dw)


@njit(cache=True, inline="always")
def _im2col_row(x, col, o, row0, iw0, S, C, W, dw):
    """One kernel row at the image border: S taps of C values, zeros outside [0, W)."""
    for s in range(S):
        iw = iw0 + s * dw
        if iw < 0 or iw >= W:
            col[o + s * C:o + (s + 1) * C] = 0.0
        else:
            col[o + s * C:o + (s + 1) * C] = x[row0 + iw * C:row0 + (iw + 1) * C]


@njit(cache=True)
def _im2col_strided(x, col, geo):
    """:func:`im2col_nhwc` one (r, s, c) column of an output row at a time (long loops)."""
    N, H, W, C, OH, OW, R, S = geo[0], geo[1], geo[2], geo[3], geo[4], geo[5], geo[6], geo[7]
    sh, sw, ph, pw, dh, dw = geo[8], geo[9], geo[10], geo[11], geo[12], geo[13]
    rsc = R * S * C
    for n in range(N):
        for oh in range(OH):
            prow = (n * OH + oh) * OW
            for r in range(R):
                ih = oh * sh - ph + r * dh
                for s in range(S):
                    t = pw - s * dw  # input column of ow is ow * sw - t
                    lo = 0 if t <= 0 else min(OW, (t + sw - 1) // sw)
                    hi = 0 if W - 1 + t < 0 else min(OW, (W - 1 + t) // sw + 1)
                    if ih < 0 or ih >= H or hi < lo:
                        lo = hi = 0
                    for c in range(C):
                        o = prow * rsc + (r * S + s) * C + c
                        i = ((n * H + ih) * W - t) * C + c
                        for ow in range(lo):
                            col[o + ow * rsc] = 0.0
                        for ow in range(lo, hi):
                            col[o + ow * rsc] = x[i + ow * sw * C]
                        for ow in range(hi, OW):
                            col[o + ow * rsc] = 0.0


@njit(cache=True, fastmath=_FM)
def _block_rows(spec, geo, nblk, NP, ptr, q, val, wf, wstride, bias, of, res, mode, r0, r1):
    """Rows [r0, r1) of a block-pruned layer: block g (16 output channels) reads its own
    lists ptr[g*NP : (g+1)*NP + 1] (only its alive input channels) and weights
    wf[g*wstride:], and writes channels [16g, 16g+16) of each output pixel."""
    for g in range(nblk):
        _act_rows(spec, geo, ptr[g * NP:(g + 1) * NP + 1], q, val, wf[g * wstride:],
                  bias[g * BLOCK_OUT:], of[g * BLOCK_OUT:], r0, r1, 0, 1)
    if mode != 0:
        row_len = geo[G_OW] * geo[G_K]
        _ep_range(of, res, mode, r0 * row_len, r1 * row_len)


@njit(cache=True, fastmath=_FM)
def block_conv_serial(spec, geo, nblk, NP, ptr, q, val, wf, wstride, bias, of, res, mode):
    _block_rows(spec, geo, nblk, NP, ptr, q, val, wf, wstride, bias, of, res, mode,
                0, geo[G_N] * geo[G_OH])


@njit(cache=True, fastmath=_FM, parallel=True)
def block_conv_parallel(spec, geo, nblk, NP, ptr, q, val, wf, wstride, bias, of, res, mode):
    for i in prange(geo[G_N] * geo[G_OH]):
        _block_rows(spec, geo, nblk, NP, ptr, q, val, wf, wstride, bias, of, res, mode, i, i + 1)


@njit(cache=True, fastmath=_FM)
def compress_blocks(x, NP, C, nblk, amask, ptr, q, val, cnt):
    """Per-block non-zero lists of an NHWC input [NP, C] (C a multiple of 16).

    List of block g, position p: the channels c with x[p, c] != 0 and bit c%16 of
    ``amask[g * C/16 + c//16]`` set (input channel alive in block g), channels increasing.
    ``ptr`` (length nblk*NP + 1) is block-major, so block g's CSR is
    ``ptr[g*NP : (g+1)*NP + 1]`` with global offsets into q / val. Returns the entries.
    """
    nch = C // 16
    for p in range(NP):
        for g in range(nblk):
            s = np.uint64(0)
            for k in range(nch):
                s += popcount(nzmask16(x, p * C + k * 16) & np.uint64(amask[g * nch + k]))
            cnt[g * NP + p] = s
    nnz = _prefix(cnt, ptr, nblk * NP)
    for p in range(NP):
        for g in range(nblk):
            j = cnt[g * NP + p]
            for k in range(nch):
                m = nzmask16(x, p * C + k * 16) & np.uint64(amask[g * nch + k])
                j = _emit_seq(m, k * 16, x, p * C, q, val, j)
    return nnz


# ----------------------------------------------------------------------------- dense GEMM


@njit(cache=True, fastmath=_FM)
def _gemm_rows(x, wf, bias, y, res, mode, m0, m1, kd, nout):
    """Rows [m0, m1) of y[M, nout] = x[M, kd] @ wf[kd, nout] + bias, then the epilogue.

    The product is one BLAS sgemm (Numba's ``np.dot``), so dense layers run at the speed of
    the BLAS SciPy ships; the bias, residual and ReLU are one pass over the rows after it.
    """
    if m1 <= m0:
        return
    rows = m1 - m0
    c = y[m0 * nout:m1 * nout].reshape((rows, nout))
    np.dot(x[m0 * kd:m1 * kd].reshape((rows, kd)), wf[:kd * nout].reshape((kd, nout)), c)
    for i in range(m0 * nout, m1 * nout, nout):
        row = y[i:i + nout]
        for j in range(nout):
            row[j] += bias[j]
    _ep_range(y, res, mode, m0 * nout, m1 * nout)


@njit(cache=True, fastmath=_FM)
def gemm_serial(x, wf, bias, y, res, mode, M, kd, nout):
    """A dense conv (after im2col) or linear layer as one GEMM: see :func:`_gemm_rows`."""
    _gemm_rows(x, wf, bias, y, res, mode, 0, M, kd, nout)


@njit(cache=True, fastmath=_FM, parallel=True)
def gemm_parallel(x, wf, bias, y, res, mode, M, kd, nout):
    """:func:`gemm_serial` split into one block of rows per thread (each a 1-thread sgemm)."""
    nthr = min(numba.get_num_threads(), max(1, M // 8))
    step = -(-M // nthr)
    for t in prange(nthr):
        _gemm_rows(x, wf, bias, y, res, mode, t * step, min(M, (t + 1) * step), kd, nout)

