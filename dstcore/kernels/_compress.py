"""Per-call compression of input activations into per-position non-zero lists (Numba).

Output format (CSR over spatial positions), for ``B = N * groups`` planes of ``P = H * W``
positions each:

- ``ptr[b * P + p] .. ptr[b * P + p + 1]`` is the range of entries of position ``p`` of
  plane ``b`` (int64, length ``B * P + 1``);
- ``q[j]`` the channel inside the group (int32) and ``val[j]`` the value (float32); channels
  are increasing inside a position.

A linear layer's input ``[N, F]`` is the special case ``P = 1``, ``C = F`` (NHWC layout).

Both passes are vectorised: pass 1 counts non-zeros with contiguous vector compares, pass 2
turns 16 values at a time into a bit mask (one vector compare) and visits only the set bits,
so no per-element branch is taken on the zeros. Work is split into tasks for ``prange``;
``*_serial`` versions avoid the thread-pool launch when one thread is used.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numba.cpython.unsafe.numbers import trailing_zeros

from dstcore.kernels._simd import nzmask16, nzmask64

_FM = {"contract"}
PCHUNK = 256  # positions per task in the NCHW passes (16 masks of 16)
_ONE = np.uint64(1)


@njit(cache=True, fastmath=_FM)
def _nchw_count(x, cnt, P, C, ntp, t):
    b = t // ntp
    p_lo = (t - b * ntp) * PCHUNK
    p_hi = min(p_lo + PCHUNK, P)
    base = b * P
    cr = cnt[base + p_lo:base + p_hi]  # slices: indices provably >= 0, so LLVM vectorises
    cr[:] = 0
    for c in range(C):
        xo = (b * C + c) * P
        xr = x[xo + p_lo:xo + p_hi]
        for i in range(xr.shape[0]):
            cr[i] += xr[i] != 0


@njit(cache=True, fastmath=_FM)
def _emit_bits(m, p0, c, x, xo, cur, base, q, val):
    """Append (c, x[xo + p]) to position p's list for every set bit p - p0 of m."""
    while m != 0:
        p = p0 + trailing_zeros(m)
        m &= m - _ONE
        j = cur[base + p]
        q[j] = c
        val[j] = x[xo + p]
        cur[base + p] = j + 1


