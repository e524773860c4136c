"""Activation-map regularisers R(a), each normalised per sample (divided by the batch size).

For a batch of activation maps ``a`` with batch size N:

- ``l1``:    R(a) = sum |a| / N
- ``hoyer``: R(a) = (sum |a|)^2 / sum a^2 / N       (Hoyer-square; 0 when a == 0)
- ``tl1``:   R(a) = sum (1+beta)|a| / (beta+|a|) / N (Transformed l1; beta > 0)

TL1 tends to the l0 "norm" as beta -> 0 and to l1 as beta -> inf.
The training loss is CE + lam * sum_l w_l R(a_l) over the activation layers l.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dstcore import DstError
from dstcore.core.runs import DUAL_METHOD, NO_METHOD, RESERVED, THRESHOLD_METHOD, fmt
from dstcore.sparsity.activations import register_hooks

Regularizer = Callable[[Tensor, float], Tensor]


def l1(a: Tensor, beta: float = 0.0) -> Tensor:
    """Sum of absolute values per sample."""
    return a.abs().sum() / a.shape[0]


def hoyer(a: Tensor, beta: float = 0.0) -> Tensor:
    """Hoyer-square (sum|a|)^2 / sum a^2 per sample; 0 for an all-zero map."""
    sum_sq = a.pow(2).sum()
    safe = torch.where(sum_sq > 0, sum_sq, torch.ones_like(sum_sq))
    return torch.where(sum_sq > 0, a.abs().sum().pow(2) / safe, torch.zeros_like(sum_sq)) \
        / a.shape[0]


def tl1(a: Tensor, beta: float) -> Tensor:
    """Transformed l1: sum (1+beta)|a| / (beta+|a|) per sample."""
    if beta <= 0:
        raise DstError(f"tl1 needs beta > 0, got {beta}")
    mag = a.abs()
    return ((1.0 + beta) * mag / (beta + mag)).sum() / a.shape[0]


@dataclass(frozen=True)
class Method:
    """A compared activation-sparsity method as every stage sees it: its name (in configs, run
    directories and tables), its formula ``R(a, beta)`` and how the report labels it.
    ``shape_parameter`` methods take β (one sweep per β; run directories ``{name}-beta{β}``).
    A method without a formula is not a penalty: FATReLU, whose runs are ``threshold`` runs
    (dstcore.sparsity.fatrelu) and whose sweep varies ``sweep`` (its accuracy budget)."""

    name: str
    formula: Regularizer | None
    label: str
    shape_parameter: bool = False
    sweep: str = "λ"  # what the sweep varies, as tables print it before the value
    unit: str = ""  # the sweep value's unit (" pp")

    def sweep_text(self, value: float) -> str:
        """``λ = 0.001`` or ``budget = 0.5 pp``."""
        return f"{self.sweep} = {fmt(value)}{self.unit}"


REGISTRY: dict[str, Method] = {}
PROPOSED = DUAL_METHOD  # the paper's method (TL1): the claims compare it with the best other one


def register(method: Method) -> Method:
    """Add ``method`` to the registry: the grid, tables, frontier and report pick it up."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", method.name) or method.name in RESERVED:
        raise DstError(f"method name {method.name!r}: lower-case letters, digits and _ "
                       f"(starting with a letter), not one of {', '.join(sorted(RESERVED))}")
    if method.name in REGISTRY and REGISTRY[method.name] != method:
        raise DstError(f"method {method.name!r} is already registered")
    REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method added with :func:`register` (tests that add a toy method)."""
    REGISTRY.pop(name, None)


def regularizers() -> tuple[str, ...]:
    """The registered activation regularisers' (penalties') names, in registration order."""
    return tuple(name for name, m in REGISTRY.items() if m.formula is not None)


def compared_methods() -> tuple[str, ...]:
    """Every method the frontiers, orderings and claims compare: the regularisers, then
    FATReLU."""
    return tuple(REGISTRY)


def methods() -> tuple[str, ...]:
    """Every valid ``reg.method``: ``none`` (the λ = 0 control) and the regularisers."""
    return (NO_METHOD, *regularizers())


def method_label(name: str) -> str:
    """The report's label of a method (the name itself when it is not registered)."""
    return REGISTRY[name].label if name in REGISTRY else name


def sweep_text(method: str, value: float) -> str:
    """A point of ``method``'s sweep as tables print it: ``λ = 0.001``, ``budget = 0.5 pp``."""
    return REGISTRY[method].sweep_text(value) if method in REGISTRY else f"λ = {fmt(value)}"


register(Method("l1", l1, "ℓ1"))
register(Method("hoyer", hoyer, "Hoyer-square"))
register(Method("tl1", tl1, "TL1", shape_parameter=True))
# FATReLU (Kurtz et al. 2020): thresholds searched on the λ = 0 control within an accuracy
# budget (pp) on a held-out slice; not a penalty (dstcore.sparsity.fatrelu)
register(Method(THRESHOLD_METHOD, None, "FATReLU", sweep="budget", unit=" pp"))

PLUGINS_ENV = "DST_PLUGINS"  # comma-separated modules that register more methods or models


def load_plugins() -> list[str]:
    """Import the modules named in $DST_PLUGINS (each calls :func:`register` or
    :func:`dstcore.models.register`), so that every process of a run, the Snakemake jobs and
    the report's kernel included, sees the same registry. Returns the modules imported."""
    names = [n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",") if n.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise DstError(f"${PLUGINS_ENV}: cannot import {name!r} ({err})") from None
    return names


load_plugins()


class ActivationPenalty:
    """Accumulates sum_l w_l R(a_l) over a forward pass via pre-hooks on the activation layers.

    Use as a context manager around training; call :meth:`pop` after each forward pass.
    """

    def __init__(self, layers: list[tuple[str, nn.Module]], method: str, beta: float = 1.0,
                 layer_weights: dict[str, float] | None = None) -> None:
        if method not in regularizers():
            raise DstError(f"unknown regulariser '{method}'; choose from "
                           f"{', '.join(regularizers())}")
        names = {n for n, _ in layers}
        unknown = set(layer_weights or {}) - names
        if unknown:
            raise DstError(f"layer_weights names unknown layers {sorted(unknown)}; activation "
                           f"layers are {sorted(names)}")
        self.layers, self.fn, self.beta = layers, REGISTRY[method].formula, beta
        self.weights = {n: float((layer_weights or {}).get(n, 1.0)) for n in names}
        self.total: Tensor | float = 0.0
        self._hooks = None

    def _observe(self, name: str, module: nn.Module, a: Tensor) -> None:
        if torch.is_grad_enabled():
            # float32 under bf16 autocast (a no-op in float32)
            self.total = self.total + self.weights[name] * self.fn(a.float(), self.beta)

    def __enter__(self) -> ActivationPenalty:
        self._hooks = register_hooks(self.layers, self._observe)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    def pop(self) -> Tensor | float:
        """The penalty accumulated since the last call (a scalar tensor), and reset."""
        total, self.total = self.total, 0.0
        return total
