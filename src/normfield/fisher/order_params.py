"""Order parameters of a wide random MLP (Karakida et al. 2019, eqs. 5–7 and 11).

Network (Karakida et al. 2019, eqs. 1–3): ``u^l = W^l h^{l−1} + b^l``,
``h^l = φ(u^l)`` for ``l = 1, …, L−1``, output ``f = u^L`` (linear, C units);
``W^l_ij ~ N(0, σ_w²/M_{l−1})``, ``b^l_i ~ N(0, σ_b²)``, widths
``M_l = α_l M`` and inputs ``x = h^0 ~ N(0, I_{M_0})``.

Forward (eqs. 5–6), for ``l = 0, …, L−2``::

    q^{l+1}_t  = σ_w² q̂^l_t  + σ_b²,       q^{l+1}_st = σ_w² q̂^l_st + σ_b²,
    q̂^{l+1}_t  = ∫Du φ(√q^{l+1}_t u)²,     q̂^{l+1}_st = I_φ[q^{l+1}_t, q^{l+1}_st],

with ``q̂^0_t = 1`` and ``q̂^0_st = 0`` (eq. 3 inputs), ``q̂^l_t = Σ_i h^l_i(t)²/M_l``
and ``q̂^l_st = Σ_i h^l_i(s) h^l_i(t)/M_l``. The output pre-activation has
``q^L = σ_w² q̂^{L−1} + σ_b²`` (reported, unused).

Backward (eq. 7), ``q̃^l_t = Σ_i δ^l_i(t)²`` (*not* divided by the width) with
``q̃^L_t = q̃^L_st = 1`` and for ``l = L−1, …, 1``::

    q̃^l_t  = σ_w² q̃^{l+1}_t  ∫Du φ'(√q^l_t u)²,
    q̃^l_st = σ_w² q̃^{l+1}_st I_φ'[q^l_t, q^l_st].

Constants (eq. 11; Theorem 2.2 eq. 10)::

    α  = Σ_{l=1}^{L−1} α_l α_{l−1},
    κ1 = Σ_{l=1}^{L} (α_{l−1}/α) q̃^l_t q̂^{l−1}_t,
    κ2 = Σ_{l=1}^{L} (α_{l−1}/α) q̃^l_st q̂^{l−1}_st.

(The weight gradient of layer l is ``δ^l h^{l−1ᵀ}``, of squared norm
``q̃^l · M_{l−1} q̂^{l−1}``; summing over layers and dividing by the number of
weights ``≈ α M²`` gives κ1/M: the mean FIM eigenvalue of Theorem 2.2.)
``I_φ[a, b]`` is :func:`normfield.core.kernels.kernel` ``(φ, a, a, b)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from normfield.core.activations import ActivationLike, get_activation
from normfield.core.kernels import derivative_kernel, kernel
from normfield.core.validation import check_float, check_int
from normfield.errors import NormfieldError

__all__ = ["OrderParameters", "order_parameters"]

LAYER_COLUMNS = ["layer", "q_t", "q_st", "qhat_t", "qhat_st", "qtilde_t", "qtilde_st"]


@dataclass(frozen=True, eq=False)
class OrderParameters:
    """Order parameters and the κ's of a wide random MLP (Karakida et al. 2019).

    Attributes:
        activation: activation label.
        sw2, sb2: ``σ_w²``, ``σ_b²``.
        depth: ``L`` (number of weight layers; ``L − 1`` hidden layers).
        alphas: shape (L,), width ratios ``α_0 … α_{L−1}`` (``M_l = α_l M``).
        layers: DataFrame with one row per ``l = 0, …, L`` and columns
            ``layer, q_t, q_st, qhat_t, qhat_st, qtilde_t, qtilde_st``
            (NaN where a quantity is undefined: ``q^0``, ``q̂^L``, ``q̃^0``).
        kappa1, kappa2: eq. (11).
        alpha: ``Σ_{l=1}^{L−1} α_l α_{l−1}``.
        centered: True when ``σ_b² = 0`` and φ has zero Gaussian mean, where
            κ2 = 0 and Theorem 2.2 does not apply (Definition 2.1).
    """

    activation: str
    sw2: float
    sb2: float
    depth: int
    alphas: np.ndarray = field(repr=False)
    layers: pd.DataFrame = field(repr=False)
    kappa1: float
    kappa2: float
    alpha: float
    centered: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``layers`` as a list of objects, NaN → None)."""
        rows = []
        for rec in self.layers.to_dict(orient="records"):
            rows.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()})
            rows[-1]["layer"] = int(rows[-1]["layer"])
        return {
            "activation": self.activation,
            "sw2": self.sw2,
            "sb2": self.sb2,
            "depth": self.depth,
            "alphas": [float(a) for a in self.alphas],
            "kappa1": self.kappa1,
            "kappa2": self.kappa2,
            "alpha": self.alpha,
            "centered": self.centered,
            "layers": rows,
        }


