"""End-to-end latency of one model on a CUDA GPU with the engines a GPU user reaches for.

The engines (:data:`GPU_ENGINES`), each built for one batch shape and timed interleaved with
``torch.cuda.synchronize`` around every call, inputs already on the GPU:

- ``cuda_eager``: the model in float32 (cuDNN, torch's default arithmetic), the reference;
- ``cuda_bf16``: the model cast to bfloat16, channels_last;
- ``cuda_compile``: ``torch.compile(model, mode=compile_mode, dynamic=False)`` in float32
  (default mode ``max-autotune-no-cudagraphs``: Triton autotuning without CUDA graphs);
- ``cuda_graph``: one CUDA graph of the float32 eager model replayed per call (the launch
  overhead of batch 1 removed);
- ``cuda_sparse_csr``: every Conv2d / Linear but the first as ``torch.sparse`` CSR weights
  times an im2col input (:class:`dstcore.kernels.cuda.CudaSparseCSR`);
- ``cuda_2:4_synthetic``: bfloat16 with 2:4 semi-structured weights
  (``torch.sparse.to_sparse_semi_structured``) on the layers that are GEMMs of the shapes it
  takes (Linear, Conv2d as im2col; out x in multiples of 32 x 64); their weights are pruned 2:4 by
  magnitude here (:func:`two_four_mask`), so the model is not the trained one and its
  accuracy is not measured: the engine times what 2:4 sparsity would buy.

An engine that cannot be built (no CUDA, a shape or dtype an engine refuses, a compile
error) is left out with a one-line warning naming the reason.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dstcore.measure.engines import _root_reason, cycle_batches, max_abs_err
from dstcore.measure.timing import time_interleaved

GPU_ENGINES = ("cuda_eager", "cuda_bf16", "cuda_compile", "cuda_graph", "cuda_sparse_csr",
               "cuda_2:4_synthetic")

Engine = Callable[[Tensor], Tensor]


def gpu_wanted(mode: str) -> bool:
    """Whether ``latency.gpu`` = ``mode`` times the GPU engines on this machine."""
    return mode == "auto" and torch.cuda.is_available()


def gpu_name(device: torch.device) -> str:
    """The GPU's name (``torch.cuda.get_device_name``); ``cpu`` for the CPU."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def _need_cuda(device: torch.device, engine: str) -> None:
    if device.type != "cuda":
        raise RuntimeError(f"{engine} needs a CUDA device")


def _eager(model: nn.Module, x: Tensor, device: torch.device, mode: str) -> Engine:
    return copy.deepcopy(model).to(device).eval()


def _bf16(model: nn.Module, x: Tensor, device: torch.device, mode: str) -> Engine:
    m = copy.deepcopy(model).to(device, torch.bfloat16, memory_format=torch.channels_last).eval()
    return lambda x: m(x.to(torch.bfloat16, memory_format=torch.channels_last))


def _compiled(model: nn.Module, x: Tensor, device: torch.device, mode: str) -> Engine:
    torch._dynamo.reset()
    m = torch.compile(copy.deepcopy(model).to(device).eval(), mode=mode, dynamic=False)
    m(x)  # compile now, not in the timed calls
    return m


def _graph(model: nn.Module, x: Tensor, device: torch.device, mode: str) -> Engine:
    """Capture one forward of the float32 eager model on a static input (warmed up on a side
    stream, as CUDA graph capture requires); a call copies ``x`` in and replays."""
    _need_cuda(device, "cuda_graph")
    m = copy.deepcopy(model).to(device).eval()
    static_x = x.clone()
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            m(static_x)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = m(static_x)

    def replay(x: Tensor) -> Tensor:
        static_x.copy_(x)
        graph.replay()
        return static_y

    return replay


def _sparse_csr(model: nn.Module, x: Tensor, device: torch.device, mode: str) -> Engine:
    from dstcore.kernels.swap import sparsify_model

    _need_cuda(device, "cuda_sparse_csr")
    return sparsify_model(model, "cuda_sparse_csr").to(device)  # a copy; weights on the GPU


def two_four_mask(weight: Tensor) -> Tensor:
    """Keep mask (bool, ``weight``'s shape [K, N], N a multiple of 4) of 2:4 magnitude
    pruning: in every group of 4 consecutive weights of a row, the 2 largest |w| (ties: the
    first)."""
    k, n = weight.shape
    if n % 4:
        raise ValueError(f"2:4 needs a multiple of 4 columns, got {n}")
    groups = weight.detach().abs().reshape(k, n // 4, 4)
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order[..., :2], True)
    return keep.reshape(k, n)


def _two_four_fits(module: nn.Module) -> bool:
    """Whether ``module`` is a GEMM whose weight 2:4 semi-structured bfloat16 takes: a Linear,
    or a Conv2d of one group (its weight [K, C·R·S] against the im2col input), with out x in
    multiples of 32 x 64."""
    if isinstance(module, nn.Linear):
        out, inp = module.out_features, module.in_features
    elif isinstance(module, nn.Conv2d) and module.groups == 1:
        out, inp = module.out_channels, module.weight[0].numel()
    else:
        return False
    return out % 32 == 0 and inp % 64 == 0


