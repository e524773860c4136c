"""Lowering of Conv2d / Linear nodes to runner ops: the path of each layer ('gemm', 'direct',
'compress' or 'block') and its weight layout, with a fused ReLU / residual-add epilogue.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from torch import Tensor, nn

from dstcore.kernels._lowering import UnsupportedModel, _is_add, _is_relu, _Lowering, _name, _single_user
from dstcore.kernels._ops import _Conv, _Gather, _Im2Col
from dstcore.kernels._runner_ops import BLOCK_OUT
from dstcore.kernels.cpu import (
    _HAS_AVX512,
    MAX_ACC_LANES,
    ConvParams,
    act_weight_layout,
    choose_block,
    conv_params,
)

#: block-pruned path of dual_sparse: used when at least this fraction of the (16 output
#: channels x 1 input channel) weight units of a layer is entirely zero
BLOCK_ZERO_FRACTION = 0.25
#: ... and whose kernel is at least this wide: a block list entry feeds S*16 accumulator lanes,
#: and with S = 1 (1x1 convs, linear) the list overhead outweighs the skipped blocks
#: (ResNet50, 80% block-pruned, 90% input sparsity: 97 ms with 1x1 blocks vs 47 ms without)
BLOCK_MIN_WIDTH = 3
#: convs with at most this many input channels (the image layer, the first stage of the
#: CIFAR-style ResNets) run as a dense direct conv in every kind unless dual_sparse takes
#: the block path: the per-position non-zero lists are too short to pay for themselves
#: (ResNet-20 16-channel 3x3 convs at 62% input sparsity: 40 us direct vs 75 us sparse;
#: at 32 channels the two are level, so sparsity decides and the sparse path is kept)
DIRECT_MAX_CHANNELS = 16
#: direct conv output tile (pixels x channels) held in registers: 16 of 32 zmm with AVX-512
DIRECT_ACC_LANES = 256 if _HAS_AVX512 else 64


def _fuse_epilogue(low: _Lowering, node: torch.fx.Node) -> tuple[torch.fx.Node, int, int | None]:
    """The last node an op at ``node`` can absorb (ReLU, add of an available value, add + ReLU),
    its epilogue mode and the residual value."""
    user = _single_user(node)
    if user is not None and _is_relu(user, low.gm):
        low.done.add(user)
        return user, 1, None
    if user is not None and _is_add(user):
        other = user.args[1] if user.args[0] is node else user.args[0]
        if other in low.env and not isinstance(low.env[other], tuple):
            low.done.add(user)
            after = _single_user(user)
            if after is not None and _is_relu(after, low.gm):
                low.done.add(after)
                return after, 3, low.env[other]
            return user, 2, low.env[other]
    return node, 0, None


def _conv_weight(low: _Lowering, node: torch.fx.Node,
                 mod: nn.Module) -> tuple[Tensor, ConvParams, int]:
    """(weight [K, C, R, S], params, input value) of a Conv2d, or of a Linear as a conv."""
    if isinstance(mod, nn.Conv2d):
        if mod.groups != 1:
            raise UnsupportedModel(f"compile_model: grouped convolution {_name(node, low.gm)}")
        return mod.weight.detach(), conv_params(mod), low.value_of(node.args[0])
    src = low.env[node.args[0]]
    w = mod.weight.detach()
    if isinstance(src, tuple):  # flatten of an HxW map -> a conv with an HxW kernel
        h, wd, c = low.shapes[src[1]]
        return (w.reshape(w.shape[0], c, h, wd),
                ConvParams(c, w.shape[0], (h, wd)), src[1])
    c = low.shapes[src][2]
    if low.shapes[src][:2] != (1, 1) or w.shape[1] != c:
        raise UnsupportedModel(f"compile_model: Linear {_name(node, low.gm)} on a "
                               f"{low.shapes[src]} (HxWxC) input")
    return w[:, :, None, None], ConvParams(c, w.shape[0], (1, 1)), src


def _block_mask(w: Tensor) -> np.ndarray | None:
    """Alive-channel bit masks [K/16 * C/16] when the layer is block pruned, else None."""
    k, c = w.shape[:2]
    if k % BLOCK_OUT or c % 16:
        return None
    alive = w.reshape(k // BLOCK_OUT, BLOCK_OUT, c, -1).ne(0).any(-1).any(1)  # [nblk, C]
    if 1.0 - alive.float().mean().item() < BLOCK_ZERO_FRACTION:
        return None
    bits = alive.reshape(-1, 16).to(torch.int64) << torch.arange(16)
    return bits.sum(-1).numpy().astype(np.int64)


def _alive_channels(w: Tensor) -> list[int] | None:
    """The input channels with a non-zero weight, when that is fewer than all (at least one,
    so a fully pruned layer still has an input); None when every channel is alive."""
    alive = w.ne(0).flatten(2).any(-1).any(0).nonzero().flatten().tolist()
    if len(alive) == w.shape[1]:
        return None
    return alive or [0]


def _gather_alive(low: _Lowering, x: int, w: Tensor, params: ConvParams, alive: list[int]
                  ) -> tuple[int, Tensor, ConvParams]:
    """A conv whose other input channels have only zero weights, as the same conv on a copy
    of just the channels ``alive`` (``dual_sparse``: pruned weights skipped, computed densely)."""
    h, wd, _ = low.shapes[x]
    y = low.new_value((h, wd, len(alive)))
    low.ops.append(_Gather([x], y, channels=tuple(alive)))
    return y, w[:, alive], replace(params, in_channels=len(alive))


def _lower_conv(low: _Lowering, node: torch.fx.Node, mod: nn.Module) -> None:
    w, params, x = _conv_weight(low, node, mod)
    last, mode, res = _fuse_epilogue(low, node)
    h, wd, _ = low.shapes[x]
    oh, ow = params.out_hw(h, wd)
    y = low.new_value((oh, ow, params.out_channels), flat=isinstance(mod, nn.Linear))
    use_blocks = low.kind == "dual_sparse" and params.kernel_size[1] >= BLOCK_MIN_WIDTH
    amask = _block_mask(w) if use_blocks else None
    direct_shape = params.kernel_size != (h, wd)
    alive = _alive_channels(w) if low.kind == "dual_sparse" else None
    weight_sparsity = float((w == 0).float().mean())
    if direct_shape and alive is not None and len(alive) <= DIRECT_MAX_CHANNELS:
        x, w, params = _gather_alive(low, x, w, params, alive)
        op = _direct_conv(low, x, w, mod.bias, params)
    elif amask is None and direct_shape and params.in_channels <= DIRECT_MAX_CHANNELS:
        op = _direct_conv(low, x, w, mod.bias, params)
    elif low.kind == "dense":
        op = _gemm_conv(low, x, w, mod.bias, params)
    else:
        op = _sparse_conv(low, x, w, mod.bias, params, amask)
    op.out, op.mode, op.res, op.parallel = y, mode, res, low.parallel
    op.ins += [res] if res is not None else []
    low.ops.append(op)
    low.layers.append({"layer": str(node.target), "path": op.path, "block": op.kb,
                       "weight_sparsity": weight_sparsity})
    low.env[last] = y
    low.env[node] = y


def _gemm_conv(low: _Lowering, x: int, w: Tensor, bias: Tensor | None,
               params: ConvParams) -> _Conv:
    """A dense layer as one GEMM over [positions, kernel taps x C] (im2col first unless the
    input already is that matrix: a 1x1 stride-1 conv, or a kernel covering the whole map)."""
    h, wd, _ = low.shapes[x]
    plain_1x1 = params.kernel_size == (1, 1) and params.stride == (1, 1)
    whole_map = params.kernel_size == (h, wd)
    if params.padding != (0, 0) or not (plain_1x1 or whole_map):
        x, w, params = _im2col(low, x, w, params)
    k = params.out_channels
    wt = w.permute(0, 2, 3, 1).reshape(k, -1).t().contiguous()  # [R*S*C, K], NHWC patch order
    b = bias.detach() if bias is not None else torch.zeros(k)
    return _Conv([x], None, params=params, path="gemm", w_range=low.add_weights(wt.numpy()),
                 b_range=low.add_weights(b.float().numpy()), kb=0, kd=wt.shape[0])


def _direct_conv(low: _Lowering, x: int, w: Tensor, bias: Tensor | None,
                 params: ConvParams) -> _Conv:
    """A dense conv over few input channels as output tiles of T pixels x KB channels in
    registers (KB = K rounded up to 16, at most 64; T*KB at most DIRECT_ACC_LANES, and T
    splits a row evenly: OW = 28 with room for 16 gives two tiles of 14, not 16 + 16)."""
    k, c, r, s = w.shape
    kb = min(64, -(-k // 16) * 16)
    nkb = -(-k // kb)
    wp = torch.zeros(nkb * kb, c, r, s)
    wp[:k] = w
    wf = wp.reshape(nkb, kb, c, r, s).permute(0, 3, 4, 2, 1)  # [nkb, R, S, C, KB]
    bp = torch.zeros(nkb * kb)
    if bias is not None:
        bp[:k] = bias.detach()
    ow = params.out_hw(*low.shapes[x][:2])[1]
    tiles = -(-ow // max(1, DIRECT_ACC_LANES // kb))
    return _Conv([x], None, params=params, path="direct",
                 spec_index=low.spec(-(-ow // tiles), kb, params.stride[1] * c),
                 w_range=low.add_weights(wf.contiguous().numpy()),
                 b_range=low.add_weights(bp.numpy()), kb=kb)


def _sparse_conv(low: _Lowering, x: int, w: Tensor, bias: Tensor | None,
                 params: ConvParams, amask: np.ndarray | None) -> _Conv:
    """A layer that skips zero inputs (and, on block-pruned weights, dead weight blocks).

    A kernel covering the whole unpadded map (a linear layer after a flatten) becomes a 1x1
    conv over its H*W*C inputs, read from the same NHWC buffer: one list of non-zeros and
    no taps that land outside the single output pixel."""
    h, wd, c = low.shapes[x]
    in_hwc = None
    if (params.kernel_size == (h, wd) != (1, 1) and params.padding == (0, 0)
            and params.dilation == (1, 1)):
        k = params.out_channels
        w = w.permute(0, 2, 3, 1).reshape(k, h * wd * c, 1, 1)  # NHWC patch order
        params, in_hwc = ConvParams(h * wd * c, k, (1, 1)), (1, 1, h * wd * c)
    path = "block" if amask is not None else "compress"
    taps = params.kernel_size[1]
    kb = BLOCK_OUT if path == "block" else choose_block(taps, params.out_channels, MAX_ACC_LANES)
    wf, bf = act_weight_layout(w, bias, 1, kb)
    return _Conv([x], None, params=params, path=path, spec_index=low.spec(taps, kb),
                 w_range=low.add_weights(wf.numpy()), b_range=low.add_weights(bf.numpy()),
                 kb=kb, amask=amask, in_hwc=in_hwc)


def _im2col(low: _Lowering, x: int, w: Tensor, params: ConvParams
            ) -> tuple[int, Tensor, ConvParams]:
    """Lower a conv to im2col (patches [OH, OW, R*S*C]) + a 1x1 conv over R*S*C channels."""
    h, wd, c = low.shapes[x]
    oh, ow = params.out_hw(h, wd)
    (r, s), k = params.kernel_size, params.out_channels
    col = low.new_value((oh, ow, r * s * c))
    low.ops.append(_Im2Col([x], col, geo=(r, s, *params.stride, *params.padding,
                                           *params.dilation)))
    w1 = w.permute(0, 2, 3, 1).reshape(k, r * s * c, 1, 1)
    return col, w1, ConvParams(r * s * c, k, (1, 1))
