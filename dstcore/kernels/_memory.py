"""Buffer planning of the whole-model runner: arenas, their allocator and the plan of one shape.

Values are NHWC float32 buffers of ``n`` images; sizes and offsets count array elements.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

SLACK = 256  # float32 elements after every buffer (vector loads may read past the end)
ALIGN = 16


def _numel(n: int, shape: tuple[int, int, int]) -> int:
    return n * shape[0] * shape[1] * shape[2]


class _Arena:
    """First-fit allocator of element ranges in one flat array (sizes rounded to ALIGN)."""

    def __init__(self) -> None:
        self.top = 0
        self.free_blocks: list[tuple[int, int]] = []

    def alloc(self, size: int, persistent: bool = False) -> int:
        """Offset of ``size`` free elements; ``persistent`` ranges (written once, before the
        first call) never reuse freed space, so no per-call buffer can overwrite them."""
        size = -(-max(size, 1) // ALIGN) * ALIGN
        for i, (off, sz) in enumerate([] if persistent else self.free_blocks):
            if sz >= size:
                if sz > size:
                    self.free_blocks[i] = (off + size, sz - size)
                else:
                    self.free_blocks.pop(i)
                return off
        off = self.top
        self.top += size
        return off

    def free(self, off: int, size: int) -> None:
        self.free_blocks.append((off, -(-max(size, 1) // ALIGN) * ALIGN))
        self.free_blocks.sort()
        merged: list[tuple[int, int]] = []
        for o, s in self.free_blocks:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + s)
            else:
                merged.append((o, s))
        self.free_blocks = merged


class _Mem:
    """Arenas of one input shape: F (float32 activations and value lists), I (int64 geometry,
    list pointers), Q (int32 list channels); values are written after allocation."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.arenas = {"F": _Arena(), "I": _Arena(), "Q": _Arena()}
        self.values: dict[int, tuple[int, int]] = {}
        self.temps: list[tuple[str, int, int]] = []
        self.inits: list[tuple[str, int, np.ndarray]] = []

    def value(self, vid: int, numel: int) -> tuple[int, int]:
        off = self.arenas["F"].alloc(numel + SLACK)
        self.values[vid] = (off, off + numel + SLACK)
        return self.values[vid]

    def temp(self, arena: str, size: int, init: np.ndarray | None = None) -> tuple[int, int]:
        off = self.arenas[arena].alloc(size)
        self.temps.append((arena, off, size))
        if init is not None:
            self.inits.append((arena, off, init))
        return off, off + size

    def const(self, arena: str, data: np.ndarray) -> tuple[int, int]:
        """A range that lives as long as the plan (geometry, block masks)."""
        off, end = self.zeros(arena, data.size)
        self.inits.append((arena, off, data))
        return off, end

    def zeros(self, arena: str, size: int) -> tuple[int, int]:
        """A range that lives as long as the plan and starts as zeros (the arenas do)."""
        off = self.arenas[arena].alloc(size, persistent=True)
        return off, off + size

    def release_temps(self) -> None:
        for arena, off, size in self.temps:
            self.arenas[arena].free(off, size)
        self.temps = []

    def release_value(self, vid: int) -> None:
        a, b = self.values.pop(vid)
        self.arenas["F"].free(a, b - a)


class _Fills(Protocol):
    """What planning needs of an op (see :class:`dstcore.kernels._ops._Op`)."""

    ins: list[int]
    out: int | None

    def fill(self, mem: _Mem, shapes: dict[int, tuple[int, int, int]]) -> dict[str, Any]: ...


@dataclass
class _Plan:
    """Arenas and plan array of one input shape."""

    P: np.ndarray
    F: np.ndarray
    I: np.ndarray  # noqa: E741
    Q: np.ndarray
    out_shape: tuple[int, ...]
    out_numel: int


def _make_plan(ops: Sequence[_Fills], shapes: dict[int, tuple[int, int, int]],
               out_kind: tuple[str, int], layout: list[dict[str, tuple[int, bool]]],
               n: int) -> _Plan:
    """Buffers and plan array of ``ops`` for ``n`` images: ``shapes`` (H, W, C) per value,
    ``out_kind`` ('flat' | 'nchw', output value), ``layout`` the ops' plan slots (see
    :func:`dstcore.kernels._codegen._source`)."""
    mem = _Mem(n)
    last_use: dict[int, int] = {}
    for i, op in enumerate(ops):
        for v in op.ins:
            last_use[v] = i
    nslots = max((s + (2 if r else 1) for keys in layout for s, r in keys.values()), default=0)
    P = np.zeros(nslots + 1, np.int64)
    for i, (op, keys) in enumerate(zip(ops, layout, strict=True)):
        if op.out is not None:
            mem.value(op.out, _numel(n, shapes[op.out]))
        vals = op.fill(mem, shapes)
        for key, (slot, rng) in keys.items():
            if rng:
                P[slot], P[slot + 1] = vals[key]
            else:
                P[slot] = vals[key]
        mem.release_temps()
        for v in set(op.ins):
            if last_use[v] == i:
                mem.release_value(v)
    arrays = {"F": np.zeros(mem.arenas["F"].top + SLACK, np.float32),
              "I": np.zeros(mem.arenas["I"].top + 1, np.int64),
              "Q": np.zeros(mem.arenas["Q"].top + 16, np.int32)}
    for arena, off, data in mem.inits:
        arrays[arena][off:off + data.size] = data.reshape(-1)
    kind, vid = out_kind
    h, w, c = shapes[vid]
    out_shape = (n, c * h * w) if kind == "flat" else (n, c, h, w)
    return _Plan(P, arrays["F"], arrays["I"], arrays["Q"], out_shape, int(np.prod(out_shape)))
