"""Sparse conv2d / linear kernels with one API, and the engines they are compared against.

Kinds (``KERNELS``):

- ``dense``: torch's own conv2d / linear (oneDNN / MKL on CPU), the reference;
- ``weight_sparse``: pruned weights in CSR x the (padded, phase-split) dense input;
- ``act_sparse``: skips zero input activations (compressed per call);
- ``dual_sparse``: skips a product when the input or the weight (16-channel chunk) is zero;
- ``cuda_dense`` / ``cuda_sparse_csr``: cuDNN and ``torch.sparse`` CSR, only with CUDA.

``prepare(kind, module_or_weight, ...)`` returns a callable kernel object: conv
``[N, C, H, W] -> [N, K, OH, OW]``, linear ``[N, in] -> [N, out]`` (float32, CPU for the CPU
kinds). ``sparsify_model`` swaps every Conv2d/Linear of a model for a kernel-backed module.
ONNX Runtime (dense) lives in :mod:`dstcore.kernels.onnxrt`. ``compile_model`` (in
:mod:`dstcore.kernels.runner`) compiles a whole model into one native call per forward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from dstcore.core.geometry import pair
from dstcore.kernels.cpu import (
    ActSparse,
    ConvParams,
    DenseConv2d,
    DenseLinear,
    DualSparse,
    Kernel,
    WeightSparseConv2d,
    WeightSparseLinear,
    conv_params,
)
from dstcore.kernels.cuda import CudaDense, CudaSparseCSR, cuda_available


def _make_dense(weight: Tensor, bias: Tensor | None, params: ConvParams | None,
                **opts: Any) -> Kernel:
    return DenseLinear(weight, bias) if params is None else DenseConv2d(weight, bias, params)


def _make_weight(weight: Tensor, bias: Tensor | None, params: ConvParams | None,
                 **opts: Any) -> Kernel:
    if params is None:
        return WeightSparseLinear(weight, bias)
    return WeightSparseConv2d(weight, bias, params, **opts)


def _make_act(weight: Tensor, bias: Tensor | None, params: ConvParams | None,
              **opts: Any) -> Kernel:
    return ActSparse(weight, bias, params, **opts)


def _make_dual(weight: Tensor, bias: Tensor | None, params: ConvParams | None,
               **opts: Any) -> Kernel:
    return DualSparse(weight, bias, params, **opts)


def _make_cuda_dense(weight: Tensor, bias: Tensor | None, params: ConvParams | None,
                     **opts: Any) -> Kernel:
    return CudaDense(weight, bias, params)


def _make_cuda_csr(weight: Tensor, bias: Tensor | None, params: ConvParams | None,
                   **opts: Any) -> Kernel:
    return CudaSparseCSR(weight, bias, params)


#: kind -> factory(weight, bias, params_or_None_for_linear, **options)
KERNELS: dict[str, Callable[..., Kernel]] = {
    "dense": _make_dense,
    "weight_sparse": _make_weight,
    "act_sparse": _make_act,
    "dual_sparse": _make_dual,
    "cuda_dense": _make_cuda_dense,
    "cuda_sparse_csr": _make_cuda_csr,
}
CPU_KINDS = ("dense", "weight_sparse", "act_sparse", "dual_sparse")
CUDA_KINDS = ("cuda_dense", "cuda_sparse_csr")


def available_kinds() -> tuple[str, ...]:
    """Kinds usable on this machine (CUDA kinds only when ``torch.cuda.is_available()``)."""
    return CPU_KINDS + (CUDA_KINDS if cuda_available() else ())


def prepare(kind: str, module_or_weight: nn.Module | Tensor, bias: Tensor | None = None, *,
            stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] = 0,
            dilation: int | tuple[int, int] = 1, groups: int = 1, **options: Any) -> Kernel:
    """Build a kernel of ``kind`` for an ``nn.Conv2d`` / ``nn.Linear`` or a raw weight.

    A 4-D weight [K, C/groups, R, S] is a conv (stride/padding/dilation/groups apply), a 2-D
    weight [out, in] a linear layer. Weight preprocessing happens here, once. Options:
    ``contiguous_output`` (conv: return a contiguous NCHW tensor instead of a strided /
    channels_last view, costs a copy), ``dense_fraction`` (dual_sparse).
    """
    if kind not in KERNELS:
        raise ValueError(f"unknown kernel kind {kind!r}; choose from {sorted(KERNELS)}")
    if isinstance(module_or_weight, nn.Conv2d):
        m = module_or_weight
        return KERNELS[kind](m.weight, m.bias, conv_params(m), **options)
    if isinstance(module_or_weight, nn.Linear):
        m = module_or_weight
        return KERNELS[kind](m.weight, m.bias, None, **options)
    if isinstance(module_or_weight, Tensor):
        w = module_or_weight
        if w.dim() == 2:
            return KERNELS[kind](w, bias, None, **options)
        if w.dim() == 4:
            params = ConvParams(w.shape[1] * groups, w.shape[0], (w.shape[2], w.shape[3]),
                                pair(stride), pair(padding), pair(dilation), groups)
            return KERNELS[kind](w, bias, params, **options)
        raise ValueError(f"weight must be 2-D (linear) or 4-D (conv), got {tuple(w.shape)}")
    raise TypeError(f"expected nn.Conv2d, nn.Linear or a weight tensor, got {type(module_or_weight)}")


from dstcore.kernels.runner import RUNNER_KINDS, UnsupportedModel, compile_model  # noqa: E402
from dstcore.kernels.swap import KernelModule, sparsify_model  # noqa: E402

__all__ = [
    "KERNELS",
    "CPU_KINDS",
    "CUDA_KINDS",
    "ConvParams",
    "Kernel",
    "KernelModule",
    "RUNNER_KINDS",
    "UnsupportedModel",
    "available_kinds",
    "compile_model",
    "conv_params",
    "cuda_available",
    "prepare",
    "sparsify_model",
]
