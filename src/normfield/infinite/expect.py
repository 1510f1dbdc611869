"""Moments of a per-unit expression: closed forms where they exist, quasi-Monte Carlo otherwise.

For an expression ``x = g(components)`` (:mod:`normfield.infinite.state`) this
module returns, per replicate, ``nngp = E[x xᵀ]``, ``mean = E[x]`` and the
per-unit NTK ``ntk = Σ_c E[J_c Θ_c J_cᵀ] + Σ_p E[(∂x/∂p)(∂x/∂p)ᵀ]`` (``J_c =
∂x/∂h_c``, T×T; ``p`` the per-unit parameters of the operations). Routes, in
order:

1. **Leaf.** A Gaussian component: ``(Σ, 0, Θ)``; the input's empirical law:
   ``(x xᵀ/d, x̄, 0)``.
2. **Affine operation** of anything: exact from the child's moments
   (:meth:`normfield.infinite.ops.UnitOp.linear`).
3. **Sum of independent terms** (disjoint components):
   ``K = Σ_c K_c + Σ_{c≠c'} m_c m_{c'}ᵀ``, ``m = Σ m_c``, ``Θ = Σ Θ_c``. The NTK
   cross term ``Σ_θ ∂x_c/∂θ ∂x_{c'}/∂θ`` vanishes at infinite width: a term
   that starts with a Dense layer reads the shared parameters only through
   ``Σ_j W_ij ∂x_j/∂θ`` with ``W`` independent of everything else and of zero
   mean, so the cross term is a sum of ``width`` zero-mean terms of size
   ``1/width`` (Jacot et al. 2018, the argument of Thm 1 that the NTK is
   diagonal across units); independent components meet only through such sums.
4. **Pointwise activation of one Gaussian**: ``K_ts = E[σ(h_t)σ(h_s)]``,
   ``m_t = E[σ(h_t)]``, ``ntk = E[σ'(h_t)σ'(h_s)] ⊙ Θ`` by
   :func:`normfield.core.kernels.kernel` / ``derivative_kernel`` /
   ``mean_activation`` (Karakida et al. 2019, eqs. 5–7; Jacot et al. 2018, Thm 1);
   also through a centred affine map with per-unit γ, β (layer/RMS norm of a
   Gaussian, mean subtraction), see :func:`_act_of_affine`.
5. **Train-mode batch norm (+ a positively homogeneous activation) of one
   Gaussian**: ``normfield.infinite.bn_exact.bn_homogeneous`` when that module
   is present; the affine parameters add ``E[(σ'(z)z)(σ'(z)z)ᵀ] = K`` (γ; Euler's
   identity ``σ'(z)z = σ(z)``) and ``E[σ'(z)σ'(z)ᵀ]`` (β), the latter the
   Gaussian kernel of σ' at ``S = MΣM`` because σ' is invariant under the
   positive rescaling ``M h ↦ z``.
6. **Train-mode batch norm + any other σ, of one Gaussian**: quasi-Monte Carlo
   with the Jacobian's structure written out (``O(T²)`` per point instead of
   ``O(T³)``) and, for a smooth σ, the control variate ``p(BN(h))`` with ``p`` σ's
   Hermite projection, whose moments are exact
   (:func:`normfield.infinite.qmc_bn.bn_activation_route`,
   :func:`normfield.infinite.bn_poly.bn_polynomial`).
7. **General route** (everything else): randomised quasi-Monte Carlo with
   replicates and a stated error, :mod:`normfield.infinite.qmc`.

Control variates measured and not kept (T = 5–32): ``c·leaky_relu`` fitted to σ
through the exact route 5 lowered the NNGP's standard error 2–3x but not the NTK's
(for gelu it raised it: the control's kink is harder for quasi-Monte Carlo than gelu
itself); batch norm frozen at its typical scale (``γ a M x + β``, exact by routes 2–4)
lowered tanh's 2–3x (NNGP) and 1.5x (NTK), relu's 1.4x and 1x, at twice the cost per
point. The polynomial control of route 6 lowers them 32x and 14x at degree 15
(first layer of a tanh BN-MLP at T = 32).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Callable, Mapping

import numpy as np

from normfield.core.activations import Activation, get_activation
from normfield.core.kernels import derivative_kernel, kernel, mean_activation
from normfield.core.threads import blas_threads
from normfield.errors import NormfieldError
from normfield.infinite.ops import ActOp, AffineOp, BNTrainOp
from normfield.infinite.qmc import general_route
from normfield.infinite.qmc_bn import bn_activation_route
from normfield.infinite.state import Component, Leaf, Moments, OpNode, SumNode

__all__ = ["evaluate", "general_route", "pointwise_gauss", "bn_exact_available"]


def bn_exact_available() -> bool:
    """Whether ``normfield.infinite.bn_exact`` (exact batch norm for homogeneous σ) is present."""
    return importlib.util.find_spec("normfield.infinite.bn_exact") is not None


def _pair_args(S: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = np.clip(np.diag(S), 0.0, None)
    lim = np.sqrt(np.outer(d, d))
    return d[:, None], d[None, :], np.clip(0.5 * (S + S.T), -lim, lim)


def pointwise_gauss(act: Activation, Sigma: np.ndarray, Theta: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                                       np.ndarray, float]:
    """``(E[σσᵀ], E[σ], E[σ'σ'ᵀ] ⊙ Θ, error)`` for ``h ~ N(0, Σ)`` (route 4 of the module docstring).

    Args:
        act: activation.
        Sigma, Theta: (T, T).

    Returns:
        K (T, T), mean (T,), ntk (T, T) and the Frobenius quadrature error (0 for closed forms).
    """
    q11, q22, q12 = _pair_args(Sigma)
    K, eK = kernel(act, q11, q22, q12, return_error=True)
    D, eD = derivative_kernel(act, q11, q22, q12, return_error=True)
    m, em = mean_activation(act, q11[:, 0], return_error=True)
    err = max(float(np.linalg.norm(eK)), float(np.linalg.norm(eD * np.abs(Theta))), float(np.linalg.norm(em)))
    return np.asarray(K), np.asarray(m), np.asarray(D) * Theta, err


def _per_replicate(fn: Callable[[int], tuple], comp: Component, extra: tuple[np.ndarray, ...] = ()) -> list[tuple]:
    """``[fn(r) for r]``, computed once when the component (and ``extra`` arrays, leading axis R)
    coincide over replicates (no quasi-Monte Carlo step upstream)."""
    R = comp.cov.shape[0]
    same = all(np.array_equal(a, a[:1].repeat(R, axis=0)) for a in (comp.cov, comp.ntk) + tuple(extra))
    if same:
        return [fn(0)] * R
    return [fn(r) for r in range(R)]


def _act_of_affine(act: Activation, aff: AffineOp, comp: Component) -> Moments:
    """Route 4 through a centred affine map: ``y = γ A h + β`` with ``h ~ N(0, Σ)`` is Gaussian
    ``N(0, AΣAᵀ)`` at ``γ = 1, β = 0``; the NTK of ``σ(y)`` is ``E[σ'σ'] ⊙ AΘAᵀ`` plus
    ``[γ] E[ψ(y_t)ψ(y_s)]`` (``ψ(x) = x σ'(x)``, the γ-derivative ``σ'(y) y``) plus ``[β] E[σ'σ']``."""
    psi = None
    if aff.gamma:
        npd = act.numpy_pair()[1]
        psi = act if act.homogeneous else Activation(f"x*d{act.label}", lambda x: x * act.derivative(x),
                                                     smooth=act.smooth, np_fn=lambda x: x * npd(x))

    def one(r: int) -> tuple:
        A = aff.A[r]
        S, Th = A @ comp.cov[r] @ A.T, A @ comp.ntk[r] @ A.T
        K, m, N, e = pointwise_gauss(act, S, Th)
        if aff.gamma or aff.beta:
            q11, q22, q12 = _pair_args(S)
            D = np.asarray(derivative_kernel(act, q11, q22, q12))
            if aff.beta:
                N = N + D
            if aff.gamma:
                P, eP = kernel(psi, q11, q22, q12, return_error=True)
                N = N + np.asarray(P)
                e = e + float(np.linalg.norm(eP))
        return K, m, N, e

    parts = _per_replicate(one, comp, (aff.A,))
    return Moments(np.array([p[0] for p in parts]), np.array([p[1] for p in parts]),
                   np.array([p[2] for p in parts]), comp.qerr + max(p[3] for p in parts))


def _bn_fused(act: Activation, bn: BNTrainOp, comp: Component) -> Moments:
    """Route 5: train batch norm (+ homogeneous σ) of one Gaussian, per replicate, via ``bn_exact``."""
    mod = importlib.import_module("normfield.infinite.bn_exact")
    T = comp.cov.shape[1]
    M = np.eye(T) - 1.0 / T

    def one(r: int) -> tuple:
        K, JTJ, mean, err = mod.bn_homogeneous(comp.cov[r], comp.ntk[r], act, eps=bn.eps, ntk=True)
        ntk = np.asarray(JTJ, dtype=np.float64)
        if bn.affine:
            q11, q22, q12 = _pair_args(M @ comp.cov[r] @ M)
            ntk = ntk + K + np.asarray(derivative_kernel(act, q11, q22, q12))
        return K, mean, ntk, 3.0 * T * float(err)

    parts = _per_replicate(one, comp)
    return Moments(np.array([p[0] for p in parts]), np.array([p[1] for p in parts]),
                   np.array([p[2] for p in parts]), comp.qerr + max(p[3] for p in parts))


def _flatten_sum(node: SumNode) -> list:
    out = []
    for c in node.children:
        out.extend(_flatten_sum(c) if isinstance(c, SumNode) else [c])
    return out


def evaluate(node: Any, comps: Mapping[int, Component], *, seed: int, tol: float,
             upstream: tuple[float, float] = (0.0, 0.0)) -> Moments:
    """Per-replicate moments of ``node`` (cached on the node), by the first route that applies.

    Args:
        node: expression.
        comps: its components.
        seed: seed of a quasi-Monte Carlo step.
        tol: target stated error.
        upstream: stated errors (nngp, ntk) the inputs already carry, relative to their norms (a
            stopping rule of the general route).
    """
    if node.mom is not None:
        return node.mom
    with blas_threads(1):  # T×T matrices: one BLAS thread is fastest (several times so under load)
        mom = _evaluate(node, comps, seed=seed, tol=tol, upstream=upstream)
    node.mom = mom
    return mom


def _evaluate(node, comps, *, seed, tol, upstream):
    if isinstance(node, Leaf):
        c = comps[node.key]
        if c.kind == "empirical":
            R = c.cov.shape[0]
            return Moments(c.cov.copy(), np.broadcast_to(c.samples.mean(axis=0), (R, c.cov.shape[1])).copy(),
                           c.ntk.copy())
        return Moments(c.cov.copy(), np.zeros(c.cov.shape[:2]), c.ntk.copy(), c.qerr)
    if isinstance(node, OpNode):
        op, child = node.op, node.child
        if op.is_linear:
            return op.linear(evaluate(child, comps, seed=seed, tol=tol, upstream=upstream))
        if isinstance(op, ActOp) and isinstance(child, Leaf) and comps[child.key].kind == "gauss":
            c = comps[child.key]
            parts = _per_replicate(lambda r: pointwise_gauss(op.act, c.cov[r], c.ntk[r]), c)
            return Moments(np.array([p[0] for p in parts]), np.array([p[1] for p in parts]),
                           np.array([p[2] for p in parts]), c.qerr + max(p[3] for p in parts))
        if (isinstance(op, ActOp) and isinstance(child, OpNode) and isinstance(child.op, AffineOp)
                and isinstance(child.child, Leaf) and comps[child.child.key].kind == "gauss"
                and not np.any(child.op.c)):
            return _act_of_affine(op.act, child.op, comps[child.child.key])
        if bn_exact_available():
            if (isinstance(op, ActOp) and op.act.homogeneous and isinstance(child, OpNode)
                    and isinstance(child.op, BNTrainOp) and isinstance(child.child, Leaf)
                    and comps[child.child.key].kind == "gauss"):
                return _bn_fused(op.act, child.op, comps[child.child.key])
            if isinstance(op, BNTrainOp) and isinstance(child, Leaf) and comps[child.key].kind == "gauss":
                return _bn_fused(get_activation("identity"), op, comps[child.key])
        if (isinstance(op, ActOp) and isinstance(child, OpNode) and isinstance(child.op, BNTrainOp)
                and isinstance(child.child, Leaf) and comps[child.child.key].kind == "gauss"):
            comp = comps[child.child.key]
            return bn_activation_route(op.act, child.op, comp, seed=seed, tol=tol, upstream=upstream,
                                       control=polynomial_control(op.act, child.op, comp))
        return general_route(node, comps, seed=seed, tol=tol, upstream=upstream)
    if isinstance(node, SumNode):
        terms = _flatten_sum(node)
        keysets = [t.keys() for t in terms]
        if sum(len(k) for k in keysets) == len(frozenset().union(*keysets)):
            moms = [evaluate(t, comps, seed=seed, tol=tol, upstream=upstream) for t in terms]
            K = sum(m.nngp for m in moms)
            mean = sum(m.mean for m in moms)
            for i, a in enumerate(moms):
                for j, b in enumerate(moms):
                    if i != j:
                        K = K + np.einsum("rt,rs->rts", a.mean, b.mean)
            return Moments(K, mean, sum(m.ntk for m in moms), sum(m.qerr for m in moms))
        return general_route(node, comps, seed=seed, tol=tol, upstream=upstream)
    raise TypeError(f"unknown expression node {node!r}")


def polynomial_control(act: Activation, bn: BNTrainOp, comp: Component) -> tuple[np.ndarray, Moments] | None:
    """The control variate of ``σ(BN(h))`` (σ smooth; h one Gaussian component): ``p(BN(h))`` with
    ``p`` σ's Hermite projection of degree :data:`normfield.infinite.bn_poly.POLY_DEGREE`, whose NNGP,
    mean and NTK (with the affine parameters' terms) are exact
    (:func:`normfield.infinite.bn_poly.bn_polynomial`), per replicate. ``None`` for a non-smooth σ."""
    from normfield.infinite.bn_poly import POLY_DEGREE, bn_polynomial, hermite_fit

    if not act.smooth:
        return None
    coef = hermite_fit(act, POLY_DEGREE)
    if coef is None:
        return None

    def one(r: int) -> tuple:
        out = bn_polynomial(comp.cov[r], comp.ntk[r], coef, eps=bn.eps, ntk=True, rtol=1e-7)
        ntk = out["JTJ"] + (out["Gg"] + out["Gb"] if bn.affine else 0.0)
        return out["K"], out["mean"], ntk, float(out["error"]) * comp.cov.shape[1]

    try:
        parts = _per_replicate(one, comp)
    except NormfieldError:  # every sample equal: batch norm's output is constant, nothing to control
        return None
    return coef, Moments(np.array([p[0] for p in parts]), np.array([p[1] for p in parts]),
                         np.array([p[2] for p in parts]), comp.qerr + max(p[3] for p in parts))
