"""Layer geometry shared by the MAC counter and the kernels."""

from __future__ import annotations

from typing import Any


def pair(value: Any) -> tuple[int, int]:
    """A Conv2d/pool size argument (an int or a pair) as ``(height, width)`` ints."""
    if isinstance(value, (tuple, list)):
        first, second = value
        return int(first), int(second)
    return int(value), int(value)
