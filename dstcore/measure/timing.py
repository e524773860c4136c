"""Timers: single calls around ``time.perf_counter``, warm-up first, median and p10/p90.

Kernels that are compared are timed *interleaved* (:func:`time_interleaved`: round-robin,
several rounds) and a speedup is the median over rounds of (reference round median / own
round median), which cancels slow drifts of the machine (frequency, other processes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np


def _stats(samples_s: Sequence[float]) -> dict[str, float]:
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    return {"median_ms": float(np.median(a)), "p10_ms": float(np.percentile(a, 10)),
            "p90_ms": float(np.percentile(a, 90)), "mean_ms": float(a.mean()),
            "std_ms": float(a.std()), "min_ms": float(a.min()), "n": int(a.size)}


def time_callable(fn: Callable[[], Any], warmup: int = 5, repeats: int = 30, *,
                  sync: Callable[[], Any] | None = None) -> dict[str, float]:
    """Time ``fn()`` (ms): ``warmup`` untimed calls, then ``repeats`` timed single calls.

    Returns median_ms, p10_ms, p90_ms, mean_ms, std_ms, min_ms, n. ``sync`` (e.g.
    ``torch.cuda.synchronize``) is called before starting and before stopping each clock.
    """
    for _ in range(warmup):
        fn()
    return _stats([_time_once(fn, sync) for _ in range(max(1, repeats))])


def _time_once(fn: Callable[[], Any], sync: Callable[[], Any] | None) -> float:
    """Seconds for one call of ``fn``, with ``sync()`` before starting and stopping the clock."""
    if sync is not None:
        sync()
    t0 = time.perf_counter()
    fn()
    if sync is not None:
        sync()
    return time.perf_counter() - t0


def time_interleaved(fns: Mapping[str, Callable[[], Any]], warmup: int = 3, repeats: int = 20,
                     rounds: int = 4, reference: str | None = None, *,
                     sync: Callable[[], Any] | None = None) -> dict[str, dict[str, float]]:
    """Time several callables round-robin: ``rounds`` rounds, each running every function
    ``ceil(repeats / rounds)`` times in a row. Per function: the :func:`time_callable`
    statistics over all samples, plus ``speedup`` = median over rounds of
    (reference round median / own round median) when ``reference`` is given."""
    per_round = max(1, -(-repeats // max(1, rounds)))
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    round_med: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(max(1, rounds)):
        for name, fn in fns.items():
            rs = [_time_once(fn, sync) for _ in range(per_round)]
            samples[name].extend(rs)
            round_med[name].append(float(np.median(rs)))
    out = {}
    for name in fns:
        st = _stats(samples[name])
        if reference is not None:
            ratios = np.asarray(round_med[reference]) / np.asarray(round_med[name])
            st["speedup"] = float(np.median(ratios))
        out[name] = st
    return out