def _check_alphas(alphas: Sequence[float] | None, depth: int) -> np.ndarray:
    if alphas is None:
        return np.ones(depth)
    a = np.asarray(list(alphas), dtype=np.float64) if not isinstance(alphas, np.ndarray) else alphas.astype(np.float64)
    if a.ndim != 1 or a.size != depth:
        raise NormfieldError(
            f"alphas must hold depth = {depth} width ratios α_0 … α_{depth - 1}, got {a.size}",
            argument="alphas",
        )
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise NormfieldError("alphas must be finite and > 0", argument="alphas")
    return a


def order_parameters(
    activation: ActivationLike,
    sw2: float,
    sb2: float,
    depth: int,
    alphas: Sequence[float] | None = None,
    *,
    method: str = "auto",
) -> OrderParameters:
    """Forward/backward order parameters and κ1, κ2 (Karakida et al. 2019, eqs. 5–7, 11).

    Args:
        activation: name, :class:`~normfield.Activation` or torch callable.
        sw2: ``σ_w² > 0``.
        sb2: ``σ_b² >= 0``.
        depth: ``L >= 2`` (α needs one hidden layer).
        alphas: ``L`` width ratios ``α_0 … α_{L−1}`` (default all 1).
        method: kernel method, ``"auto"`` (closed forms where known),
            ``"closed"`` or ``"quad"``.

    Returns:
        :class:`OrderParameters`.

    Raises:
        NormfieldError: out-of-range arguments, or an activation whose kernels
            overflow (the message names the layer).

    Example:
        >>> op = order_parameters("relu", 2.0, 0.0, 3)
        >>> round(op.kappa1, 12)   # relu, σ_w²=2, σ_b²=0: q̂ = 1, q̃ = 1 per layer
        1.5
    """
    act = get_activation(activation)
    sw2 = check_float("sw2", sw2, minimum=0.0, strict_min=True)
    sb2 = check_float("sb2", sb2, minimum=0.0)
    L = check_int("depth", depth, minimum=2, maximum=10_000)
    a = _check_alphas(alphas, L)

    nan = math.nan
    q_t = np.full(L + 1, nan)
    q_st = np.full(L + 1, nan)
    qh_t = np.full(L + 1, nan)
    qh_st = np.full(L + 1, nan)
    qt_t = np.full(L + 1, nan)
    qt_st = np.full(L + 1, nan)
    qh_t[0], qh_st[0] = 1.0, 0.0
    for l in range(1, L + 1):  # eqs. (5)–(6)
        with np.errstate(over="ignore", invalid="ignore"):
            q_t[l] = sw2 * qh_t[l - 1] + sb2
            q_st[l] = sw2 * qh_st[l - 1] + sb2
        if not (math.isfinite(q_t[l]) and math.isfinite(q_st[l])):
            raise NormfieldError(
                f"order parameters overflow at layer {l} (q^{l} is not finite); lower sw2/sb2 or depth",
                argument="depth",
            )
        if l == L:
            break
        qh_t[l] = float(kernel(act, q_t[l], q_t[l], q_t[l], method=method))
        qh_st[l] = float(kernel(act, q_t[l], q_t[l], q_st[l], method=method))
        if not (math.isfinite(qh_t[l]) and math.isfinite(qh_st[l])):
            raise NormfieldError(
                f"order parameters overflow at layer {l} (q = {q_t[l]:.3g}); lower sw2/sb2 or depth",
                argument="depth",
            )
    # eq. (7), vectorised over hidden layers l = 1..L-1
    hid = np.arange(1, L)
    dk_t = np.asarray(derivative_kernel(act, q_t[hid], q_t[hid], q_t[hid], method=method), dtype=float)
    dk_st = np.asarray(derivative_kernel(act, q_t[hid], q_t[hid], q_st[hid], method=method), dtype=float)
    qt_t[L], qt_st[L] = 1.0, 1.0
    with np.errstate(over="ignore", invalid="ignore"):
        for l in range(L - 1, 0, -1):
            qt_t[l] = sw2 * qt_t[l + 1] * dk_t[l - 1]
            qt_st[l] = sw2 * qt_st[l + 1] * dk_st[l - 1]
    if not (np.all(np.isfinite(qt_t[1:])) and np.all(np.isfinite(qt_st[1:]))):
        raise NormfieldError("backward order parameters overflow; lower sw2 or depth", argument="depth")

    alpha = float(np.sum(a[1:L] * a[0 : L - 1]))
    ls = np.arange(1, L + 1)
    kappa1 = float(np.sum(a[ls - 1] / alpha * qt_t[ls] * qh_t[ls - 1]))
    kappa2 = float(np.sum(a[ls - 1] / alpha * qt_st[ls] * qh_st[ls - 1]))
    layers = pd.DataFrame(
        {
            "layer": np.arange(L + 1),
            "q_t": q_t,
            "q_st": q_st,
            "qhat_t": qh_t,
            "qhat_st": qh_st,
            "qtilde_t": qt_t,
            "qtilde_st": qt_st,
        }
    )
    from normfield.core.kernels import mean_activation

    centered = sb2 == 0.0 and abs(float(mean_activation(act, 1.0, method=method))) < 1e-14
    a.setflags(write=False)
    return OrderParameters(act.label, sw2, sb2, L, a, layers, kappa1, kappa2, alpha, centered)
