"""End-to-end timing of one model with every inference engine, interleaved in this process.

The engines: torch eager ('dense'), ONNX Runtime ('onnxruntime', no spinning: its pool
would steal a core from the engines timed between its calls), the compiled runner
(:func:`dstcore.kernels.compile_model`, named by :data:`RUNNER_NAMES`) and, on request,
``torch.compile`` ('torch_compile', :func:`compile_torch`).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dstcore.measure.timing import time_interleaved

#: runner kind -> kernel name in the latency tables (the runner's dense kind is not torch's)
RUNNER_NAMES = {"dense": "runner_dense", "act_sparse": "act_sparse",
                "dual_sparse": "dual_sparse"}


def max_abs_err(a: Tensor, b: Tensor) -> float:
    """Largest absolute difference of two outputs (0 for empty ones)."""
    return float((a.float() - b.float()).abs().max().item()) if a.numel() else 0.0


def time_engines(model: nn.Module, x: Tensor, nthr: int, onnx_model: bytes | None,
                 runner_kinds: Sequence[str], warmup: int = 3, repeats: int = 20,
                 rounds: int = 4, *, torch_compile: bool = False,
                 more: Sequence[Tensor] = ()) -> dict[str, dict[str, float]]:
    """End-to-end latency of one model on batch ``x`` (each call takes the next of ``x``,
    ``*more``, cyclically: every engine sees the same sequence of batches, so a sparse
    engine's time is not that of one easy or hard input) with ``nthr`` threads, every engine
    timed interleaved in this process under ``torch.no_grad``: torch eager ('dense'), ONNX
    Runtime ('onnxruntime', when ``onnx_model`` is given; no spinning),
    :func:`dstcore.kernels.compile_model` of each of ``runner_kinds`` (named by
    ``RUNNER_NAMES``) and, with ``torch_compile``, ``torch.compile(model, dynamic=False)``
    ('torch_compile', see :func:`compile_torch`; left out with a warning when it cannot
    compile). Per engine: the statistics of :func:`time_interleaved` with ``speedup`` over
    torch eager, ``speedup_vs_ort`` (ratio of medians; NaN without ORT) and ``max_abs_err``
    against torch eager's output."""
    from dstcore.kernels import compile_model
    from dstcore.kernels.onnxrt import OrtRunner

    batches = [x, *more]

    def cycling(run: Callable[[Tensor], Any]) -> Callable[[], Any]:
        return cycle_batches(run, batches)

    with torch.no_grad():
        ref = model(x)
        fns: dict[str, Callable[[], Any]] = {"dense": cycling(model)}
        errs = {"dense": 0.0}
        if onnx_model is not None:
            ort_run = OrtRunner(onnx_model, threads=nthr, spinning=False)
            fns["onnxruntime"] = cycling(ort_run)
            errs["onnxruntime"] = max_abs_err(ort_run(x), ref)
        for kind in runner_kinds:
            compiled = compile_model(model, kind, threads=nthr)
            errs[RUNNER_NAMES[kind]] = max_abs_err(compiled(x), ref)
            fns[RUNNER_NAMES[kind]] = cycling(compiled)
        if torch_compile:
            got = compile_torch(model, x)
            if got is not None:
                tc_model, tc_out = got
                errs["torch_compile"] = max_abs_err(tc_out, ref)
                fns["torch_compile"] = cycling(tc_model)
        res = time_interleaved(fns, warmup, repeats, rounds, reference="dense")
    ort_ms = res["onnxruntime"]["median_ms"] if "onnxruntime" in res else np.nan
    for name, st in res.items():
        st["speedup_vs_ort"] = ort_ms / st["median_ms"]
        st["max_abs_err"] = errs[name]
    return res


def cycle_batches(run: Callable[[Tensor], Any], batches: Sequence[Tensor]) -> Callable[[], Any]:
    """A no-argument call of ``run`` on the next of ``batches``, cyclically."""
    it = itertools.cycle(batches)
    return lambda: run(next(it))


def compile_torch(model: nn.Module,
                  x: Tensor) -> tuple[Callable[[Tensor], Tensor], Tensor] | None:
    """``torch.compile(model, dynamic=False)`` (default mode, inductor), compiled for the
    shape of ``x`` and the current thread count by one call under ``torch.no_grad``.

    Returns (compiled model, its output on ``x``), or None with a one-line warning naming
    the reason when compilation fails (no C++ compiler, an inductor error, ...; once per
    reason and process). Dynamo's caches are reset first: inductor's CPU code bakes in
    ``torch.get_num_threads()`` but Dynamo does not guard on it, so a graph compiled at
    another thread count (or a fallback to eager after too many recompiles) must not be
    reused. Inductor's on-disk cache (keyed by graph, shapes and thread count) keeps
    repeated compiles of a shape cheap.
    """
    try:
        torch._dynamo.reset()
        compiled = torch.compile(model, dynamic=False)
        with torch.no_grad():
            out = compiled(x)
    except Exception as err:  # noqa: BLE001 - any compile failure leaves the engine out
        torch._dynamo.reset()
        reason = _root_reason(err)
        if reason not in _COMPILE_FAILURES:  # once per reason: not again for every cell
            _COMPILE_FAILURES.add(reason)
            warnings.warn(f"torch_compile left out of the latency tables: {reason}",
                          RuntimeWarning, stacklevel=2)
        return None
    return compiled, out


#: reasons :func:`compile_torch` already warned about (Python's own once-per-location display
#: repeated the same warning for every cell when tried here)
_COMPILE_FAILURES: set[str] = set()


def _root_reason(err: BaseException) -> str:
    """'Type: first line' of the innermost exception (inductor wraps the real error)."""
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        inner = getattr(err, "inner_exception", None) or err.__cause__
        if not isinstance(inner, BaseException):
            break
        err = inner
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = lines[0] if lines else ""
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
