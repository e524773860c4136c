"""The defaults of a model latency measurement, defined once.

:class:`LatencySettings` holds what ``dst latency models`` and
:func:`dstcore.measure.experiment.measure_experiment` take by default; the pipeline's
``latency:`` section in ``workflow/schemas/config.schema.yaml`` (and ``report.tolerance_pp``)
holds the same values, which ``tests/test_latency.py`` keeps equal. This module imports
nothing heavy: the command line reads it when it builds its parser.
"""

from __future__ import annotations

from dataclasses import dataclass

GPU_MODES = ("auto", "off")  # latency.gpu: auto times the GPU engines when CUDA is available
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class LatencySettings:
    """How the models of one experiment and seed are timed (``threads`` 0 = all cores)."""

    batch_sizes: tuple[int, ...] = (1, 16)
    threads: tuple[int, ...] = (1, 0)
    warmup: int = 3
    repeats: int = 20
    max_images: int = 64
    torch_compile: bool = False
    gpu: str = "auto"  # one of GPU_MODES
    gpu_batch_sizes: tuple[int, ...] = (1, 256)  # batch sizes of the GPU engines
    gpu_compile_mode: str = "max-autotune-no-cudagraphs"  # torch.compile's mode on the GPU
    tolerance_pp: float = 0.5  # top-1 the timed models may lose against the baseline (pp)

    @property
    def thread_counts(self) -> tuple[int | None, ...]:
        """``threads`` with 0 (all cores) as None, as the timers take them."""
        return tuple(t or None for t in self.threads)
