"""Infinite-width layers: each one a kernel map on :class:`KernelState` beside its finite torch module.

Every layer has ``apply(state) -> KernelState`` (the infinite-width map),
``module(fan_in, *, generator=None, dtype=torch.float64) -> nn.Module`` (its
finite-width counterpart, initialised with the law ``apply`` assumes) and
``out_width(fan_in)``.

**Dense** (``h = W x + b``): the per-unit pre-activation is Gaussian,
``h ~ N(0, Σ)`` with ``Σ = σ_w² K + σ_b² 11ᵀ`` (``K = E[x xᵀ]``, uncentred;
Neal 1996; Lee et al. 2018, eq. 4), and its per-unit NTK (Jacot et al. 2018,
Thm 1; Karakida et al. 2019, eqs. 8–11 for the no-norm case) is

* standard parametrization (torch's: ``W_ij ~ N(0, σ_w²/n)``, gradients of the
  raw ``W``): ``Θ' = n K + [bias] 11ᵀ + σ_w² P`` (``∂h_i/∂W_ij = x_j`` gives
  ``Σ_j x_j(t) x_j(s) = n K_ts``; ``∂h_i/∂b_i = 1``; earlier parameters act through
  ``Σ_j W_ij² P_jj → σ_w² P``), ``n`` the fan-in;
* NTK parametrization (``h = σ_w W x/√n + σ_b b``, ``W, b ~ N(0, 1)``):
  ``Θ' = σ_w² K + [bias] σ_b² 11ᵀ + σ_w² P``,

where ``P`` is the previous state's ``ntk`` (``E[J Θ Jᵀ]`` plus per-unit
parameters). The output is a fresh Gaussian component, independent per unit of
every earlier component (its weights are new).

**Activation** ``σ``, **BatchNorm** (train: over the batch; eval: per-unit
affine), **MeanSubtract** (Karakida et al. 2019, eq. 15), **LayerNorm** and
**RMSNorm** (statistics over units: at infinite width the law-of-large-numbers
values ``m_t = E[x(t)]``, ``v_t = E[x(t)²] − m_t²``, so a deterministic affine map
per sample) are per-unit operations (:mod:`normfield.infinite.ops`) appended to
the expression; their moments come from :mod:`normfield.infinite.expect`.
Their affine parameters (γ, β: ``torch``'s ``weight``, ``bias``) are counted in
the NTK (``nf.analyze`` differentiates all parameters).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from normfield.core.activations import ActivationLike, get_activation
from normfield.core.seeding import derive_seed
from normfield.core.validation import check_choice, check_float, check_int
from normfield.errors import NormfieldError
from normfield.infinite import modules as _m
from normfield.infinite.expect import evaluate
from normfield.infinite.ops import ActOp, AffineOp, BNEvalOp, BNTrainOp, UnitOp
from normfield.infinite.state import Component, KernelState, Leaf, Moments, OpNode, new_key

__all__ = ["Layer", "Dense", "Activation", "BatchNorm", "LayerNorm", "RMSNorm", "MeanSubtract", "Identity"]


class Layer:
    """Base of the infinite-width layers (module docstring)."""

    def apply(self, state: KernelState) -> KernelState:
        raise NotImplementedError

    def module(self, fan_in: int, *, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float64) -> nn.Module:
        raise NotImplementedError

    def out_width(self, fan_in: int) -> int:
        return int(fan_in)

    @property
    def label(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        return self.label


def _check_state(state: Any) -> KernelState:
    if not isinstance(state, KernelState):
        raise NormfieldError(f"state must be a KernelState (from input_state(x)), got {type(state).__name__}",
                             argument="state")
    return state


def _with_op(state: KernelState, op: UnitOp) -> KernelState:
    """Append a per-unit operation to the state's expression and compute the new moments."""
    node = OpNode(op, state.expr)
    mom = evaluate(node, state.components, seed=derive_seed(state.seed, state.step + 1), tol=state.tol,
                   upstream=state.relative_errors)
    return state.derive(width=state.width, components=state.components, expr=node, moments=mom)


