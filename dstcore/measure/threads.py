"""Thread control for the timings: torch and Numba run with the same count.

Threads are set with ``numba.set_num_threads`` first and ``torch.set_num_threads`` second
(with Numba's OpenMP layer the first also sets OpenMP's count); ONNX Runtime sessions get the
same ``intra_op_num_threads`` from their callers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import numba
import torch


def max_threads() -> int:
    """Threads usable by this process (CPU affinity), capped by Numba's pool size."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        n = os.cpu_count() or 1
    return max(1, min(n, numba.config.NUMBA_NUM_THREADS))


def set_threads(n: int | None) -> int:
    """Set torch and Numba thread counts to ``n`` (None = all); returns the count used."""
    n = max_threads() if n is None else max(1, min(int(n), max_threads()))
    numba.set_num_threads(n)  # first: with Numba's OpenMP layer this also sets OpenMP's count
    torch.set_num_threads(n)
    return n


@contextmanager
def threads(n: int | None) -> Iterator[int]:
    """Context manager: run with ``n`` threads, restore the previous counts afterwards."""
    old_n = numba.get_num_threads()  # first: launching Numba's OpenMP pool resets OpenMP's count
    old_t = torch.get_num_threads()
    try:
        yield set_threads(n)
    finally:
        numba.set_num_threads(min(old_n, numba.config.NUMBA_NUM_THREADS))
        torch.set_num_threads(old_t)


def thread_counts_used(counts: Iterable[int | None]) -> list[int]:
    """The thread counts as written into a sidecar: None (all threads) as :func:`max_threads`."""
    return [max_threads() if t is None else t for t in counts]
