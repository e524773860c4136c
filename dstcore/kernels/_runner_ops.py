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
from numba import njit, prange

from dstcore.kernels._compress import _emit_seq
from dstcore.kernels._conv import (
    G_CG,
    G_DH,
    G_DW,
    G_H,
    G_K,
    G_N,
    G_NKB,
    G_OH,
    G_OW,
    G_PH,
    G_PW,
    G_R,
    G_S,
    G_SH,
    G_SW,
    G_W,
    _act_rows,
)
from dstcore.kernels._simd import (
    nzmask16,
    spec_block,
    spec_taps,
    vfill16,
    vfma_taps,
    vinit_taps,
    vloadn16,
    vpool16,
    vscale16,
    vstoren,
    vstoren_taps,
)

_FM = {"contract"}
BLOCK_OUT = 16  # output channels per block of the block-pruned (structured) dual path


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


@njit(cache=True)
def gather_channels(x, out, NP, C, idx, m):
    """out[p, j] = x[p, idx[j]] for NP positions (NHWC, C channels in, m out)."""
    for p in range(NP):
        xo = p * C
        oo = p * m
        for j in range(m):
            out[oo + j] = x[xo + idx[j]]


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
def threshold_into(x, out, n, t):
    """FATReLU: out = x where x > t[0], else 0 (``torch.nn.Threshold(t, 0)``)."""
    cut = t[0]
    for i in range(n):
        v = x[i]
        out[i] = v if v > cut else np.float32(0.0)


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
def _pool_window(x, out, o, C, row0, h0, nh, dh, w0, nw, dw, W, is_max, inv):
    """out[o:o+C] = max (NaN wins, as in torch) or mean (sum * inv) of x over the window of
    nh rows from h0 (step dh) x nw columns from w0 (step dw), all inside the image at
    x[row0 * W * C:], on 16-lane vectors held in a register across the window."""
    mx = is_max != 0
    for c in range(0, C, 16):
        m = min(16, C - c)
        acc = vfill16(-np.inf if mx else 0.0)
        for i in range(nh):
            p = ((row0 + h0 + i * dh) * W + w0) * C + c
            for j in range(nw):
                acc = vpool16(acc, vloadn16(x, p + j * dw * C, m), mx)
        if not mx:
            acc = vscale16(acc, inv)
        vstoren(out, o + c, acc, m)


@njit(cache=True, inline="always")
def _window(o0, k, d, size):
    """(first, count) of the taps o0 + i*d (i < k) inside [0, size)."""
    lo = 0
    while lo < k and o0 + lo * d < 0:
        lo += 1
    hi = k
    while hi > lo and o0 + (hi - 1) * d >= size:
        hi -= 1
    return o0 + lo * d, hi - lo


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
            h0, nh = _window(oh * sh - ph, kh, dh, H)
            for ow in range(OW):
                w0, nw = _window(ow * sw - pw, kw, dw, W)
                cnt = nh * nw
                if include_pad:
                    a, b = oh * sh - ph, ow * sw - pw
                    cnt = (min(a + kh, H + ph) - a) * (min(b + kw, W + pw) - b)
                inv = np.float32(1.0) / np.float32(max(cnt, 1))
                _pool_window(x, out, ((n * OH + oh) * OW + ow) * C, C, n * H, h0, nh, dh,
                             w0, nw, dw, W, is_max, inv)


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
                inv = np.float32(1.0) / np.float32((h1 - h0) * (w1 - w0))
                _pool_window(x, out, ((n * OH + oh) * OW + ow) * C, C, n * H, h0, h1 - h0, 1,
                             w0, w1 - w0, 1, W, is_max, inv)


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


@njit(cache=True, fastmath=_FM)
def _pad_rows(geo, x, xp, r0, r1):
    """Rows [r0, r1) (image, ih) of x copied into the interior of the zero-bordered xp
    [N, H + 2ph, W + 2pw, C] (the border is zero from the plan and never written)."""
    C, H, W, ph, pw = geo[G_CG], geo[G_H], geo[G_W], geo[G_PH], geo[G_PW]
    Wp = W + 2 * pw
    for row in range(r0, r1):
        n = row // H
        ih = row - n * H
        o = ((n * (H + 2 * ph) + ih + ph) * Wp + pw) * C
        xp[o:o + W * C] = x[row * W * C:(row + 1) * W * C]


