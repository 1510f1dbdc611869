"""Composition of infinite-width layers: :class:`Serial`, :class:`Residual` and :func:`kernel`.

**Residual** ``x ↦ s(x) + b(x)``. Both paths are applied to the same state; the
sum's expression is ``SumNode(s, b)`` over the union of their components. When
the branch starts with a Dense layer its features are, per unit, a function of a
fresh Gaussian independent of the shortcut's components, so the sum is a sum of
independent terms: ``nngp = K_s + K_b + m_s m_bᵀ + m_b m_sᵀ`` (the cross term is
exact and nonzero whenever both means are, e.g. relu features) and
``ntk = Θ_s + Θ_b`` (the cross NTK vanishes at infinite width: the branch sees
the shared parameters only through ``Σ_j W_ij ∂x_j/∂θ`` with zero-mean weights
independent of the rest, a sum of ``width`` zero-mean terms of size
``1/width``; see :mod:`normfield.infinite.expect`). When both paths read the
same components (e.g. ``x + σ(x)``) the expression is evaluated jointly by the
general route. Independent Gaussian terms of a sum are merged into one Gaussian
component (``Σ = Σ_1 + Σ_2``, ``Θ = Θ_1 + Θ_2``), which keeps deep residual
stacks small.

:func:`kernel` runs a list of layers from :func:`input_state` and records the
state after every leaf layer (labels ``"0.Dense"``, ``"1.BatchNorm"``,
``"2.branch.0.Dense"``, ``"2.Residual"``, …).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from normfield.core.seeding import derive_seed
from normfield.errors import NormfieldError
from normfield.infinite import modules as _m
from normfield.infinite.expect import evaluate
from normfield.infinite.layers import Layer, _check_state
from normfield.infinite.state import Component, KernelState, Leaf, Moments, SumNode, input_state, new_key

__all__ = ["Serial", "serial", "Residual", "KernelResult", "kernel"]

Trace = list  # list[tuple[str, KernelState]]


def _check_layer(name: str, layer: Any) -> Layer:
    if not isinstance(layer, Layer):
        raise NormfieldError(f"{name} must be an infinite-width layer (Dense, Activation, BatchNorm, ...), "
                             f"got {type(layer).__name__}", argument=name)
    return layer


def _apply_traced(layer: Layer, state: KernelState, prefix: str, trace: Trace | None) -> KernelState:
    if isinstance(layer, (Serial, Residual)):
        return layer._apply(state, prefix, trace)
    out = layer.apply(state)
    if trace is not None:
        trace.append((f"{prefix}{layer.label}", out))
    return out


class Serial(Layer):
    """The composition ``layers[-1] ∘ … ∘ layers[0]``."""

    def __init__(self, *layers: Layer) -> None:
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        self.layers = tuple(_check_layer(f"layers[{i}]", l) for i, l in enumerate(layers))

    def _apply(self, state: KernelState, prefix: str, trace: Trace | None) -> KernelState:
        for i, layer in enumerate(self.layers):
            state = _apply_traced(layer, state, f"{prefix}{i}.", trace)
        return state

    def apply(self, state: KernelState) -> KernelState:
        return self._apply(_check_state(state), "", None)

    def module(self, fan_in, *, generator=None, dtype=torch.float64):
        mods = []
        for layer in self.layers:
            mods.append(layer.module(fan_in, generator=generator, dtype=dtype))
            fan_in = layer.out_width(fan_in)
        return nn.Sequential(*mods)

    def out_width(self, fan_in: int) -> int:
        for layer in self.layers:
            fan_in = layer.out_width(fan_in)
        return int(fan_in)

    def __repr__(self) -> str:
        return "Serial(" + ", ".join(repr(l) for l in self.layers) + ")"


def serial(*layers: Layer) -> Serial:
    """``Serial(*layers)``."""
    return Serial(*layers)


def _terms(node) -> list:
    if isinstance(node, SumNode):
        out = []
        for c in node.children:
            out.extend(_terms(c))
        return out
    return [node]


class Residual(Layer):
    """``x ↦ shortcut(x) + branch(x)`` (module docstring); ``shortcut=None`` is the identity.

    Raises:
        NormfieldError: the two paths give different widths (argument ``branch``).
    """

    def __init__(self, branch: Layer, shortcut: Layer | None = None) -> None:
        self.branch = _check_layer("branch", branch)
        self.shortcut = None if shortcut is None else _check_layer("shortcut", shortcut)

    def _widths(self, fan_in: int) -> tuple[int, int]:
        return self.branch.out_width(fan_in), fan_in if self.shortcut is None else self.shortcut.out_width(fan_in)

    def _apply(self, state: KernelState, prefix: str, trace: Trace | None) -> KernelState:
        wb, ws = self._widths(state.width)
        if wb != ws:
            raise NormfieldError(f"Residual: the branch gives {wb} units but the shortcut {ws}; "
                                 "add a Dense shortcut of the branch's width", argument="branch")
        s = state if self.shortcut is None else _apply_traced(self.shortcut, state, f"{prefix}shortcut.", trace)
        b = _apply_traced(self.branch, state, f"{prefix}branch.", trace)
        comps = dict(s.components)
        comps.update(b.components)
        terms = _terms(s.expr) + _terms(b.expr)
        # independent Gaussian leaves (read by no other term) merge into one Gaussian component
        counts: dict[int, int] = {}
        for t in terms:
            for k in t.keys():
                counts[k] = counts.get(k, 0) + 1
        solo = [t for t in terms if isinstance(t, Leaf) and comps[t.key].kind == "gauss" and counts[t.key] == 1]
        if len(solo) >= 2:
            cs = [comps[t.key] for t in solo]
            merged = Component(new_key(), "gauss", sum(c.cov for c in cs), sum(c.ntk for c in cs),
                               qerr=sum(c.qerr for c in cs))
            leaf = Leaf(merged.key)
            leaf.mom = Moments(merged.cov, np.zeros(merged.cov.shape[:2]), merged.ntk, merged.qerr)
            terms = [t for t in terms if not any(t is u for u in solo)] + [leaf]
            comps[merged.key] = merged
        node = terms[0] if len(terms) == 1 else SumNode(tuple(terms))
        keys = node.keys()
        comps = {k: v for k, v in comps.items() if k in keys}
        step = max(s.step, b.step)
        up = tuple(max(u, v) for u, v in zip(s.relative_errors, b.relative_errors))
        mom = evaluate(node, comps, seed=derive_seed(state.seed, step + 1), tol=state.tol, upstream=up)
        out = KernelState(state.T, wb, comps, node, mom, state.seed, state.tol, step + 1)
        if trace is not None:
            trace.append((f"{prefix}{self.label}", out))
        return out

    def apply(self, state: KernelState) -> KernelState:
        return self._apply(_check_state(state), "", None)

    def module(self, fan_in, *, generator=None, dtype=torch.float64):
        wb, ws = self._widths(fan_in)
        if wb != ws:
            raise NormfieldError(f"Residual: the branch gives {wb} units but the shortcut {ws}", argument="branch")
        sc = nn.Identity() if self.shortcut is None else self.shortcut.module(fan_in, generator=generator,
                                                                               dtype=dtype)
        return _m.ResidualModule(self.branch.module(fan_in, generator=generator, dtype=dtype), sc)

    def out_width(self, fan_in: int) -> int:
        return self._widths(fan_in)[0]

    def __repr__(self) -> str:
        return f"Residual({self.branch!r}, shortcut={self.shortcut!r})"


@dataclass(frozen=True, eq=False)
class KernelResult:
    """The infinite-width kernels of a composition on one batch.

    Attributes:
        nngp: (T, T) output ``E[f_i f_iᵀ]``.
        ntk: (T, T) output per-unit NTK (``λ_max(F*) = λ_max(ntk)/T`` for nf.analyze's ``F* = JJᵀ/T``).
        mean: (T,) output ``E[f_i]``.
        error: stated absolute Frobenius error of ``nngp`` and ``ntk`` (the larger).
        states: ``(label, KernelState)`` after each leaf layer, in order.
    """

    nngp: np.ndarray
    ntk: np.ndarray
    mean: np.ndarray
    error: float
    states: list = field(default_factory=list, repr=False)

    @property
    def state(self) -> KernelState:
        """The output state."""
        return self.states[-1][1]


def kernel(layers: Layer | Sequence[Layer], x: Any, *, tol: float = 1e-3, seed: int = 0) -> KernelResult:
    """NNGP and NTK of ``layers`` at infinite width on the batch ``x``.

    Args:
        layers: a layer or a sequence of layers (composed in order).
        x: (T, d) inputs, batch first.
        tol: target stated Frobenius error of each quasi-Monte Carlo step.
        seed: base seed (same seed, same numbers).

    Returns:
        :class:`KernelResult`.

    Raises:
        NormfieldError: bad ``x``, ``tol``, ``seed`` or layer, or a layer outside its theory.
    """
    net = layers if isinstance(layers, Layer) else Serial(*layers)
    if not isinstance(net, Serial):
        net = Serial(net)
    state = input_state(x, tol=tol, seed=seed)
    trace: Trace = []
    out = net._apply(state, "", trace)
    if not trace:
        trace.append(("input", out))
    return KernelResult(out.nngp, out.ntk, out.mean, out.error, trace)