class Dense(Layer):
    """Fully connected layer ``h = W x + b`` of ``width`` units (module docstring).

    Args:
        width: number of output units (>= 1).
        sw2: ``σ_w²`` (> 0).
        sb2: ``σ_b²`` (>= 0).
        bias: whether the layer has a bias (its gradient enters the NTK even when ``σ_b² = 0``
            in standard parametrization).
        parametrization: ``"standard"`` or ``"ntk"``.
    """

    def __init__(self, width: int, *, sw2: float = 1.0, sb2: float = 0.0, bias: bool = True,
                 parametrization: str = "standard") -> None:
        self.width = check_int("width", width, minimum=1)
        self.sw2 = check_float("sw2", sw2, minimum=0.0, strict_min=True)
        self.sb2 = check_float("sb2", sb2, minimum=0.0)
        self.bias = bool(bias)
        self.parametrization = check_choice("parametrization", parametrization, ("standard", "ntk"))

    def apply(self, state: KernelState) -> KernelState:
        state = _check_state(state)
        m = state.moments
        n = state.width
        sb2 = self.sb2 if self.bias else 0.0
        Sigma = self.sw2 * m.nngp + sb2
        if self.parametrization == "standard":
            Theta = n * m.nngp + (1.0 if self.bias else 0.0) + self.sw2 * m.ntk
            gain = max(self.sw2, float(n))
        else:
            Theta = self.sw2 * m.nngp + sb2 + self.sw2 * m.ntk
            gain = self.sw2
        Sigma = 0.5 * (Sigma + Sigma.transpose(0, 2, 1))
        Theta = 0.5 * (Theta + Theta.transpose(0, 2, 1))
        qerr = gain * m.qerr
        comp = Component(new_key(), "gauss", Sigma, Theta, qerr=qerr)
        leaf = Leaf(comp.key)
        leaf.mom = Moments(Sigma, np.zeros(Sigma.shape[:2]), Theta, qerr)
        return state.derive(width=self.width, components={comp.key: comp}, expr=leaf, moments=leaf.mom)

    def module(self, fan_in, *, generator=None, dtype=torch.float64):
        return _m.dense_module(check_int("fan_in", fan_in, minimum=1), self.width, sw2=self.sw2, sb2=self.sb2,
                               bias=self.bias, parametrization=self.parametrization, generator=generator,
                               dtype=dtype)

    def out_width(self, fan_in: int) -> int:
        return self.width

    def __repr__(self) -> str:
        return (f"Dense({self.width}, sw2={self.sw2}, sb2={self.sb2}, bias={self.bias}, "
                f"parametrization={self.parametrization!r})")


class Activation(Layer):
    """Pointwise activation ``σ`` (any registry name, ``"leaky_relu:0.1"``, or an ``nf.Activation``).

    Raises:
        NormfieldError: unknown activation (argument ``activation``).
    """

    def __init__(self, activation: ActivationLike) -> None:
        self.act = get_activation(activation)

    def apply(self, state: KernelState) -> KernelState:
        return _with_op(_check_state(state), ActOp(self.act))

    def module(self, fan_in, *, generator=None, dtype=torch.float64):
        return _m.activation_module(self.act)

    def __repr__(self) -> str:
        return f"Activation({self.act.label!r})"


def _per_unit(name: str, value: Any) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(value, dtype=np.float64))
    if arr.ndim != 1 or arr.size < 1 or not np.all(np.isfinite(arr)):
        raise NormfieldError(f"{name} must be a finite number or a 1-D array of per-unit values", argument=name)
    return arr


