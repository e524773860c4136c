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

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numba
import numpy as np
import torch
from torch import Tensor, nn

from dstcore import DstError
from dstcore.kernels._codegen import _load_forward, _source, cache_dir
from dstcore.kernels._lower_conv import (
    BLOCK_MIN_WIDTH,
    BLOCK_ZERO_FRACTION,
    DIRECT_ACC_LANES,
    DIRECT_MAX_CHANNELS,
)
from dstcore.kernels._lower_graph import _handler, _lower_graph
from dstcore.kernels._lowering import UnsupportedModel, _Lowering, _name
from dstcore.kernels._memory import ALIGN, SLACK, _make_plan, _Plan

__all__ = [
    "ALIGN",
    "BLOCK_MIN_WIDTH",
    "BLOCK_ZERO_FRACTION",
    "DIRECT_ACC_LANES",
    "DIRECT_MAX_CHANNELS",
    "MAX_OPERATIONS",
    "RUNNER_KINDS",
    "SLACK",
    "CompiledModel",
    "UnsupportedModel",
    "cache_dir",
    "compile_model",
]

RUNNER_KINDS = ("dense", "act_sparse", "dual_sparse")
MAX_OPERATIONS = 250  # traced operations; ResNet50 has 122, GoogLeNet 140, DenseNet121 372


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
        plan = _make_plan(low.ops, low.shapes, low.out_shape, layout, shape[0])
        self._plans[tuple(shape)] = (plan, fn, weights)

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
