"""CUDA reference paths (cuDNN dense and ``torch.sparse`` CSR), usable only with a GPU.

On CPU-only machines ``cuda_available()`` is False and constructing these raises
``RuntimeError``; callers (latency sweeps, tests) skip them. Inputs are moved to the GPU in
``prepare_input`` (counted in the latency); time with ``torch.cuda.synchronize`` (see
``dstcore.measure.timing.time_callable(sync=...)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from dstcore.kernels.cpu import ConvParams, Kernel


def cuda_available() -> bool:
    return torch.cuda.is_available()


def _require_cuda() -> torch.device:
    if not cuda_available():
        raise RuntimeError("CUDA kernels need torch.cuda.is_available()")
    return torch.device("cuda")


class CudaDense(Kernel):
    """cuDNN conv2d / cuBLAS linear on the default CUDA device."""

    kind = "cuda_dense"

    def __init__(self, weight: Tensor, bias: Tensor | None, params: ConvParams | None) -> None:
        dev = _require_cuda()
        self.params = params
        self.layer_type = "linear" if params is None else "conv2d"
        self.weight = weight.detach().to(dev, torch.float32)
        self.bias = None if bias is None else bias.detach().to(dev, torch.float32)

    def prepare_input(self, x: Tensor) -> Tensor:
        return x.to(self.weight.device, non_blocking=True)

    def compute(self, x: Tensor) -> Tensor:
        p = self.params
        with torch.no_grad():
            if p is None:
                return F.linear(x, self.weight, self.bias)
            return F.conv2d(x, self.weight, self.bias, p.stride, p.padding, p.dilation, p.groups)


class CudaSparseCSR(Kernel):
    """Weights as ``torch.sparse_csr`` x im2col (``F.unfold``) input with ``torch.sparse.mm``."""

    kind = "cuda_sparse_csr"

    def __init__(self, weight: Tensor, bias: Tensor | None, params: ConvParams | None) -> None:
        dev = _require_cuda()
        self.params = params
        self.layer_type = "linear" if params is None else "conv2d"
        w = weight.detach().to(dev, torch.float32)
        g = 1 if params is None else params.groups
        kg = w.shape[0] // g
        self.w_csr = [w[i * kg:(i + 1) * kg].reshape(kg, -1).to_sparse_csr() for i in range(g)]
        self.bias = None if bias is None else bias.detach().to(dev, torch.float32)

    def prepare_input(self, x: Tensor) -> Tensor:
        return x.to(self.w_csr[0].device, non_blocking=True)

    def compute(self, x: Tensor) -> Tensor:
        p = self.params
        with torch.no_grad():
            if p is None:
                y = torch.sparse.mm(self.w_csr[0], x.t()).t()
                return y if self.bias is None else y + self.bias
            n, _, h, w = x.shape
            oh, ow = p.out_hw(h, w)
            g = p.groups
            cols = F.unfold(x, p.kernel_size, p.dilation, p.padding, p.stride)  # [N, C*R*S, L]
            cols = cols.view(n, g, -1, oh * ow).permute(1, 2, 0, 3).reshape(g, -1, n * oh * ow)
            outs = [torch.sparse.mm(self.w_csr[i], cols[i]) for i in range(g)]
            y = torch.cat(outs, 0).view(p.out_channels, n, oh, ow).permute(1, 0, 2, 3)
            if self.bias is not None:
                y = y + self.bias.view(1, -1, 1, 1)
            return y.contiguous()