class BatchNorm(Layer):
    """Batch norm over the batch (``mode="train"``) or with running statistics (``mode="eval"``).

    Args:
        eps: ``ε >= 0``.
        mode: ``"train"`` or ``"eval"``.
        affine: trainable per-unit ``γ`` (``weight``) and ``β`` (``bias``); their gradients enter the NTK.
        running_mean, running_var, weight, bias: eval mode only: numbers or per-unit arrays
            (length = fan-in), defaults 0, 1, 1, 0. ``weight``/``bias`` other than 1/0 need ``affine=True``.

    Routes: on a Gaussian (after a Dense layer), train mode is exact for relu, leaky relu and the
    identity next (``bn_exact``) and quasi-Monte Carlo otherwise; eval mode is exact (affine).

    Limitation (measured): train mode *after a rectifier* (``Dense → relu → BatchNorm``) has, in
    every unit, draws where a single sample of the batch is active; there ``‖M x‖`` is as small
    as that sample's value and the Jacobian grows to ``~1/√ε``, so the NTK is finite only through
    ε and its quasi-Monte Carlo estimate is heavy-tailed. At T = 4 and 8, ε = 1e-5, NTK
    parametrization, 2^19 points: stated NTK error 12% and 18% of ``‖ntk‖`` (0.3% and 1.2% at
    ε = 1e-3); the stated error itself is then less reliable than elsewhere. The NNGP is unaffected
    (``‖z‖² <= T``).

    Raises:
        NormfieldError: bad mode or ε, eval statistics in train mode, ``running_var + eps <= 0``,
            per-unit arrays of the wrong length (at ``apply``), or a batch of one in train mode.
    """

    def __init__(self, *, eps: float = 1e-5, mode: str = "train", affine: bool = True,
                 running_mean: Any = None, running_var: Any = None, weight: Any = None,
                 bias: Any = None) -> None:
        self.eps = check_float("eps", eps, minimum=0.0)
        self.mode = check_choice("mode", mode, ("train", "eval"))
        self.affine = bool(affine)
        given = {k: v for k, v in dict(running_mean=running_mean, running_var=running_var, weight=weight,
                                        bias=bias).items() if v is not None}
        if self.mode == "train" and given:
            raise NormfieldError(f"{next(iter(given))} is used only by BatchNorm(mode='eval')",
                                 argument=next(iter(given)))
        self.table = None
        if self.mode == "eval":
            cols = [_per_unit("weight", 1.0 if weight is None else weight),
                    _per_unit("bias", 0.0 if bias is None else bias),
                    _per_unit("running_mean", 0.0 if running_mean is None else running_mean),
                    _per_unit("running_var", 1.0 if running_var is None else running_var)]
            if not self.affine and (np.any(cols[0] != 1.0) or np.any(cols[1] != 0.0)):
                raise NormfieldError("weight/bias of an eval BatchNorm need affine=True", argument="affine")
            if np.any(cols[3] + self.eps <= 0):
                raise NormfieldError("running_var + eps must be > 0", argument="running_var")
            sizes = {c.size for c in cols if c.size > 1}
            if len(sizes) > 1:
                raise NormfieldError(f"per-unit arrays have different lengths {sorted(sizes)}",
                                     argument="running_mean")
            n = sizes.pop() if sizes else 1
            self.table = np.stack([np.broadcast_to(c, (n,)) for c in cols], axis=1)

    def apply(self, state: KernelState) -> KernelState:
        state = _check_state(state)
        if self.mode == "train":
            if state.T < 2:
                raise NormfieldError("train-mode BatchNorm needs a batch of at least 2 samples; x has 1 row "
                                     "(use mode='eval' or a larger batch)", argument="x")
            return _with_op(state, BNTrainOp(self.eps, self.affine))
        if self.table.shape[0] not in (1, state.width):
            raise NormfieldError(f"eval BatchNorm has {self.table.shape[0]} per-unit values but the layer has "
                                 f"{state.width} units", argument="running_mean")
        emp = [k for k in state.expr.keys() if state.components[k].kind == "empirical"]
        return _with_op(state, BNEvalOp(self.table, self.eps, self.affine, paired=emp[0] if emp else None))

    def module(self, fan_in, *, generator=None, dtype=torch.float64):
        bn = _m.PinnedBatchNorm1d(check_int("fan_in", fan_in, minimum=1), eps=self.eps, affine=self.affine,
                                  mode=self.mode, dtype=dtype)
        if self.mode == "eval":
            if self.table.shape[0] not in (1, fan_in):
                raise NormfieldError(f"eval BatchNorm has {self.table.shape[0]} per-unit values, fan_in is "
                                     f"{fan_in}", argument="fan_in")
            _m.set_eval_statistics(bn, self.table)
        return bn

    def __repr__(self) -> str:
        return f"BatchNorm(eps={self.eps}, mode={self.mode!r}, affine={self.affine})"


