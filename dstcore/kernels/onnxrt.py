"""Peer engine: export a model (or one layer) to ONNX and run it in ONNX Runtime (dense, CPU).

The export uses the TorchScript-based exporter (``dynamo=False``; works offline, no
onnxscript translation step) with a dynamic batch axis. Sessions use
``intra_op_num_threads`` = the thread count being measured and one inter-op thread, so ORT
runs with the same number of threads as the torch / Numba kernels it is compared with.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn


class _WhereThreshold(nn.Module):
    """``nn.Threshold`` as the exporter can write it (it refuses a non-zero threshold)."""

    def __init__(self, threshold: float, value: float) -> None:
        super().__init__()
        self.threshold, self.value = float(threshold), float(value)

    def forward(self, x: Tensor) -> Tensor:
        return torch.where(x > self.threshold, x, torch.full_like(x, self.value))


def _exportable(model: nn.Module) -> nn.Module:
    """``model``, or a copy whose ``nn.Threshold`` modules (FATReLU's) are :class:`_WhereThreshold`."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Threshold)]
    if not names:
        return model
    import copy

    model = copy.deepcopy(model)
    for name in names:
        old = model.get_submodule(name)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, _WhereThreshold(old.threshold, old.value))
    return model


def export_onnx(model: nn.Module, example: Tensor, path: str | Path | None = None,
                opset: int = 17) -> bytes:
    """ONNX bytes of ``model`` traced on ``example`` (batch axis dynamic); also saved to path."""
    model = _exportable(model.eval())
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buf, dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


class OrtRunner:
    """Callable ONNX Runtime session: ``runner(x: Tensor) -> Tensor`` (CPU, float32).

    ``spinning=False`` stops ORT's pool threads from busy-waiting after each run. Use it when
    ORT is timed interleaved with other engines: with spinning on, 2-thread torch ResNet-20
    (batch 1) measured 5.7 ms right after ORT calls vs 1.5 ms without (ORT itself: 0.47 ms
    either way)."""

    kind = "onnxruntime"

    def __init__(self, model: nn.Module | bytes, example: Tensor | None = None,
                 threads: int = 1, opset: int = 17, spinning: bool = True) -> None:
        if isinstance(model, nn.Module):
            if example is None:
                raise ValueError("exporting a module needs an example input")
            model = export_onnx(model, example, opset=opset)
        self.onnx_bytes = model
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.threads = int(threads)
        self.session = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        self._in = self.session.get_inputs()[0].name

    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._in: x})[0]

    def __call__(self, x: Tensor) -> Tensor:
        xn = x.detach().cpu().contiguous().numpy()
        return torch.from_numpy(self.run_numpy(xn))
