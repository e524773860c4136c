"""Training-time pools: torch's CPU max pools, computed faster with the same values and gradients.

torch's CPU ``max_pool2d`` forward writes an int64 index per output and took 3.0 ms of a
14 ms LeNet5 step (batch 128, 6x28x28 maps, one AVX-512 thread; docs/training_speed.md).
:func:`fast_pools` swaps, for the duration of a training loop, every ``nn.MaxPool2d`` of
kernel 2 and stride 2 for :class:`TrainingMaxPool2d`, whose float32 CPU forward with gradient
runs a Numba kernel that keeps a one-byte window position instead, and every
``nn.AdaptiveMaxPool2d`` for :class:`TrainingAdaptiveMaxPool2d`, which passes its input through
where it already has the output's size (LeNet5's classifier pool at 28x28). Both pick what
torch picks: the first maximum of a window in row-major order, or its last NaN, so the weights
a run writes are bit for bit those of torch's pools (tests/test_pooling.py). Anything else
(evaluation, no gradient, other dtypes, devices, shapes or pool settings) calls torch's pool.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from numba import njit, uint8
from torch import nn

__all__ = ["TrainingAdaptiveMaxPool2d", "TrainingMaxPool2d", "fast_pools", "max_pool2x2"]


@njit(inline="always")
def _window_rows(p, i, h, w):  # pragma: no cover - compiled
    """Flat offsets of rows 2i and 2i + 1 of plane ``p`` (``h`` x ``w``) and of output row
    ``i`` (``h // 2`` x ``w // 2``): the layout both kernels walk."""
    r0 = (p * h + 2 * i) * w
    return r0, r0 + w, (p * (h // 2) + i) * (w // 2)


@njit(cache=True, nogil=True, boundscheck=False)
def _pool_forward(x, out, where, planes, h, w):  # pragma: no cover - compiled
    """2x2 stride-2 max of each plane of ``x`` (flat float32, ``planes`` x ``h`` x ``w``, both
    even) into ``out``, with the winner's position in its window (0-3, row-major) in ``where``."""
    for p in range(planes):
        for i in range(h // 2):
            r0, r1, o = _window_rows(p, i, h, w)
            for j in range(w // 2):
                a, b = x[r0 + 2 * j], x[r0 + 2 * j + 1]
                c, d = x[r1 + 2 * j], x[r1 + 2 * j + 1]
                take = (b > a) | (b != b)  # torch: a later value wins if larger, or NaN
                best = b if take else a
                k = uint8(1) if take else uint8(0)
                take = (c > best) | (c != c)
                best = c if take else best
                k = uint8(2) if take else k
                take = (d > best) | (d != d)
                best = d if take else best
                k = uint8(3) if take else k
                out[o + j] = best
                where[o + j] = k


@njit(cache=True, nogil=True, boundscheck=False)
def _pool_backward(g, where, gi, planes, h, w):  # pragma: no cover - compiled
    """Each output gradient of ``g`` to its window's winner in ``gi`` (zeros elsewhere)."""
    for p in range(planes):
        for i in range(h // 2):
            r0, r1, o = _window_rows(p, i, h, w)
            for j in range(w // 2):
                k, v = where[o + j], g[o + j]
                gi[r0 + 2 * j] = v if k == 0 else 0.0
                gi[r0 + 2 * j + 1] = v if k == 1 else 0.0
                gi[r1 + 2 * j] = v if k == 2 else 0.0
                gi[r1 + 2 * j + 1] = v if k == 3 else 0.0


class _MaxPool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        x = x.contiguous()
        out = torch.empty(n, c, h // 2, w // 2, dtype=x.dtype)
        where = torch.empty(out.shape, dtype=torch.uint8)
        _pool_forward(x.view(-1).numpy(), out.view(-1).numpy(), where.view(-1).numpy(),
                      n * c, h, w)
        ctx.save_for_backward(where)
        ctx.input_shape = x.shape
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        (where,) = ctx.saved_tensors
        n, c, h, w = ctx.input_shape
        g = g.contiguous()
        gi = torch.empty(ctx.input_shape, dtype=g.dtype)
        _pool_backward(g.view(-1).numpy(), where.view(-1).numpy(), gi.view(-1).numpy(),
                       n * c, h, w)
        return gi


def max_pool2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)`` of a float32 CPU ``[N, C, H, W]`` tensor with even H and W, with
    torch's values and gradient, through the Numba kernels."""
    return _MaxPool2x2.apply(x)


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _fast_case(pool: nn.MaxPool2d) -> bool:
    """Settings the kernel computes: kernel 2, stride 2, no padding or dilation, floor mode."""
    return _pair(pool.kernel_size) == (2, 2) and _pair(pool.stride or pool.kernel_size) == \
        (2, 2) and _pair(pool.padding) == (0, 0) and _pair(pool.dilation) == (1, 1) \
        and not pool.ceil_mode and not pool.return_indices


class TrainingMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` (kernel 2, stride 2) that trains through :func:`max_pool2x2`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad and x.dim() == 4 \
                and x.dtype == torch.float32 and x.device.type == "cpu" \
                and x.shape[-2] % 2 == 0 and x.shape[-1] % 2 == 0:
            return max_pool2x2(x)
        return super().forward(x)


class TrainingAdaptiveMaxPool2d(nn.AdaptiveMaxPool2d):
    """``nn.AdaptiveMaxPool2d`` that passes through an input already of its output size (each
    window is one element: the same values and gradient)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = _pair(self.output_size)
        if not self.return_indices and x.dim() >= 3 and tuple(x.shape[-2:]) == size:
            return x
        return super().forward(x)


def _replacement(module: nn.Module) -> nn.Module | None:
    if type(module) is nn.MaxPool2d and _fast_case(module):
        return TrainingMaxPool2d(module.kernel_size, module.stride, module.padding,
                                 module.dilation, module.return_indices, module.ceil_mode)
    if type(module) is nn.AdaptiveMaxPool2d:
        return TrainingAdaptiveMaxPool2d(module.output_size, module.return_indices)
    return None


@contextlib.contextmanager
def fast_pools(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Swap ``model``'s max pools for the training pools above while the block runs (yields how
    many were swapped) and put the originals back after, so that tracing, saving and later
    evaluation see the model as built. ``enabled=False`` swaps nothing: compiled training,
    where Dynamo traces torch's pools (off the CPU the training pools call torch's anyway)."""
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    if enabled:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                new = _replacement(child)
                if new is not None:
                    new.train(child.training)
                    setattr(parent, name, new)
                    swapped.append((parent, name, child))
    try:
        yield len(swapped)
    finally:
        for parent, name, child in reversed(swapped):
            setattr(parent, name, child)