@njit(cache=True, fastmath=_FM)
def _direct_rows(spec, geo, xp, wf, bias, of, res, mode, r0, r1):
    """Rows [r0, r1) (image, oh) of a dense direct convolution on the padded input xp, in
    tiles of T = taps(spec) output pixels x KB = block(spec) channels held in registers:
    bias + sum over (r, s, c) of xp[n, ih, iw, c] * wf[kb, r, s, c, :]. The last tile of a
    row ends at OW (it may recompute pixels of the one before: T <= OW). A ReLU epilogue is
    applied in registers, a residual one after the row."""
    T, KB = spec_taps(spec), spec_block(spec)
    C, H, W, OH, OW, K = geo[G_CG], geo[G_H], geo[G_W], geo[G_OH], geo[G_OW], geo[G_K]
    R, S, sh, sw, dh, dw = geo[G_R], geo[G_S], geo[G_SH], geo[G_SW], geo[G_DH], geo[G_DW]
    Hp, Wp = H + 2 * geo[G_PH], W + 2 * geo[G_PW]
    for row in range(r0, r1):
        n = row // OH
        oh = row - n * OH
        for kb in range(geo[G_NKB]):
            k0 = kb * KB
            for t in range(0, OW, T):
                ow = min(t, OW - T)
                acc = vinit_taps(spec, bias, k0)
                for r in range(R):
                    xr = ((n * Hp + oh * sh + r * dh) * Wp + ow * sw) * C
                    wr = (kb * R + r) * S * C * KB
                    if dw == 1:  # the kernel row's S*C inputs are contiguous
                        for j in range(S * C):
                            acc = vfma_taps(spec, acc, xp, xr + j, sw * C, wf, wr + j * KB)
                    else:
                        for s in range(S):
                            for c in range(C):
                                acc = vfma_taps(spec, acc, xp, xr + s * dw * C + c, sw * C, wf,
                                                wr + (s * C + c) * KB)
                vstoren_taps(spec, of, (row * OW + ow) * K + k0, K, acc, min(KB, K - k0),
                             mode == 1)
        if mode >= 2:
            _ep_range(of, res, mode, row * OW * K, (row + 1) * OW * K)


@njit(cache=True, fastmath=_FM)
def direct_serial(spec, geo, x, xp, wf, bias, of, res, mode):
    """A dense conv over few input channels (the image layer) computed directly: the input
    copied into a zero-bordered buffer, then output tiles in registers (:func:`_direct_rows`).
    wf: [nkb, R, S, C, KB] (zero padded past K), bias: [nkb * KB], x / xp / of: NHWC."""
    _pad_rows(geo, x, xp, 0, geo[G_N] * geo[G_H])
    _direct_rows(spec, geo, xp, wf, bias, of, res, mode, 0, geo[G_N] * geo[G_OH])


@njit(cache=True, fastmath=_FM, parallel=True)
def direct_parallel(spec, geo, x, xp, wf, bias, of, res, mode):
    """:func:`direct_serial`, one row per task."""
    for row in prange(geo[G_N] * geo[G_H]):
        _pad_rows(geo, x, xp, row, row + 1)
    for row in prange(geo[G_N] * geo[G_OH]):
        _direct_rows(spec, geo, xp, wf, bias, of, res, mode, row, row + 1)


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
        _act_rows(spec, geo, ptr[g * (NP + 1):(g + 1) * (NP + 1)], q, val, wf[g * wstride:],
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
    """Per-block non-zero lists of an NHWC input [NP, C] (C a multiple of 16), in one pass.

    List of block g, position p: the channels c with x[p, c] != 0 and bit c%16 of
    ``amask[g * C/16 + c//16]`` set (input channel alive in block g), channels increasing.
    Block g's CSR is ``ptr[g*(NP+1) : (g+1)*(NP+1)]``, its entries in q / val from g*NP*C
    (room for every channel of every position), so each block's lists grow in position
    order without a counting pass. ``cnt`` (nblk) holds the write cursors. Returns the
    entries.
    """
    nch = C // 16
    for g in range(nblk):
        cnt[g] = g * NP * C
        ptr[g * (NP + 1)] = cnt[g]
    for p in range(NP):
        for g in range(nblk):
            j = cnt[g]
            for k in range(nch):
                m = nzmask16(x, p * C + k * 16) & np.uint64(amask[g * nch + k])
                j = _emit_seq(m, k * 16, x, p * C, q, val, j)
            cnt[g] = j
            ptr[g * (NP + 1) + p + 1] = j
    nnz = 0
    for g in range(nblk):
        nnz += cnt[g] - g * NP * C
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

