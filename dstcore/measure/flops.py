"""Exact multiplication counts per image: dense MACs and effective MACs.

- Dense MACs of a layer: output elements x (C_in / groups) x kH x kW for a Conv2d, output
  features x input features for a Linear (per image; biases, BN and pooling not counted).
- Effective MACs: the number of those products whose weight AND input activation are both
  non-zero. For a Conv2d this is ``conv2d(input != 0, weight != 0)`` summed over the
  output; zero padding contributes nothing. Both are averaged over the images seen.

``flop_counter_macs`` cross-checks the dense count with ``torch.utils.flop_counter``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from dstcore.core.geometry import pair
from dstcore.sparsity.activations import weighted_layers


def dense_macs(module: nn.Module, x: Tensor, y: Tensor) -> int:
    """Multiplications of ``module`` for the whole batch (input ``x`` [N, ...], output ``y``)."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return y.numel() * (module.in_channels // module.groups) * kh * kw
    return y.numel() * module.in_features


def nonzero_map(x: Tensor) -> Tensor:
    """Non-zero count of each input position over the batch: (x != 0) summed over dim 0
    (int32: exact up to 2^31 images a batch, and twice as fast as int64 on a CPU)."""
    return (x != 0).sum(0, dtype=torch.int32)


@torch.no_grad()
def conv2d_macs(x: Tensor, weight: Tensor, stride=1, padding=0, dilation=1, groups=1,
                nonzero: Tensor | None = None) -> tuple[int, int]:
    """(dense, effective) multiplications of conv2d(x [N,C,H,W], weight) for the whole batch.

    Effective: products whose input and weight are both non-zero; zero padding adds none.
    Summed over images and output positions first, the count is sum_(c,i,j) K[c,i,j] S[c,i,j]:
    K = non-zero weights of channel c's group at tap (i, j) over its output channels, S = non-zero
    inputs of channel c that tap (i, j) meets over all outputs. Integer arithmetic, exact.
    ``nonzero``: :func:`nonzero_map` of ``x`` when the caller already has it.
    """
    (sh, sw), (ph, pw), (dh, dw) = (pair(v) for v in (stride, padding, dilation))
    c_out, c_in_g, kh, kw = weight.shape
    n, c_in, h, w = x.shape
    out_h = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    nonzero = nonzero_map(x) if nonzero is None else nonzero
    nonzero = F.pad(nonzero, (pw, pw, ph, ph))  # [C, H+2p, W+2p]
    taps = torch.stack([
        nonzero[:, i * dh:i * dh + (out_h - 1) * sh + 1:sh,
                j * dw:j * dw + (out_w - 1) * sw + 1:sw].sum((1, 2))
        for i in range(kh) for j in range(kw)], dim=1).view(groups, c_in_g, kh, kw)
    kernel = (weight != 0).view(groups, c_out // groups, c_in_g, kh, kw).sum(1, dtype=torch.int64)
    dense = n * out_h * out_w * c_out * c_in_g * kh * kw
    return int(dense), int((kernel * taps).sum().item())


@torch.no_grad()
def linear_macs(x: Tensor, weight: Tensor, nonzero: Tensor | None = None) -> tuple[int, int]:
    """(dense, effective) multiplications of x [..., in] @ weight[out, in].T for the batch
    (``nonzero``: :func:`nonzero_map` of ``x``, when already computed)."""
    rows = x.reshape(-1, weight.shape[1])
    nonzero = nonzero_map(x) if nonzero is None else nonzero
    nz_inputs = nonzero.reshape(-1, weight.shape[1]).sum(0)
    nz_weights = (weight != 0).sum(0, dtype=torch.int64)
    return rows.shape[0] * weight.numel(), int((nz_inputs * nz_weights).sum().item())


@torch.no_grad()
def effective_macs(module: nn.Module, x: Tensor, nonzero: Tensor | None = None) -> int:
    """Products with a non-zero weight AND a non-zero input, summed over the batch ``x``
    (``nonzero``: :func:`nonzero_map` of ``x``, when already computed)."""
    if isinstance(module, nn.Conv2d):
        padding = module.padding
        if module.padding_mode != "zeros":  # padded values are copies of inputs, not zeros
            x = F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
            padding, nonzero = 0, None
        return conv2d_macs(x, module.weight, module.stride, padding, module.dilation,
                           module.groups, nonzero)[1]
    return linear_macs(x, module.weight, nonzero)[1]


class MacCounter:
    """Forward hooks that add up dense and effective MACs per layer over the batches seen.

    With ``effective`` it also counts each layer's non-zero inputs (``input_nonzero`` of
    ``input_elements``), from the same pass over the input, so callers need not count again.
    The effective count is linear in each layer's :func:`nonzero_map`, so the maps are summed
    over batches (int64) and turned into counts once, by :meth:`summary` (the weights must not
    change while observing; a Conv2d whose padding is not zeros is counted batch by batch).
    """

    def __init__(self, model: nn.Module, effective: bool = True) -> None:
        self.layers = weighted_layers(model)
        self.effective = effective
        self.dense = {n: 0 for n, _ in self.layers}
        self._counted = {n: 0 for n, _ in self.layers}
        self._maps: dict[str, tuple[nn.Module, Tensor, int]] = {}
        self.input_nonzero = {n: 0 for n, _ in self.layers}
        self.input_elements = {n: 0 for n, _ in self.layers}
        self.images = 0

    def _observe(self, name: str, module: nn.Module, x: Tensor, y: Tensor) -> None:
        self.dense[name] += dense_macs(module, x, y)
        if self.effective:
            nonzero = nonzero_map(x)
            self.input_nonzero[name] += int(nonzero.sum())
            self.input_elements[name] += x.numel()
            if getattr(module, "padding_mode", "zeros") != "zeros":
                self._counted[name] += effective_macs(module, x, nonzero)
            elif name in self._maps:
                _, total, n = self._maps[name]
                self._maps[name] = (module, total.add_(nonzero), n + x.shape[0])
            else:
                self._maps[name] = (module, nonzero.to(torch.int64), x.shape[0])

    @property
    def nonzero(self) -> dict[str, int]:
        """Effective MACs per layer summed over the batches seen."""
        out = dict(self._counted)
        for name, (module, total, n) in self._maps.items():
            shape = (n, *total.shape) if isinstance(module, nn.Conv2d) else total.shape
            out[name] += effective_macs(module, torch.empty(shape, device="meta"), total)
        return out

    @contextmanager
    def observing(self) -> Iterator[MacCounter]:
        handles = [m.register_forward_hook(
            lambda mod, args, out, _n=n: self._observe(_n, mod, args[0], out))
            for n, m in self.layers]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def count_images(self, n: int) -> None:
        self.images += n

    def summary(self) -> dict:
        """Per-image dense and effective MACs per layer and in total, with the reduction in %."""
        n = max(self.images, 1)
        effective = self.nonzero
        layers = {name: {"dense": self.dense[name] / n,
                         "effective": effective[name] / n if self.effective else None}
                  for name, _ in self.layers}
        dense = sum(v["dense"] for v in layers.values())
        out = {"dense": dense, "layers": layers}
        if self.effective:
            eff = sum(v["effective"] for v in layers.values())
            out["effective"] = eff
            out["reduction_pct"] = 100.0 * (1.0 - eff / dense) if dense else 0.0
        return out


def flop_counter_macs(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """MACs per image according to torch.utils.flop_counter (its FLOPs / 2), batch of one."""
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype))
    model.train(was_training)
    return counter.get_total_flops() / 2