def _diag(v: np.ndarray) -> np.ndarray:
    """(R, T) -> (R, T, T) diagonal matrices."""
    return np.einsum("rt,ts->rts", v, np.eye(v.shape[1]))


class LayerNorm(Layer):
    """Layer norm over units, per sample: ``y_t = γ (x_t − m_t)/√(v_t + ε) + β`` with the
    infinite-width statistics ``m_t = E[x(t)]``, ``v_t = E[x(t)²] − m_t²`` (torch's biased variance).

    Raises:
        NormfieldError: ``v_t + ε = 0`` for some sample (argument ``eps``).
    """

    def __init__(self, *, eps: float = 1e-5, affine: bool = True) -> None:
        self.eps = check_float("eps", eps, minimum=0.0)
        self.affine = bool(affine)

    def apply(self, state: KernelState) -> KernelState:
        state = _check_state(state)
        m = state.moments
        var = np.einsum("rtt->rt", m.nngp) - m.mean ** 2 + self.eps
        if np.any(var <= 0):
            raise NormfieldError("LayerNorm of features constant over units with eps = 0; use eps > 0",
                                 argument="eps")
        s = 1.0 / np.sqrt(var)
        op = AffineOp(_diag(s), -s * m.mean, gamma=self.affine, beta=self.affine, name="layer_norm")
        return _with_op(state, op)

    def module(self, fan_in, *, generator=None, dtype=torch.float64):
        return nn.LayerNorm(check_int("fan_in", fan_in, minimum=1), eps=self.eps, elementwise_affine=self.affine,
                            dtype=dtype)

    def __repr__(self) -> str:
        return f"LayerNorm(eps={self.eps}, affine={self.affine})"


class RMSNorm(Layer):
    """RMS norm over units, per sample: ``y_t = γ x_t/√(E[x(t)²] + ε)`` (Zhang & Sennrich 2019, eq. 4);
    torch's ``nn.RMSNorm`` has the scale ``γ`` only.

    Raises:
        NormfieldError: ``E[x(t)²] + ε = 0`` for some sample (argument ``eps``).
    """

    def __init__(self, *, eps: float = 1e-6, affine: bool = True) -> None:
        self.eps = check_float("eps", eps, minimum=0.0)
        self.affine = bool(affine)

    def apply(self, state: KernelState) -> KernelState:
        state = _check_state(state)
        ms = np.einsum("rtt->rt", state.moments.nngp) + self.eps
        if np.any(ms <= 0):
            raise NormfieldError("RMSNorm of zero features with eps = 0; use eps > 0", argument="eps")
        op = AffineOp(_diag(1.0 / np.sqrt(ms)), np.zeros_like(ms), gamma=self.affine, beta=False,
                      name="rms_norm")
        return _with_op(state, op)

    def module(self, fan_in, *, generator=None, dtype=torch.float64):
        return nn.RMSNorm(check_int("fan_in", fan_in, minimum=1), eps=self.eps, elementwise_affine=self.affine,
                          dtype=dtype)

    def __repr__(self) -> str:
        return f"RMSNorm(eps={self.eps}, affine={self.affine})"


class MeanSubtract(Layer):
    """``x ↦ M x`` (``M = I − 11ᵀ/T``, mean over the batch; Karakida et al. 2019, eq. 15):
    ``nngp' = M K M``, ``ntk' = M Θ M``."""

    def apply(self, state: KernelState) -> KernelState:
        state = _check_state(state)
        R, T = state.moments.mean.shape
        M = np.eye(T) - 1.0 / T
        return _with_op(state, AffineOp(np.broadcast_to(M, (R, T, T)).copy(), np.zeros((R, T)), gamma=False,
                                        beta=False, name="mean_subtract"))

    def module(self, fan_in, *, generator=None, dtype=torch.float64):
        return _m.MeanSubtractModule()


class Identity(Layer):
    """``x ↦ x``."""

    def apply(self, state: KernelState) -> KernelState:
        state = _check_state(state)
        return state.derive(width=state.width, components=state.components, expr=state.expr,
                            moments=state.moments)

    def module(self, fan_in, *, generator=None, dtype=torch.float64):
        return nn.Identity()
