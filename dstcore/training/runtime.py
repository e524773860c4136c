"""Where and how a run computes: device, threads and determinism, the learning-rate schedule,
the per-epoch seed and the optimiser."""

from __future__ import annotations

import contextlib
import math
import os
import sys

import torch
from torch import nn
from tqdm.auto import tqdm

from dstcore import DstError
from dstcore.training.config import RunConfig


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DstError("train.device: 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512_BF16 or AMX), so that oneDNN's
    bf16 convolutions are fast (elsewhere oneDNN emulates them or has none)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on CUDA or a CPU with native bfloat16, else fp32; others unchanged."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" or cpu_has_native_bf16() else "fp32"


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse, in one line, an arithmetic the device does not have: tf32 is CUDA's; bf16 needs
    CUDA or a CPU with native bfloat16 (:func:`cpu_has_native_bf16`)."""
    if precision == "fp32" or device.type == "cuda":
        return
    if precision == "bf16" and cpu_has_native_bf16():
        return
    needs = "a CUDA device" if precision == "tf32" else \
        "a CUDA device or a CPU with native bfloat16 (AVX512_BF16 or AMX)"
    raise DstError(f"train.precision: {precision!r} needs {needs} (train.device resolved to "
                   f"{device.type}); use fp32")


def configure_runtime(threads: int, deterministic: bool, device: torch.device | None = None,
                      precision: str = "fp32", compiles: bool = True) -> None:
    """Set torch's thread count (0 keeps the default), deterministic algorithms and, on CUDA,
    cuDNN's autotuner and the fp32 arithmetic of matmuls and convolutions.

    ``deterministic``: ``torch.use_deterministic_algorithms`` (warn-only: an op without a
    deterministic implementation warns instead of failing), cuDNN's deterministic algorithms
    with its benchmark off, and the cuBLAS workspace setting its reproducibility needs (set
    before CUDA starts, so it holds for the run). Otherwise cuDNN autotunes (benchmark on).
    ``precision`` ``tf32`` lets cuBLAS and cuDNN use TF32 for float32; ``fp32`` asks for IEEE
    float32 (cuDNN's own default is TF32 convolutions); ``bf16`` is autocast (:func:`autocast`)
    over IEEE float32. ``compiles=False`` promises that this process compiles nothing (see
    :func:`use_deterministic_algorithms`).
    """
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    use_deterministic_algorithms(deterministic, compiles)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic and device is not None \
        and device.type == "cuda"
    if device is not None and device.type == "cuda":
        set_tf32(precision == "tf32")


def use_deterministic_algorithms(mode: bool, compiles: bool = True) -> None:
    """``torch.use_deterministic_algorithms(mode, warn_only=True)``. torch's function also sets
    inductor's ``deterministic`` flag, importing inductor and Dynamo for it (1.25 s of every
    run's start, torch 2.14 on one AVX-512 core); a process that compiles nothing
    (``compiles=False``) sets only the flag eager ops read."""
    if compiles or "torch._inductor.config" in sys.modules \
            or not hasattr(torch._C, "_set_deterministic_algorithms"):
        torch.use_deterministic_algorithms(mode, warn_only=True)
    else:
        torch._C._set_deterministic_algorithms(mode, warn_only=True)


def set_tf32(on: bool) -> None:
    """TF32 (or IEEE float32) for cuBLAS matmuls and cuDNN convolutions; torch releases
    without the ``fp32_precision`` settings take the older ``allow_tf32`` flags."""
    if hasattr(torch.backends.cudnn, "conv") and \
            hasattr(torch.backends.cudnn.conv, "fp32_precision"):
        torch.backends.cuda.matmul.fp32_precision = "tf32" if on else "ieee"
        torch.backends.cudnn.conv.fp32_precision = "tf32" if on else "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of ``precision`` on ``device`` (bf16: autocast to bfloat16 on CUDA
    or the CPU; a no-op context otherwise)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(name: str, device: torch.device) -> torch.memory_format:
    """The layout of ``train.memory_format`` on ``device`` (auto: channels_last on CUDA)."""
    if name == "channels_last" or (name == "auto" and device.type == "cuda"):
        return torch.channels_last
    return torch.contiguous_format


def lr_at(cfg: RunConfig, epoch: int, total: int) -> float:
    """Learning rate of (0-based) ``epoch`` out of ``total``."""
    t = cfg.train
    if epoch < t.warmup_epochs:
        return t.lr * (epoch + 1) / t.warmup_epochs
    if t.schedule == "cosine":
        span = max(total - t.warmup_epochs, 1)
        return t.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - t.warmup_epochs) / span))
    if t.schedule == "step":
        return t.lr * t.gamma ** sum(epoch >= m for m in t.milestones)
    return t.lr


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of everything random in one epoch (shuffling, augmentation, dropout)."""
    return seed * 1_000_003 + epoch


def make_optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """SGD or Adam over the parameters in a pruning-independent order (``weight_orig`` sorts
    as ``weight``), so an optimizer state saved before or after pruning loads the same way."""
    named = sorted(model.named_parameters(), key=lambda kv: kv[0].removesuffix("_orig"))
    params = [p for _, p in named]
    t = cfg.train
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov,
                           weight_decay=t.weight_decay)


def say(message: str) -> None:
    """One console line on stderr that does not break a progress bar."""
    tqdm.write(message, file=sys.stderr)
