"""Predictions of Karakida, Akaho & Amari 2019 for the FIM's eigenvalue statistics.

Every theorem returns a :class:`Prediction`: the predicted ``m_λ``, ``λ_max`` or its
bounds, the constants used (``kappa1``, ``kappa2``, ``alpha``, ...), the asymptotic
regime the theorem covers and its reference (theorem and equations);
:meth:`Prediction.to_dict` is the flat JSON view.  Asking outside the regime raises
:class:`~normfield.errors.NormfieldError`, naming the condition.  Which theorem
applies to which placement is a property of the placement
(:mod:`normfield.fisher.placements`).

Conventions (checked numerically against the exact dual, see tests): ``M`` is the
base width with ``M_l = α_l M``; ``α = Σ_{l=1}^{L-1} α_l α_{l-1}`` so ``P ≈ α M²``;
the FIM is ``F = (1/T) Σ_t Σ_k ∇f_k(t)∇f_k(t)ᵀ`` (eq. (8)).

Bounds of Thm 3.3(ii), eq. (19) and Thm 4.1 come from ``s_λ/m_λ <= λ_max <= √(P s_λ)``;
the paper's non-negative constants ``c_1, c_2`` are unknown, so we report the bounds
with ``c = 0``.  The lower bound then stays a valid asymptotic lower bound
(``c_1 >= 0``); the upper one is its leading ``O(√M)`` term (``*_upper`` keys).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from normfield.core.activations import get_activation
from normfield.core.validation import check_float
from normfield.errors import NormfieldError



class ConfigLike(Protocol):
    """What the theorems read of a network's settings (satisfied by
    :class:`normfield.fisher.networks.MLPConfig`, which imports this module, not
    the other way round). Karakida et al. 2019, eqs. (1)-(2): depth L, widths
    M_l = α_l M, C outputs, T samples, σ_w², σ_b², the activation."""

    sw2: float
    sb2: float
    depth: int
    width: int
    alphas: tuple[float, ...] | None
    outputs: int
    samples: int
    norm: str

    @property
    def act(self) -> Any: ...

    @property
    def alpha(self) -> float: ...

    @property
    def widths(self) -> tuple[int, ...]: ...

    @property
    def placement(self) -> Any: ...

__all__ = [
    "Prediction",
    "average_predictions",
    "kappas",
    "is_centered",
    "theory_no_norm",
    "theory_mean_subtraction",
    "theory_last_bn",
    "theory_middle_bn",
    "layer_norm_order_parameters",
    "theory_layer_norm",
    "fisher_theory",
    "bn_order_parameters",
]

REF = "Karakida et al. 2019"

#: The predicted quantities, in the order :meth:`Prediction.to_dict` lists them.
PREDICTED = ("m_lambda", "lambda_max", "lambda_max_lower", "lambda_max_upper")


@dataclass(frozen=True)
class Prediction:
    """One theorem's predictions for one network setting (Karakida et al. 2019).

    Attributes:
        theorem: ``"Thm 2.2"``, ``"Thm 3.3"``, ``"eq. (19)"``, ``"Thm 3.4"`` or ``"Thm 4.1"``.
        equations: the equations and appendix sections it rests on, e.g. ``"eq. (10)–(11)"``.
        regime: the asymptotic regime the theorem covers.
        m_lambda: predicted mean eigenvalue ``m_λ`` (``None`` where the theorem is silent).
        lambda_max: predicted largest eigenvalue ``λ_max`` (asymptotic equality).
        lambda_max_lower: asymptotic lower bound on ``λ_max`` (unknown constants set to 0).
        lambda_max_upper: leading term of the asymptotic upper bound on ``λ_max``.
        kappa1, kappa2: ``κ1, κ2`` of eq. (11) (``κ'1, κ'2`` of (S.102) under layer norm).
        alpha: ``α = Σ_l α_l α_{l−1}`` (``P ≈ α M²``).
        constants: the theorem's further constants by name (``rho``, ``Q1``, ``Q2``, ``s``,
            ``eta1..3``, ``qhat_t_bn``, ...).
        paper: the paper.
    """

    theorem: str
    equations: str
    regime: str
    m_lambda: float | None = None
    lambda_max: float | None = None
    lambda_max_lower: float | None = None
    lambda_max_upper: float | None = None
    kappa1: float | None = None
    kappa2: float | None = None
    alpha: float | None = None
    constants: Mapping[str, float] = field(default_factory=dict)
    paper: str = REF

    @property
    def reference(self) -> str:
        """``"<paper>, <theorem>, <equations>"``."""
        return f"{self.paper}, {self.theorem}, {self.equations}"

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON view: the predicted quantities present, ``kappa1, kappa2, alpha``, the other
        constants, ``regime`` and ``reference`` (the keys of ``normfield fisher --json``'s ``theory``)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in PREDICTED if getattr(self, k) is not None}
        out.update({k: getattr(self, k) for k in ("kappa1", "kappa2", "alpha") if getattr(self, k) is not None})
        out.update(self.constants)
        out["regime"] = self.regime
        out["reference"] = self.reference
        return out


def average_predictions(predictions: Sequence[Prediction]) -> Prediction:
    """The mean of per-network predictions of one theorem (e.g. eq. (19) with each network's σ_k):
    every number averaged over ``predictions``, the texts of the first."""
    if not predictions:
        raise NormfieldError("average_predictions needs at least one prediction", argument="predictions")
    first = predictions[0]
    n = len(predictions)

    def mean(values: list) -> Any:
        return None if values[0] is None else sum(values) / n

    nums = {f.name: mean([getattr(p, f.name) for p in predictions]) for f in fields(Prediction)
            if f.name in PREDICTED or f.name in ("kappa1", "kappa2", "alpha")}
    consts = {k: sum(p.constants[k] for p in predictions) / n for k in first.constants}
    return Prediction(first.theorem, first.equations, first.regime, constants=consts, paper=first.paper, **nums)


def kappas(config: ConfigLike) -> dict[str, float]:
    """κ1, κ2 (eq. (11)) and α for the un-normalized network of ``config``.

    Uses :func:`normfield.fisher.order_params.order_parameters` (eqs. (5)–(7)).

    Returns:
        ``{"kappa1", "kappa2", "alpha"}``.
    """
    from normfield.fisher.order_params import order_parameters

    op = order_parameters(config.act, config.sw2, config.sb2, config.depth, alphas=list(config.alphas))
    return {"kappa1": float(op.kappa1), "kappa2": float(op.kappa2), "alpha": float(config.alpha)}


def is_centered(config: ConfigLike) -> bool:
    """Centered network (Definition 2.1 negated): σ_b = 0 and ∫Dz φ(z) = 0."""
    if config.sb2 > 0:
        return False
    from normfield.core.gaussian import gaussian_expectation

    act = config.act
    mean = float(gaussian_expectation(act.numpy, 1.0))
    scale = float(np.sqrt(gaussian_expectation(lambda x: act.numpy(x) ** 2, 1.0)))
    return abs(mean) <= 1e-12 * max(scale, 1e-300)


def _require_noncentered(config: ConfigLike, what: str) -> None:
    if is_centered(config):
        raise NormfieldError(
            f"{what} assumes a non-centered network (Definition 2.1: sb2 > 0 or an activation with "
            f"non-zero Gaussian mean); {config.act.label} with sb2=0 is centered, where κ2 = 0 and "
            "lower-order terms decide λ_max (Karakida et al. 2019, Sec. 2.3); use sb2 > 0",
            argument="sb2")


def theory_no_norm(config: ConfigLike) -> Prediction:
    """Thm 2.2, eq. (10): ``m_λ ∼ κ1 C/M``, ``λ_max ∼ α((T−1)/T κ2 + κ1/T) M``.

    Regime: non-centered network, i.i.d. N(0, I) inputs, M → ∞ with C, T, L, α_l fixed.
    """
    _require_noncentered(config, "Thm 2.2")
    k = kappas(config)
    M, T, C = config.width, config.samples, config.outputs
    k1, k2, a = k["kappa1"], k["kappa2"], k["alpha"]
    return Prediction("Thm 2.2", "eq. (10)–(11)", "M → ∞, T and C fixed; non-centered network",
                      m_lambda=k1 * C / M, lambda_max=a * ((T - 1) / T * k2 + k1 / T) * M,
                      kappa1=k1, kappa2=k2, alpha=a)


def _mean_sub_regime(M: int, T: int, regime: str | None) -> str:
    if regime is None:
        return "fixed-T" if T * T <= M else "T~M"
    if regime not in ("fixed-T", "T~M"):
        raise NormfieldError(f"regime must be 'fixed-T' or 'T~M', got {regime!r}", argument="regime")
    return regime


def theory_mean_subtraction(config: ConfigLike, *, regime: str | None = None) -> Prediction:
    """Thm 3.3, eq. (16)–(18): last-layer mean subtraction (eq. (15)).

    ``m_λ ∼ (1 − 1/T)(κ1 − κ2) C/M`` (16).  (i) T >= 2 fixed: ``λ_max ∼ α(κ1 − κ2) M/T`` (17).
    (ii) T = O(M), ρ = M/T: ``ρα(κ1−κ2) + c1 <= λ_max <= √((Cα²ρ(κ1−κ2)² + c2) M)`` (18),
    reported with ``c1 = c2 = 0``.

    Args:
        config: settings (``norm`` is not inspected; the formulas are for ``last-mean``).
        regime: ``"fixed-T"`` or ``"T~M"``; default picks ``fixed-T`` when ``T² <= M``.
    """
    _require_noncentered(config, "Thm 3.3")
    M, T, C = config.width, config.samples, config.outputs
    if T < 2:
        raise NormfieldError("samples must be >= 2 for mean subtraction (Thm 3.3)", argument="samples")
    k = kappas(config)
    k1, k2, a = k["kappa1"], k["kappa2"], k["alpha"]
    reg = _mean_sub_regime(M, T, regime)
    m_lambda = (1 - 1 / T) * (k1 - k2) * C / M
    if reg == "fixed-T":
        return Prediction("Thm 3.3", "eq. (16)–(17)", "M → ∞ with T >= 2 fixed (T = O(1)); non-centered network",
                          m_lambda=m_lambda, lambda_max=a * (k1 - k2) * M / T, kappa1=k1, kappa2=k2, alpha=a)
    rho = M / T
    return Prediction("Thm 3.3", "eq. (16), (18)",
                      "M → ∞ with ρ = M/T fixed (T = O(M)); gradient independence; c1 = c2 = 0",
                      m_lambda=m_lambda, lambda_max_lower=rho * a * (k1 - k2),
                      lambda_max_upper=math.sqrt(C * a * a * rho * (k1 - k2) ** 2 * M),
                      kappa1=k1, kappa2=k2, alpha=a, constants={"rho": rho})


def theory_last_bn(config: ConfigLike, sigma: Sequence[float] | None = None, *, Q1: float | None = None,
                   Q2: float | None = None) -> Prediction:
    """Eq. (19): last-layer batch norm (eq. (13)–(14)) with T = O(M), ρ = M/T.

    ``m_λ ∼ Q1(κ1 − κ2)/M``, ``ρα(Q2/Q1)(κ1 − κ2) + c1' <= λ_max <= √((Q2α²ρ(κ1−κ2)² + c2')M)``,
    ``Q1 = Σ_k σ_k⁻²``, ``Q2 = Σ_k σ_k⁻⁴`` with σ_k(θ) the batch std of output k (eq. (14)),
    measured on the network (:attr:`FisherResult.output_stats` ``["sigma"]``).

    Args:
        config: settings.
        sigma: shape (C,), the output standard deviations σ_k(θ) (> 0).
        Q1, Q2: alternatively the sums themselves (e.g. averaged over an ensemble).
    """
    _require_noncentered(config, "eq. (19)")
    M, T, C = config.width, config.samples, config.outputs
    if T < 3:
        raise NormfieldError(
            "samples must be >= 3 for last-layer batch norm theory: with T = 2 each normalized output "
            "is ±1 whatever θ, so the FIM vanishes (Karakida et al. 2019, App. E remark)", argument="samples")
    if sigma is not None:
        sig = np.asarray(sigma, dtype=np.float64).reshape(-1)
        if sig.shape != (C,) or not np.all(np.isfinite(sig)) or np.any(sig <= 0):
            raise NormfieldError(f"sigma must hold {C} positive finite output std's σ_k(θ), got {sigma!r}",
                                 argument="sigma")
        Q1, Q2 = float(np.sum(sig ** -2.0)), float(np.sum(sig ** -4.0))
    elif Q1 is None or Q2 is None:
        raise NormfieldError("eq. (19) needs the measured output std's: pass sigma (or Q1 and Q2)",
                             argument="sigma")
    else:
        Q1 = check_float("Q1", Q1, minimum=0.0, strict_min=True)
        Q2 = check_float("Q2", Q2, minimum=0.0, strict_min=True)
    k = kappas(config)
    k1, k2, a = k["kappa1"], k["kappa2"], k["alpha"]
    rho = M / T
    return Prediction("eq. (19)", "App. B.2 (S.43)–(S.55)",
                      "M → ∞ with ρ = M/T fixed; gradient independence; c1' = c2' = 0",
                      m_lambda=Q1 * (k1 - k2) / M, lambda_max_lower=rho * a * Q2 / Q1 * (k1 - k2),
                      lambda_max_upper=math.sqrt(Q2 * a * a * rho * (k1 - k2) ** 2 * M),
                      kappa1=k1, kappa2=k2, alpha=a, constants={"Q1": Q1, "Q2": Q2, "rho": rho})


def bn_order_parameters(activation: Any, samples: int) -> dict[str, float]:
    """``q̂_{t,BN}``, ``q̂_{st,BN}`` (S.66)–(S.69): the diagonal and off-diagonal of the BN
    fixed point G* of Joudaki et al. 2023, eq. (10), for batch size T.

    For i.i.d. N(0, I) inputs the input Gram is permutation-symmetric, so after one
    batch-normalized layer the normalized pre-activations of every unit are uniform on
    the sphere {Σ_t ū_t = 0, ‖ū‖² = T} and every hidden layer has these same values.
    """
    from normfield.gram.fixed_point import fixed_point

    fp = fixed_point(get_activation(activation), int(samples))
    return {"qhat_t_bn": float(fp.diagonal), "qhat_st_bn": float(fp.off_diagonal)}


def theory_middle_bn(config: ConfigLike) -> Prediction:
    """Thm 3.4, eq. (22): batch norm in every hidden layer (eq. (20)–(21)), output unnormalized.

    ``λ_max >= α_{L−1}((T−1)/T q̂^{L−1}_{st,BN} + q̂^{L−1}_{t,BN}/T) M`` asymptotically, for
    non-negative activations (then both order parameters are positive).

    Raises:
        NormfieldError: the activation can be negative (the bound's positivity needs φ >= 0).
    """
    act = config.act
    if not act.nonnegative:
        raise NormfieldError(
            f"Thm 3.4 assumes a non-negative activation (φ >= 0, e.g. relu, sigmoid); {act.label} takes "
            "negative values, where q̂_st,BN may vanish and the bound says nothing", argument="activation")
    if config.depth < 2:
        raise NormfieldError("Thm 3.4 needs depth >= 2 (a hidden batch-normalized layer)", argument="depth")
    M, T = config.width, config.samples
    if T < 2:
        raise NormfieldError("samples must be >= 2 for batch norm (Thm 3.4)", argument="samples")
    q = bn_order_parameters(act, T)
    aL1 = float(config.alphas[-1])  # type: ignore[index]
    lower = aL1 * ((T - 1) / T * q["qhat_st_bn"] + q["qhat_t_bn"] / T) * M
    return Prediction("Thm 3.4", "eq. (22), (S.61)–(S.70)", "M → ∞, any T >= 2; non-negative activation",
                      lambda_max_lower=lower, alpha=config.alpha, constants={**q, "alpha_L_minus_1": aL1})


def layer_norm_order_parameters(config: ConfigLike) -> dict[str, Any]:
    """Order parameters under layer normalization, (S.71)–(S.87), and κ'1, κ'2 (S.102).

    Forward (S.72), (S.74), for l = 1..L with ``q̂^0_t = 1``, ``q̂^0_st = 0``:
    ``v^l = σ_w² q̂^{l−1}_t + σ_b²`` (= σ^l(t)²), ``c^l = (σ_w² q̂^{l−1}_st + σ_b²)/v^l``,
    ``q̂^l_t = ∫Du φ(u)²``, ``q̂^l_st = I_φ[1, c^l]`` (l <= L−1).
    Backward (S.87), ``q̃^L = 1``: ``q̃^l_t = σ_w² q̃^{l+1}_t ∫Du φ'(u)² / v^l``,
    ``q̃^l_st = σ_w² q̃^{l+1}_st I_φ'[1, c^l] / v^l``.

    Returns:
        dict with ``kappa1_prime``, ``kappa2_prime``, ``alpha`` and ``layers`` (list of dicts).
    """
    from normfield.core.gaussian import gaussian_expectation, gaussian_pair_expectation

    act = config.act
    L = config.depth
    sw2, sb2 = config.sw2, config.sb2
    al = list(config.alphas)  # type: ignore[arg-type]
    alpha = config.alpha
    qh_t = [1.0]
    qh_st = [0.0]
    v = [float("nan")]
    c = [float("nan")]
    phi2 = float(gaussian_expectation(lambda x: act.numpy(x) ** 2, 1.0))
    dphi2 = float(gaussian_expectation(lambda x: act.numpy_derivative(x) ** 2, 1.0))
    for l in range(1, L + 1):
        vl = sw2 * qh_t[l - 1] + sb2
        if vl <= 0:
            raise NormfieldError("layer-norm variance σ_w² q̂_t + σ_b² vanished; use sw2 > 0",
                                 argument="sw2")
        cl = min(max((sw2 * qh_st[l - 1] + sb2) / vl, -1.0), 1.0)
        v.append(vl)
        c.append(cl)
        if l < L:
            qh_t.append(phi2)
            qh_st.append(float(gaussian_pair_expectation(act.numpy, act.numpy, 1.0, 1.0, cl)))
    qt_t = [0.0] * (L + 1)
    qt_st = [0.0] * (L + 1)
    qt_t[L] = qt_st[L] = 1.0
    for l in range(L - 1, 0, -1):
        kd = float(gaussian_pair_expectation(act.numpy_derivative, act.numpy_derivative, 1.0, 1.0, c[l]))
        qt_t[l] = sw2 * qt_t[l + 1] * dphi2 / v[l]
        qt_st[l] = sw2 * qt_st[l + 1] * kd / v[l]
    if alpha <= 0:
        raise NormfieldError("Thm 4.1 needs depth >= 2 (α = Σ α_l α_{l−1} > 0)", argument="depth")
    k1 = sum(al[l - 1] / alpha * qt_t[l] * qh_t[l - 1] for l in range(1, L + 1))
    k2 = sum(al[l - 1] / alpha * qt_st[l] * qh_st[l - 1] for l in range(1, L + 1))
    layers = [{"layer": l, "qhat_t": qh_t[l - 1], "qhat_st": qh_st[l - 1], "qtilde_t": qt_t[l],
               "qtilde_st": qt_st[l]} for l in range(1, L + 1)]
    return {"kappa1_prime": k1, "kappa2_prime": k2, "alpha": alpha, "layers": layers}


def theory_layer_norm(config: ConfigLike, eta: Mapping[str, float] | Sequence[float]) -> Prediction:
    """Thm 4.1, eq. (26)–(27): layer norm in every layer including the output (eq. (24)–(25)).

    ``m_λ ∼ (C−2) η1 κ'1/M``;  ``α s M/((C−2) η1 κ'1) <= λ_max <= α √s M`` with
    ``s = [(η3² − η1²)T + (C−2)(η1² T − η2)]/T · κ'2² + (C−2) η2 κ'1²/T`` (27), re-derived in
    (S.108)–(S.113): ``η1 = mean_t σ(t)⁻²``, ``η2 = mean_t σ(t)⁻⁴``,
    ``η3² = (1/T²) Σ_{t,t'} g(t,t')²/(σ(t)²σ(t')²)`` with σ(t), g(t,t') of the output layer norm
    (measured: :attr:`FisherResult.output_stats`).

    Raises:
        NormfieldError: ``C <= 2``.  For ``C = 2`` the FIM vanishes identically: layer norm over two
            outputs gives ``ū_1 = −ū_2`` and ``σ = |ū_1|``, so ``f = ±1`` does not depend on θ.
    """
    C = config.outputs
    if C == 2:
        raise NormfieldError(
            "outputs = 2 under layer norm: the FIM is exactly zero (ū_1 = −ū_2 and σ(t) = |ū_1(t)|, so "
            "each output is ±1 whatever θ; Karakida et al. 2019, App. E remark); Thm 4.1 needs outputs >= 3",
            argument="outputs")
    if C < 3:
        raise NormfieldError("Thm 4.1 needs outputs >= 3", argument="outputs")
    _require_noncentered(config, "Thm 4.1")
    if isinstance(eta, Mapping):
        e1, e2, e3 = (check_float(n, eta[n], minimum=0.0, strict_min=True) for n in ("eta1", "eta2", "eta3"))
    else:
        e1, e2, e3 = (check_float("eta", x, minimum=0.0, strict_min=True) for x in eta)
    M, T = config.width, config.samples
    lo = layer_norm_order_parameters(config)
    k1, k2, a = lo["kappa1_prime"], lo["kappa2_prime"], lo["alpha"]
    s = ((e3 ** 2 - e1 ** 2) * T + (C - 2) * (e1 ** 2 * T - e2)) / T * k2 ** 2 + (C - 2) * e2 * k1 ** 2 / T
    return Prediction("Thm 4.1", "eq. (26)–(27), App. E (S.71)–(S.113)",
                      "M → ∞, C >= 3, T fixed; gradient independence; non-centered network",
                      m_lambda=(C - 2) * e1 * k1 / M, lambda_max_lower=a * s * M / ((C - 2) * e1 * k1),
                      lambda_max_upper=a * math.sqrt(s) * M, kappa1=k1, kappa2=k2, alpha=a,
                      constants={"s": s, "eta1": e1, "eta2": e2, "eta3": e3, "kappa1_prime": k1,
                                 "kappa2_prime": k2})


def fisher_theory(config: ConfigLike, output_stats: Mapping[str, Any] | None = None, *,
                  regime: str | None = None) -> Prediction:
    """The prediction of the theorem that applies to ``config.norm``.

    ``none`` → Thm 2.2; ``last-mean`` → Thm 3.3; ``last-bn`` → eq. (19) (needs
    ``output_stats["sigma"]``, or ``Q1`` and ``Q2``); ``middle-bn`` → Thm 3.4; ``layer`` → Thm 4.1
    (needs ``output_stats`` ``eta1..3``).  ``output_stats`` is :attr:`FisherResult.output_stats`
    (or one row of a spectrum frame).  The placement object
    (:func:`normfield.fisher.placements.get_placement`) says which theorem applies.

    Returns:
        :class:`Prediction` (``.to_dict()``: some of ``lambda_max``, ``lambda_max_lower``,
        ``lambda_max_upper``, ``m_lambda``, the constants, ``regime`` and ``reference``).

    Raises:
        NormfieldError: outside the theorem's regime, or measured statistics missing.
    """
    return config.placement.theorem(config, output_stats or {}, regime=regime)