@njit(cache=True, fastmath=_FM)
def _nchw_fill(x, cur, q, val, P, C, ntp, t):
    b = t // ntp
    p_lo = (t - b * ntp) * PCHUNK
    p_hi = min(p_lo + PCHUNK, P)
    base = b * P
    p_64 = p_lo + ((p_hi - p_lo) // 64) * 64
    p_16 = p_64 + ((p_hi - p_64) // 16) * 16
    for c in range(C):
        xo = (b * C + c) * P
        for p0 in range(p_lo, p_64, 64):  # one mask (and one loop exit) per 64 values
            _emit_bits(nzmask64(x, xo + p0), p0, c, x, xo, cur, base, q, val)
        for p0 in range(p_64, p_16, 16):
            _emit_bits(nzmask16(x, xo + p0), p0, c, x, xo, cur, base, q, val)
        for p in range(p_16, p_hi):
            v = x[xo + p]
            if v != 0:
                j = cur[base + p]
                q[j] = c
                val[j] = v
                cur[base + p] = j + 1


@njit(cache=True)
def _prefix(cnt, ptr, n):
    """ptr[0] = 0, ptr[i+1] = ptr[i] + cnt[i]; cnt becomes the write cursor ptr[i]."""
    s = 0
    ptr[0] = 0
    for i in range(n):
        c = cnt[i]
        cnt[i] = s
        s += c
        ptr[i + 1] = s
    return s


@njit(cache=True, fastmath=_FM)
def compress_nchw_serial(x, B, C, P, ptr, q, val, cnt):
    """x: flat float32 of [B, C, P]; returns the number of non-zeros."""
    ntp = (P + PCHUNK - 1) // PCHUNK
    for t in range(B * ntp):
        _nchw_count(x, cnt, P, C, ntp, t)
    nnz = _prefix(cnt, ptr, B * P)
    for t in range(B * ntp):
        _nchw_fill(x, cnt, q, val, P, C, ntp, t)
    return nnz


@njit(cache=True, fastmath=_FM, parallel=True)
def compress_nchw_parallel(x, B, C, P, ptr, q, val, cnt):
    ntp = (P + PCHUNK - 1) // PCHUNK
    for t in prange(B * ntp):
        _nchw_count(x, cnt, P, C, ntp, t)
    nnz = _prefix(cnt, ptr, B * P)
    for t in prange(B * ntp):
        _nchw_fill(x, cnt, q, val, P, C, ntp, t)
    return nnz


@njit(cache=True, fastmath=_FM)
def _nhwc_count(x, cnt, P, Ctot, G, Cg, t):
    # t = n * P + p ; x is flat [N, P, Ctot]
    n = t // P
    p = t - n * P
    xo = t * Ctot
    for g in range(G):
        xr = x[xo + g * Cg:xo + (g + 1) * Cg]
        s = 0
        for i in range(xr.shape[0]):
            s += xr[i] != 0
        cnt[(n * G + g) * P + p] = s


@njit(cache=True, fastmath=_FM)
def _emit_seq(m, c0, x, go, q, val, j):
    """Append (c, x[go + c]) at q/val[j:] for every set bit c - c0 of m; returns new j."""
    while m != 0:
        c = c0 + trailing_zeros(m)
        m &= m - _ONE
        q[j] = c
        val[j] = x[go + c]
        j += 1
    return j


@njit(cache=True, fastmath=_FM)
def _nhwc_fill(x, cur, q, val, P, Ctot, G, Cg, t):
    n = t // P
    p = t - n * P
    xo = t * Ctot
    c_64 = (Cg // 64) * 64
    c_vec = c_64 + ((Cg - c_64) // 16) * 16
    for g in range(G):
        k = (n * G + g) * P + p
        j = cur[k]
        go = xo + g * Cg
        for c0 in range(0, c_64, 64):
            j = _emit_seq(nzmask64(x, go + c0), c0, x, go, q, val, j)
        for c0 in range(c_64, c_vec, 16):
            j = _emit_seq(nzmask16(x, go + c0), c0, x, go, q, val, j)
        for c in range(c_vec, Cg):
            v = x[go + c]
            if v != 0:
                q[j] = c
                val[j] = v
                j += 1
        cur[k] = j


@njit(cache=True, fastmath=_FM)
def compress_nhwc_serial(x, N, P, Ctot, G, ptr, q, val, cnt):
    """x: flat float32 of [N, P, Ctot] (channels last), Ctot = G * Cg; returns nnz.

    With one group the lists are in position order, so they are written in one pass (each
    position's list appended, then its end recorded); with groups (list index (n, g, p))
    the counts come first, as in the parallel version."""
    Cg = Ctot // G
    if G == 1:
        ptr[0] = 0
        for t in range(N * P):
            cnt[t] = ptr[t]
            _nhwc_fill(x, cnt, q, val, P, Ctot, 1, Cg, t)
            ptr[t + 1] = cnt[t]
        return ptr[N * P]
    for t in range(N * P):
        _nhwc_count(x, cnt, P, Ctot, G, Cg, t)
    nnz = _prefix(cnt, ptr, N * G * P)
    for t in range(N * P):
        _nhwc_fill(x, cnt, q, val, P, Ctot, G, Cg, t)
    return nnz


@njit(cache=True, fastmath=_FM, parallel=True)
def compress_nhwc_parallel(x, N, P, Ctot, G, ptr, q, val, cnt):
    Cg = Ctot // G
    for t in prange(N * P):
        _nhwc_count(x, cnt, P, Ctot, G, Cg, t)
    nnz = _prefix(cnt, ptr, N * G * P)
    for t in prange(N * P):
        _nhwc_fill(x, cnt, q, val, P, Ctot, G, Cg, t)
    return nnz