class SemiStructuredGemm(nn.Module):
    """A Linear or Conv2d whose weight is pruned 2:4 and held semi-structured (bf16); a conv
    multiplies it with its input's im2col rows (``F.unfold``; a 1x1 stride-1 conv with the
    channels_last pixels directly)."""

    def __init__(self, layer: nn.Linear | nn.Conv2d) -> None:
        super().__init__()
        from torch.sparse import to_sparse_semi_structured

        from dstcore.kernels.cpu import conv_params

        w = layer.weight.detach().reshape(layer.weight.shape[0], -1).to(torch.bfloat16)
        w = w * two_four_mask(w)
        self.weight = nn.Parameter(to_sparse_semi_structured(w), requires_grad=False)
        self.bias = None if layer.bias is None else \
            nn.Parameter(layer.bias.detach().to(torch.bfloat16), requires_grad=False)
        self.conv = conv_params(layer) if isinstance(layer, nn.Conv2d) else None

    def forward(self, x: Tensor) -> Tensor:
        c = self.conv
        if c is None:
            return F.linear(x, self.weight, self.bias)
        n, _, h, w = x.shape
        if c.kernel_size == (1, 1) and c.stride == (1, 1) and c.padding == (0, 0):
            oh, ow = h, w
            rows = x.permute(0, 2, 3, 1).reshape(n * h * w, -1)
        else:
            oh, ow = c.out_hw(h, w)
            cols = F.unfold(x, c.kernel_size, c.dilation, c.padding, c.stride)  # [N, CRS, L]
            rows = cols.transpose(1, 2).reshape(n * oh * ow, -1)
        y = F.linear(rows, self.weight, self.bias)
        return y.reshape(n, oh, ow, -1).permute(0, 3, 1, 2)


def two_four_layers(model: nn.Module) -> list[str]:
    """Names of the Conv2d / Linear layers of ``model`` that 2:4 semi-structured takes."""
    from dstcore.sparsity.activations import weighted_layers

    return [name for name, m in weighted_layers(model) if _two_four_fits(m)]


def _two_four(model: nn.Module, x: Tensor, device: torch.device, mode: str) -> Engine:
    _need_cuda(device, "cuda_2:4_synthetic")
    m = copy.deepcopy(model).to(device, torch.bfloat16).eval()
    names = two_four_layers(m)
    if not names:
        raise RuntimeError("no Linear or Conv2d layer of a shape 2:4 takes "
                           "(out x in multiples of 32 x 64)")
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = m.get_submodule(parent_name) if parent_name else m
        setattr(parent, attr, SemiStructuredGemm(getattr(parent, attr)))
    return lambda x: m(x.to(torch.bfloat16))


BUILDERS: dict[str, Callable[[nn.Module, Tensor, torch.device, str], Engine]] = {
    "cuda_eager": _eager, "cuda_bf16": _bf16, "cuda_compile": _compiled, "cuda_graph": _graph,
    "cuda_sparse_csr": _sparse_csr, "cuda_2:4_synthetic": _two_four}


def build_engines(model: nn.Module, x: Tensor, device: torch.device, engines: Sequence[str],
                  compile_mode: str) -> tuple[dict[str, Engine], dict[str, str]]:
    """The engines that could be built for batch ``x`` (on ``device``), and the reason of each
    that could not (also warned once, in one line)."""
    built, left_out = {}, {}
    for name in engines:
        try:
            with torch.no_grad():
                built[name] = BUILDERS[name](model, x, device, compile_mode)
        except Exception as err:  # noqa: BLE001 - an engine that fails is left out
            left_out[name] = _root_reason(err)
            warnings.warn(f"{name} left out of the GPU latency: {left_out[name]}",
                          RuntimeWarning, stacklevel=2)
    return built, left_out


def time_gpu_engines(model: nn.Module, batches: Sequence[Tensor], device: torch.device, *,
                     engines: Sequence[str] = GPU_ENGINES,
                     compile_mode: str = "max-autotune-no-cudagraphs", warmup: int = 3,
                     repeats: int = 20, rounds: int = 4) -> dict[str, dict[str, float]]:
    """Latency of ``model`` with each of ``engines`` on ``device``, every call on the next of
    ``batches`` (one shape) in turn, timed interleaved with a device synchronisation before
    each clock start and stop. Per engine: :func:`time_interleaved`'s statistics, ``speedup``
    over ``cuda_eager`` and ``max_abs_err`` against its output on the first batch."""
    xs = [b.to(device) for b in batches]
    model = model.eval()
    names = list(dict.fromkeys(["cuda_eager", *engines]))
    built, _ = build_engines(model, xs[0], device, names, compile_mode)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    with torch.no_grad():
        ref = built["cuda_eager"](xs[0])
        errs = {name: max_abs_err(fn(xs[0]), ref) for name, fn in built.items()}
        fns = {name: cycle_batches(fn, xs) for name, fn in built.items()}
        res = time_interleaved(fns, warmup, repeats, rounds, reference="cuda_eager", sync=sync)
    for name, st in res.items():
        st["max_abs_err"] = errs[name]
    return res
