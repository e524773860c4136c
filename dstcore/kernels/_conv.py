"""Numba compute kernels for sparse conv2d / linear (see docs/kernels.md for the design).

All kernels take a ``geo`` int64 array (indices ``G_*`` below) instead of many scalar
arguments, a :class:`~dstcore.kernels._simd.KSpec` carrying compile-time sizes, and flat
(1-D) float32 buffers. Each comes as ``*_serial`` and ``*_parallel`` (``prange`` over output
rows or tiles); both call the same row/tile function, so they give identical results.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from dstcore.kernels._simd import (
    spec_block,
    spec_taps,
    stack_buffer,
    vadd,
    vaddto_taps,
    vfma,
    vfma16_mem,
    vload_block,
    vload_like,
    vsplat_block,
    vstore,
    vstoren,
    vzeros_taps,
)

_FM = {"contract"}

# geo layout (conv and linear-as-1x1-conv)
G_N, G_G, G_CG, G_H, G_W, G_OH, G_OW, G_K, G_KG, G_KPAD = range(10)
G_R, G_S, G_SH, G_SW, G_PH, G_PW, G_DH, G_DW, G_NKB = range(10, 19)
# extra geo for the weight-sparse (polyphase) kernel
G_HQ, G_WQ, G_NPH, G_OHWPAD, G_TILES = range(19, 24)
GEO_LEN = 24


# ----------------------------------------------------------------------------- act / dual


@njit(cache=True, inline="always")
def _row_start(row, OH, G, OW, K, Kg):
    """(plane b = image * G + group, output row oh, group g, offset of the row's first output
    in the NHWC output) of output row ``row``."""
    b = row // OH
    oh = row - b * OH
    n = b // G
    g = b - n * G
    return b, oh, g, (n * OH + oh) * OW * K + g * Kg


@njit(cache=True, fastmath=_FM)
def _act_rows(spec, geo, ptr, q, val, wf, bias, of, r0, r1, kb0, kb1):
    """Output rows [r0, r1) x output-channel blocks [kb0, kb1) of ``act_sparse``; a row is
    (image, group, oh). Blocks are the outer loop, then the kernel row r, then the output
    rows: one r-slice of a block's weights (Cg*S*KB floats) is reused by every row while it
    is in cache.

    wf: weights [G][nkb][R][Cg][S][KB] (flat, zero padded to KB), bias [G][Kpad],
    of: output NHWC [N, OH, OW, K] (+ KB floats of slack). For each input position with
    non-zeros, acc (S*KB lanes in registers) = sum_c x[c] * W[kb, r, c, :, :], then the S
    taps of acc are added to the S output pixels that position feeds.
    """
    S = spec_taps(spec)
    KB = spec_block(spec)
    SK = S * KB
    G = geo[G_G]
    Cg = geo[G_CG]
    H = geo[G_H]
    W = geo[G_W]
    OH = geo[G_OH]
    OW = geo[G_OW]
    K = geo[G_K]
    Kg = geo[G_KG]
    Kpad = geo[G_KPAD]
    R = geo[G_R]
    sh = geo[G_SH]
    sw = geo[G_SW]
    ph = geo[G_PH]
    pw = geo[G_PW]
    dh = geo[G_DH]
    dw = geo[G_DW]
    nkb = geo[G_NKB]
    P = H * W
    buf = numba.carray(stack_buffer(spec), SK)
    for kb in range(kb0, kb1):
        k0 = kb * KB
        nk = min(KB, Kg - k0)
        for row in range(r0, r1):
            b, oh, g, orow = _row_start(row, OH, G, OW, K, Kg)
            bvec = vload_block(spec, bias, g * Kpad + k0)
            for ow in range(OW):
                if nk == KB:
                    vstore(of, orow + ow * K + k0, bvec)
                else:
                    vstoren(of, orow + ow * K + k0, bvec, nk)
        for r in range(R):
            for row in range(r0, r1):
                b, oh, g, orow = _row_start(row, OH, G, OW, K, Kg)
                bvec = vload_block(spec, bias, g * Kpad + k0)
                h = oh * sh - ph + r * dh
                if h < 0 or h >= H:
                    continue
                pr = b * P + h * W
                rb = ((g * nkb + kb) * R + r) * Cg * SK
                for w in range(W):
                    j0 = ptr[pr + w]
                    j1 = ptr[pr + w + 1]
                    if j0 == j1:
                        continue
                    acc = vzeros_taps(spec)
                    for j in range(j0, j1):
                        acc = vfma(acc, val[j], wf, rb + q[j] * SK)
                    t0 = w + pw
                    if sw == 1 and nk == KB and t0 - (S - 1) * dw >= 0 and t0 < OW:
                        vaddto_taps(spec, of, orow + t0 * K + k0, -dw * K, acc)
                    else:
                        vstore(buf, 0, acc)
                        for s in range(S):
                            t = t0 - s * dw
                            if t < 0:
                                break
                            if t % sw != 0:
                                continue
                            ow = t // sw
                            if ow >= OW:
                                continue
                            o = orow + ow * K + k0
                            part = vadd(vload_like(bvec, of, o), vload_block(spec, buf, s * KB))
                            if nk == KB:
                                vstore(of, o, part)
                            else:
                                vstoren(of, o, part, nk)


@njit(cache=True, fastmath=_FM)
def act_conv_serial(spec, geo, ptr, q, val, wf, bias, of):
    _act_rows(spec, geo, ptr, q, val, wf, bias, of, 0, geo[G_N] * geo[G_G] * geo[G_OH], 0,
              geo[G_NKB])


@njit(cache=True, fastmath=_FM, parallel=True)
def act_conv_parallel(spec, geo, ptr, q, val, wf, bias, of):
    for i in prange(geo[G_N] * geo[G_G] * geo[G_OH]):
        _act_rows(spec, geo, ptr, q, val, wf, bias, of, i, i + 1, 0, geo[G_NKB])


# _dual_rows repeats _act_rows' geometry, bias fill and tap scatter on purpose: moving them into
# shared @njit helpers (inlined or not) measured 20-30% slower at 90-97% activation sparsity.
@njit(cache=True, fastmath=_FM)
def _dual_rows(spec, geo, ptr, q, val, wf, bmode, boff, cidx, packed, bias, of, r0, r1):
    """Like :func:`_act_rows`, but each weight block (kb, r, c) of S*KB lanes has a mode:

    ``bmode < 0``: dense block (most 16-lane chunks non-zero) -> register FMA on wf;
    ``bmode == 0``: all-zero block -> the entry is skipped;
    ``bmode = m > 0``: only m non-zero 16-lane chunks, stored packed at
    ``packed[(boff + t) * 16]`` with chunk index ``cidx[boff + t]``; accumulated in a stack
    buffer, so the zero chunks cost nothing.
    """
    S = spec_taps(spec)
    KB = spec_block(spec)
    SK = S * KB
    G = geo[G_G]
    Cg = geo[G_CG]
    H = geo[G_H]
    W = geo[G_W]
    OH = geo[G_OH]
    OW = geo[G_OW]
    K = geo[G_K]
    Kg = geo[G_KG]
    Kpad = geo[G_KPAD]
    R = geo[G_R]
    sh = geo[G_SH]
    sw = geo[G_SW]
    ph = geo[G_PH]
    pw = geo[G_PW]
    dh = geo[G_DH]
    dw = geo[G_DW]
    nkb = geo[G_NKB]
    P = H * W
    buf = numba.carray(stack_buffer(spec), SK)
    for row in range(r0, r1):
        b = row // OH
        oh = row - b * OH
        n = b // G
        g = b - n * G
        orow = (n * OH + oh) * OW * K + g * Kg
        for kb in range(nkb):
            k0 = kb * KB
            nk = min(KB, Kg - k0)
            bvec = vload_block(spec, bias, g * Kpad + k0)
            for ow in range(OW):
                if nk == KB:
                    vstore(of, orow + ow * K + k0, bvec)
                else:
                    vstoren(of, orow + ow * K + k0, bvec, nk)
            for r in range(R):
                h = oh * sh - ph + r * dh
                if h < 0 or h >= H:
                    continue
                pr = b * P + h * W
                blk0 = ((g * nkb + kb) * R + r) * Cg
                for w in range(W):
                    j0 = ptr[pr + w]
                    j1 = ptr[pr + w + 1]
                    if j0 == j1:
                        continue
                    acc = vzeros_taps(spec)
                    packed_used = False
                    for j in range(j0, j1):
                        bi = blk0 + q[j]
                        mode = bmode[bi]
                        if mode < 0:
                            acc = vfma(acc, val[j], wf, bi * SK)
                        elif mode > 0:
                            if not packed_used:
                                vstore(buf, 0, vzeros_taps(spec))
                                packed_used = True
                            v = val[j]
                            o = boff[bi]
                            for t in range(o, o + mode):
                                vfma16_mem(buf, cidx[t] * 16, v, packed, t * 16)
                    if packed_used:
                        acc = vadd(acc, vload_like(acc, buf, 0))
                    t0 = w + pw
                    if sw == 1 and nk == KB and t0 - (S - 1) * dw >= 0 and t0 < OW:
                        vaddto_taps(spec, of, orow + t0 * K + k0, -dw * K, acc)
                    else:
                        vstore(buf, 0, acc)
                        for s in range(S):
                            t = t0 - s * dw
                            if t < 0:
                                break
                            if t % sw != 0:
                                continue
                            ow = t // sw
                            if ow >= OW:
                                continue
                            o2 = orow + ow * K + k0
                            part = vadd(vload_like(bvec, of, o2), vload_block(spec, buf, s * KB))
                            if nk == KB:
                                vstore(of, o2, part)
                            else:
                                vstoren(of, o2, part, nk)


@njit(cache=True, fastmath=_FM)
def dual_conv_serial(spec, geo, ptr, q, val, wf, bmode, boff, cidx, packed, bias, of):
    _dual_rows(spec, geo, ptr, q, val, wf, bmode, boff, cidx, packed, bias, of,
               0, geo[G_N] * geo[G_G] * geo[G_OH])


@njit(cache=True, fastmath=_FM, parallel=True)
def dual_conv_parallel(spec, geo, ptr, q, val, wf, bmode, boff, cidx, packed, bias, of):
    for i in prange(geo[G_N] * geo[G_G] * geo[G_OH]):
        _dual_rows(spec, geo, ptr, q, val, wf, bmode, boff, cidx, packed, bias, of, i, i + 1)


# ----------------------------------------------------------------------------- weight sparse


@njit(cache=True)
def _phase_split_plane(x, xo, xs_c, xs_h, xs_w, xph, po, H, W, Hq, Wq, sh, sw, ph, pw):
    """One channel plane: xph[a, b, i, j] = xpad[i*sh + a, j*sw + b] (zero outside x)."""
    for a in range(sh):
        for bq in range(sw):
            pl = po + (a * sw + bq) * xs_c
            # columns j with 0 <= j*sw + bq - pw < W
            j_lo = min(max(0, (pw - bq + sw - 1) // sw), Wq)
            j_hi = min(max(j_lo, (W - 1 + pw - bq) // sw + 1), Wq)
            for i in range(Hq):
                y = i * sh + a - ph
                d0 = pl + i * Wq
                if y < 0 or y >= H:
                    for j in range(Wq):
                        xph[d0 + j] = 0.0
                    continue
                for j in range(j_lo):
                    xph[d0 + j] = 0.0
                for j in range(j_hi, Wq):
                    xph[d0 + j] = 0.0
                x0 = np.uint64(xo + y * xs_h + (j_lo * sw + bq - pw) * xs_w)
                dj = np.uint64(d0 + j_lo)
                step = np.uint64(sw * xs_w)
                for j in range(np.uint64(j_hi - j_lo)):  # unsigned: no wraparound, vectorises
                    xph[dj + j] = x[x0 + j * step]


@njit(cache=True)
def _phase_task(x, xs, xph, geo, t):
    # t = (n * G + g) * Cg + c ; xph layout [N, G, nph, Cg, Hq, Wq]
    G = geo[G_G]
    Cg = geo[G_CG]
    Hq = geo[G_HQ]
    Wq = geo[G_WQ]
    nph = geo[G_NPH]
    ng = t // Cg
    c = t - ng * Cg
    n = ng // G
    g = ng - n * G
    xo = n * xs[0] + (g * Cg + c) * xs[1]
    po = (ng * nph * Cg + c) * Hq * Wq
    _phase_split_plane(x, xo, Cg * Hq * Wq, xs[2], xs[3], xph, po, geo[G_H], geo[G_W], Hq, Wq,
                       geo[G_SH], geo[G_SW], geo[G_PH], geo[G_PW])


@njit(cache=True)
def phase_split_serial(x, xs, xph, geo):
    """x: flat input with element strides xs (N, C, H, W); fills xph (see _phase_task)."""
    for t in range(geo[G_N] * geo[G_G] * geo[G_CG]):
        _phase_task(x, xs, xph, geo, t)


@njit(cache=True, parallel=True)
def phase_split_parallel(x, xs, xph, geo):
    for t in prange(geo[G_N] * geo[G_G] * geo[G_CG]):
        _phase_task(x, xs, xph, geo, t)


@njit(cache=True, fastmath=_FM)
def _ws_tile(spec, geo, rp, wv, woff, bias, xph, of, t):
    """Tile t = ((n * G + g) * tiles + i): TL consecutive 'wide' output positions of every
    output channel of group g; acc (TL lanes) += w * xph[offset(c, r, s) + positions]."""
    TL = spec_block(spec)
    G = geo[G_G]
    Cg = geo[G_CG]
    Kg = geo[G_KG]
    K = geo[G_K]
    tiles = geo[G_TILES]
    plane = geo[G_NPH] * Cg * geo[G_HQ] * geo[G_WQ]
    ohw = geo[G_OHWPAD]
    ng = t // tiles
    p0 = (t - ng * tiles) * TL
    n = ng // G
    g = ng - n * G
    xb = ng * plane + p0
    for k in range(Kg):
        gk = g * Kg + k
        acc = vsplat_block(spec, bias[gk])
        for e in range(rp[gk], rp[gk + 1]):
            acc = vfma(acc, wv[e], xph, xb + woff[e])
        vstore(of, (n * K + gk) * ohw + p0, acc)


@njit(cache=True, fastmath=_FM)
def ws_conv_serial(spec, geo, rp, wv, woff, bias, xph, of):
    for t in range(geo[G_N] * geo[G_G] * geo[G_TILES]):
        _ws_tile(spec, geo, rp, wv, woff, bias, xph, of, t)


@njit(cache=True, fastmath=_FM, parallel=True)
def ws_conv_parallel(spec, geo, rp, wv, woff, bias, xph, of):
    for t in prange(geo[G_N] * geo[G_G] * geo[G_TILES]):
        _ws_tile(spec, geo, rp, wv, woff, bias, xph, of, t)


@njit(cache=True, fastmath=_FM)
def _ws_linear_rows(x, N, F, rp, col, wv, bias, y, k0, k1):
    Kout = y.shape[0] // N
    for k in range(k0, k1):
        e0 = rp[k]
        e1 = rp[k + 1]
        for n in range(N):
            xo = n * F
            s0 = 0.0
            s1 = 0.0
            s2 = 0.0
            s3 = 0.0
            e = e0
            while e + 4 <= e1:
                s0 += wv[e] * x[xo + col[e]]
                s1 += wv[e + 1] * x[xo + col[e + 1]]
                s2 += wv[e + 2] * x[xo + col[e + 2]]
                s3 += wv[e + 3] * x[xo + col[e + 3]]
                e += 4
            while e < e1:
                s0 += wv[e] * x[xo + col[e]]
                e += 1
            y[n * Kout + k] = bias[k] + ((s0 + s1) + (s2 + s3))


@njit(cache=True, fastmath=_FM)
def ws_linear_serial(x, N, F, rp, col, wv, bias, y):
    """y[n, k] = bias[k] + sum_{e in row k} wv[e] * x[n, col[e]] (CSR weight, flat x and y)."""
    _ws_linear_rows(x, N, F, rp, col, wv, bias, y, 0, rp.shape[0] - 1)


@njit(cache=True, fastmath=_FM, parallel=True)
def ws_linear_parallel(x, N, F, rp, col, wv, bias, y):
    Kout = rp.shape[0] - 1
    nchunk = (Kout + 15) // 16
    for i in prange(nchunk):
        _ws_linear_rows(x, N, F, rp, col, wv, bias, y, i * 16, min(Kout, i * 16 + 16))
