"""Krylov methods for a symmetric positive semi-definite operator given by its products.

One module for every matrix-free spectral quantity the package computes:

* :func:`lanczos` — the top-k eigenpairs by Lanczos with full
  reorthogonalisation, stopped when every wanted Ritz value has an eigenvalue within a
  requested relative distance (Kahan's residual bound, Parlett, *The Symmetric
  Eigenvalue Problem*, Thm 11.5.1), counting the operator products;
* :func:`top_eigenpairs` — the same top-k by implicitly restarted Lanczos
  (ARPACK through ``scipy.sparse.linalg.eigsh``), whose restarts keep the memory
  at O(k·n) whatever the number of steps (the Fisher engine's large duals), and
  :func:`dense_top_eigenpairs` for a stored matrix;
* :func:`slq` — the spectral density as a discrete measure by stochastic
  Lanczos quadrature (Golub & Meurant 2010, Thm 6.2; Ubaru, Chen & Saad 2017);
* :func:`hutchpp` — Hutch++ (Meyer, Musco, Musco & Woodruff 2021, Alg. 1);
* :func:`deflated_trace` — tr(A) = tr(QᵀAQ) + tr((I−QQᵀ)A(I−QQᵀ)) with the
  second term by Hutchinson's estimator (Hutchinson 1990) on the complement of
  any orthonormal basis Q, e.g. the Lanczos basis, for which QᵀAQ is the
  tridiagonal T_m already computed (Krylov-aware trace estimation, Chen &
  Hallman 2023). Probes are added until the standard error reaches a
  requested relative size.

Operators are callables ``v (n,) float64 -> A v (n,) float64``; a separate
quadratic form ``z -> zᵀ A z`` can be given where it is cheaper than a product
(for A = J Jᵀ it is ‖Jᵀz‖², one vector–Jacobian product instead of two).
Every routine takes a seed and an optional ``stop()`` callable consulted
before each product (a budget in products or seconds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from normfield.core.validation import check_int, check_memory
from normfield.errors import NormfieldError

__all__ = ["LanczosResult", "TraceEstimate", "EigResult", "lanczos", "top_eigenpairs", "dense_top_eigenpairs", "slq",
           "hutchpp", "deflated_trace", "deflated_trace_blocked", "ritz_errors"]

Matvec = Callable[[np.ndarray], np.ndarray]
Stop = Callable[[], bool] | None


@dataclass(frozen=True)
class LanczosResult:
    """Leading Ritz pairs of a symmetric operator.

    Attributes:
        eigenvalues: shape (k,), largest first.
        eigenvectors: shape (n, k), orthonormal columns.
        errors: shape (k,), residual norms r_i = ‖A y_i − θ_i y_i‖: an eigenvalue lies within r_i
            of θ_i (the true error is usually far smaller, ≈ r_i²/gap, :func:`ritz_errors`).
        products: operator products used.
        converged: every wanted Ritz value reached ``errors <= tol·|θ_1|``.
        basis: the Lanczos basis Q, shape (m, n) (rows orthonormal).
        alpha, beta: the tridiagonal T_m = Qᵀ A Q (diagonal (m,), off-diagonal (m−1,)).
        stopped: why the iteration ended: ``"converged"``, ``"invariant"``
            (an invariant subspace: the Ritz values are exact), ``"max_steps"`` or ``"budget"``.
        residual: the vector r of the Lanczos relation A Qᵀ = Qᵀ T_m + r e_mᵀ, shape (n,)
            (r = β_m q_{m+1}), so that A is known on the whole Krylov space without a product.
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    errors: np.ndarray
    products: int
    converged: bool
    basis: np.ndarray = field(repr=False)
    alpha: np.ndarray = field(repr=False)
    beta: np.ndarray = field(repr=False)
    stopped: str = "converged"
    residual: np.ndarray | None = field(default=None, repr=False)

    @property
    def relative_errors(self) -> np.ndarray:
        """``errors / |θ_1|``."""
        return self.errors / max(abs(float(self.eigenvalues[0])), 1e-300)


@dataclass(frozen=True)
class TraceEstimate:
    """A trace and its standard error (0 when exact)."""

    value: float
    stderr: float
    products: int
    probes: int
    method: str


def _tridiag(alpha, beta) -> np.ndarray:
    return np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)


def ritz_errors(theta: np.ndarray, resid: np.ndarray) -> np.ndarray:
    """Error estimates of Ritz values from their residual norms r_i (sharper than r_i, not a bound).

    Not used as a stopping rule: no estimate from the Krylov space sees an eigenvalue that
    no Ritz value approximates yet, and the leading eigenvalues of a C-output network's
    Fisher form such a cluster. Measured on a CIFAR ResNet-18 (batch 128, ten outliers within
    0.5 %): after 3 Lanczos steps the top Ritz value sat 3.9e-3 below λ_max, alone above the
    bulk, with r²/δ = 3.6e-6·λ_max, while its residual, 1.8e-3·λ_max, did bound the error.

    Each Ritz value θ_i has an eigenvalue within r_i (Kahan; Parlett Thm 11.5.1,
    a rigorous bound). If the rest of the spectrum is at distance >= δ_i from
    θ_i, the error is at most r_i²/δ_i (Kato–Temple; Parlett Thm 11.7.1). δ_i is
    estimated from the other Ritz values, each of which has an eigenvalue within its
    own residual: δ_i = min_j (|θ_i − θ_j| − r_j) (Saad, *Numerical Methods for
    Large Eigenvalue Problems*, §6.3.4, with the neighbours' uncertainty taken off).
    Subtracting r_j matters for clustered leading eigenvalues (the C near-equal
    outliers of a C-output network's Fisher, Karakida et al. 2019, §3): early in a
    Lanczos run the cluster is represented by one Ritz value and the next Ritz value
    is far away but unconverged, so the bare Ritz gap would promise an accuracy the
    run has not reached. Where δ_i <= 0 the estimate is r_i. It is rigorous once
    the neighbouring eigenvalues have been found; an eigenvalue no Ritz value
    approximates yet is invisible to any estimate from the Krylov space.

    Args:
        theta: Ritz values, shape (m,).
        resid: their residual norms, shape (m,).

    Returns:
        shape (m,), min(r_i, r_i²/δ_i) where δ_i > 0, else r_i.
    """
    theta = np.asarray(theta, float)
    resid = np.abs(np.asarray(resid, float))
    out = resid.copy()
    if len(theta) < 2:
        return out
    d = np.abs(theta[:, None] - theta[None, :]) - resid[None, :]
    np.fill_diagonal(d, np.inf)
    gap = d.min(axis=1)
    ok = gap > 0
    out[ok] = np.minimum(resid[ok], resid[ok] ** 2 / gap[ok])
    return out


def lanczos(
    matvec: Matvec,
    n: int,
    k: int = 1,
    *,
    tol: float = 1e-8,
    max_steps: int | None = None,
    seed: int = 0,
    v0: np.ndarray | None = None,
    stop: Stop = None,
) -> LanczosResult:
    """Top-k eigenpairs of a symmetric operator by Lanczos with full reorthogonalisation.

    Each step costs one product; the basis (steps × n, float64) is kept, so
    the memory is max_steps·n·8 bytes (checked against ``NORMFIELD_MAX_BYTES``).
    Reorthogonalisation is done twice per step ("twice is enough", Parlett
    §6.9), so the basis stays orthonormal to round-off and no spurious copies
    of converged eigenvalues appear. Stops when the residual norms of the k wanted
    Ritz pairs are <= tol·|θ_1|, so that each has an eigenvalue within tol·|θ_1|
    (Kahan's bound, rigorous for every eigenvalue the Krylov space has found: see
    :func:`ritz_errors` for why a gap-based estimate is not used to stop).

    Args:
        matvec: v (n,) float64 -> A v (n,).
        n: operator size.
        k: how many leading eigenpairs.
        tol: requested relative accuracy of the wanted eigenvalues.
        max_steps: steps at most (default min(n, max(400, 40 + 20k))).
        seed: seeds the Gaussian start vector (ignored when ``v0`` is given).
        v0: start vector, shape (n,).
        stop: consulted before each product; True ends the iteration (``stopped="budget"``).

    Returns:
        :class:`LanczosResult`.
    """
    n = check_int("n", n, minimum=1)
    k = min(check_int("k", k, minimum=1), n)
    if not (tol > 0 and math.isfinite(tol)):
        raise NormfieldError(f"tol must be a positive number, got {tol!r}", argument="tol")
    m_max = min(n, max_steps if max_steps is not None else max(400, 40 + 20 * k))
    m_max = max(m_max, k)
    check_memory("Lanczos basis", (m_max + 1) * n * 8.0,
                 hint="reduce the operator size (fewer samples/outputs) or max_steps")
    Q = np.zeros((m_max + 1, n))
    q = np.asarray(v0, float).reshape(n) if v0 is not None else np.random.default_rng(seed).standard_normal(n)
    nq = float(np.linalg.norm(q))
    if nq == 0:
        raise NormfieldError("v0 must be a non-zero vector", argument="v0")
    Q[0] = q / nq
    alpha: list[float] = []
    beta: list[float] = []
    th, S, err = np.zeros(1), np.ones((1, 1)), np.full(1, np.inf)
    m, why = 0, "max_steps"
    for m in range(1, m_max + 1):
        if stop is not None and m > 1 and stop():
            m -= 1
            why = "budget"
            break
        w = np.asarray(matvec(Q[m - 1]), dtype=np.float64).reshape(n)
        alpha.append(float(Q[m - 1] @ w))
        w = w - Q[:m].T @ (Q[:m] @ w)
        w = w - Q[:m].T @ (Q[:m] @ w)
        b = float(np.linalg.norm(w))
        th, S = np.linalg.eigh(_tridiag(alpha, beta))
        th, S = th[::-1], S[:, ::-1]
        err = np.abs(b * S[-1, :])
        scale = max(abs(float(th[0])), 1e-300)
        if b <= 1e-14 * scale or m == n:
            err = np.zeros_like(err)
            why = "invariant"
            break
        if m >= k and np.all(err[:k] <= tol * scale):
            why = "converged"
            break
        if m == m_max:
            break
        beta.append(b)
        Q[m] = w / b
    if why == "budget":  # the last step's residual was normalised into Q[m]
        w = beta[m - 1] * Q[m] if m >= 1 and len(beta) >= m else np.zeros(n)
    kk = min(k, len(th))
    V = Q[:m].T @ S[:, :kk]
    scale = max(abs(float(th[0])), 1e-300)
    ok = bool(np.all(err[:kk] <= tol * scale))
    return LanczosResult(th[:kk].copy(), V, err[:kk].copy(), m, ok, Q[:m].copy(), np.asarray(alpha[:m]),
                         np.asarray(beta[:m - 1]), why, w.copy())


def slq(matvec: Matvec, n: int, *, probes: int = 4, steps: int = 30, seed: int = 0,
        stop: Stop = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Spectral density of a symmetric operator by stochastic Lanczos quadrature.

    For a unit vector v, ``steps`` Lanczos steps give the Gauss quadrature rule
    (θ_i, τ_i²) with vᵀ p(A) v = Σ_i τ_i² p(θ_i) exactly for polynomials of degree
    <= 2·steps − 1 (Golub & Meurant 2010, Thm 6.2); averaging over Rademacher
    probes v = z/√n gives E[vᵀ p(A) v] = tr p(A)/n (Ubaru, Chen & Saad 2017).

    Returns:
        (nodes, weights summing to 1 (each probe's rule carries mass 1/probes), products used).
    """
    probes = check_int("probes", probes, minimum=1)
    steps = min(check_int("steps", steps, minimum=1), n)
    rng = np.random.default_rng(seed)
    nodes, weights, used = [], [], 0
    for _ in range(probes):
        if stop is not None and nodes and stop():
            break
        q = rng.choice([-1.0, 1.0], size=n) / math.sqrt(n)
        Q = np.zeros((steps + 1, n))
        Q[0] = q
        alpha: list[float] = []
        beta: list[float] = []
        for m in range(1, steps + 1):
            w = np.asarray(matvec(Q[m - 1]), dtype=np.float64).reshape(n)
            used += 1
            alpha.append(float(Q[m - 1] @ w))
            w = w - Q[:m].T @ (Q[:m] @ w)
            w = w - Q[:m].T @ (Q[:m] @ w)
            b = float(np.linalg.norm(w))
            if m == steps or b <= 1e-14 * max(abs(alpha[0]), 1e-300):
                break
            beta.append(b)
            Q[m] = w / b
        th, S = np.linalg.eigh(_tridiag(alpha, beta))
        nodes.append(th)
        weights.append(S[0, :] ** 2)
    w_all = np.concatenate(weights) / len(weights)
    return np.concatenate(nodes), w_all, used


def _rademacher(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.choice([-1.0, 1.0], size=n)


def deflated_trace(
    quad: Callable[[np.ndarray], float],
    n: int,
    basis: np.ndarray | None,
    trace_in_basis: float,
    *,
    rtol: float = 0.005,
    min_probes: int = 8,
    max_probes: int = 256,
    seed: int = 0,
    stop: Stop = None,
    cost_cap: int | None = None,
) -> TraceEstimate:
    """tr(A) = tr(QᵀAQ) + E[zᵀ Π A Π z], Π = I − QQᵀ, z Rademacher (Hutchinson 1990), one probe at a time.

    The second term is the mean of zᵀΠAΠz over probes, added until its
    standard error (sample standard deviation / √probes) is <= rtol·estimate,
    with at least ``min_probes`` and at most ``max_probes`` probes. Deflating
    the dominant eigenvectors removes them from the estimator's variance
    2‖ΠAΠ‖_F² (Meyer et al. 2021, Lemma 2 and §3). This is
    :func:`deflated_trace_blocked` with blocks of one probe.

    Args:
        quad: z (n,) -> zᵀ A z.
        n: operator size.
        basis: Q with orthonormal rows, shape (m, n), or None.
        trace_in_basis: tr(QᵀAQ) (for the Lanczos basis: Σ α_i).
        rtol: target standard error relative to the trace.
        cost_cap: give up (``method`` ends in ``"(capped)"``) once ``min_probes`` probes predict that
            reaching ``rtol`` needs more than this many probes, e.g. when an exact trace costs fewer.

    Returns:
        :class:`TraceEstimate` (``products`` counts calls of ``quad``).
    """
    return deflated_trace_blocked(lambda Z: np.array([float(quad(z)) for z in Z]), n, basis, trace_in_basis,
                                  rtol=rtol, min_probes=min_probes, max_probes=max_probes, block=1, seed=seed,
                                  stop=stop, cost_cap=cost_cap)


def deflated_trace_blocked(
    quad_block: Callable[[np.ndarray], np.ndarray],
    n: int,
    basis: np.ndarray | None,
    trace_in_basis: float,
    *,
    rtol: float = 0.005,
    min_probes: int = 8,
    max_probes: int = 256,
    block: int = 16,
    seed: int = 0,
    stop: Stop = None,
    cost_cap: int | None = None,
    offset: float = 0.0,
) -> TraceEstimate:
    """:func:`deflated_trace` with the probes evaluated in blocks (one batched quadratic form per block).

    Same estimator (Hutchinson 1990 on the complement of Q, Meyer et al. 2021, §3), same probes in the
    same order, same stopping rule, checked after each block. The first block has ``min_probes`` probes,
    each later one the (s/(rtol·est))² − m probes the standard error predicts, clipped to [1, ``block``].
    ``block=1`` is :func:`deflated_trace`.

    Args:
        quad_block: Z (b, n) -> (zᵢᵀ A zᵢ)ᵢ, shape (b,); ``block``: b at most.
        offset: a known c to be subtracted: probes are added until the standard error is
            <= rtol·|estimate − c|, so tr(A) − c gets the requested precision (c = 0: as
            :func:`deflated_trace`). The rest as in :func:`deflated_trace`.

    Returns:
        :class:`TraceEstimate` (``products`` counts probes).
    """
    min_probes = check_int("min_probes", min_probes, minimum=2)
    max_probes = check_int("max_probes", max(max_probes, min_probes), minimum=2)
    block = check_int("block", block, minimum=1)
    rng = np.random.default_rng(seed)
    vals: list[float] = []
    se = math.inf

    def draw(b: int) -> np.ndarray:
        Z = np.stack([_rademacher(rng, n) for _ in range(b)])
        return Z - (Z @ basis.T) @ basis if basis is not None and len(basis) else Z

    def finished() -> bool:
        return len(vals) >= min_probes and se <= rtol * abs(trace_in_basis + float(np.mean(vals)) - offset)

    while len(vals) < max_probes:
        if stop is not None and len(vals) >= 2 and stop():
            break
        m = len(vals)
        if m < min_probes:
            b = min(block, min_probes - m)
        else:
            est = trace_in_basis + float(np.mean(vals)) - offset
            sd = float(np.std(vals, ddof=1))
            need = math.ceil((sd / (rtol * abs(est))) ** 2) if est != 0 else max_probes
            b = int(min(block, max(1, need - m)))
        b = min(b, max_probes - m)
        vals.extend(float(v) for v in np.asarray(quad_block(draw(b)), dtype=float).reshape(b))
        se = float(np.std(vals, ddof=1) / math.sqrt(len(vals))) if len(vals) >= 2 else math.inf
        if finished():
            break
        est = trace_in_basis + float(np.mean(vals))
        if cost_cap is not None and len(vals) == min_probes and est != offset and (
                float(np.std(vals, ddof=1)) / (rtol * abs(est - offset))) ** 2 > cost_cap:
            return TraceEstimate(est, se, len(vals), len(vals), "deflated hutchinson (capped)")
    est = trace_in_basis + (float(np.mean(vals)) if vals else 0.0)
    return TraceEstimate(est, se if len(vals) >= 2 else math.inf, len(vals), len(vals), "deflated hutchinson")


def hutchpp(matvec: Matvec, n: int, products: int, *, seed: int = 0,
            quad: Callable[[np.ndarray], float] | None = None) -> TraceEstimate:
    """Hutch++ trace estimate of a PSD operator with about ``products`` products
    (Meyer, Musco, Musco & Woodruff 2021, Alg. 1).

    A third of the products sketch the range (Q = orth(A S), S Rademacher n × s),
    a third give tr(QᵀAQ) exactly, a third run Hutchinson on (I−QQᵀ)A(I−QQᵀ).
    The error is O(tr(A)/products) with high probability (their Thm 1.1); the
    reported standard error is that of the Hutchinson part.

    Args:
        matvec: v -> A v.
        n: operator size.
        products: budget, >= 6.
        quad: optional z -> zᵀAz used for the Hutchinson part.
    """
    products = check_int("products", products, minimum=6)
    s = products // 3
    rng = np.random.default_rng(seed)
    S = rng.choice([-1.0, 1.0], size=(n, s))
    Y = np.stack([np.asarray(matvec(S[:, j]), float) for j in range(s)], axis=1)
    Q, _ = np.linalg.qr(Y)
    AQ = np.stack([np.asarray(matvec(Q[:, j]), float) for j in range(Q.shape[1])], axis=1)
    t_low = float(np.sum(Q * AQ))
    if quad is None:
        def quad(z):  # noqa: E306
            return float(z @ np.asarray(matvec(z), float))
    vals = []
    for _ in range(products - 2 * s):
        z = _rademacher(rng, n)
        z = z - Q @ (Q.T @ z)
        vals.append(float(quad(z)))
    se = float(np.std(vals, ddof=1) / math.sqrt(len(vals))) if len(vals) >= 2 else math.inf
    return TraceEstimate(t_low + float(np.mean(vals)), se, 2 * s + len(vals), len(vals), "hutch++")


# -- restarted Lanczos (ARPACK) and dense eigenpairs ---------------------------------------
@dataclass(frozen=True)
class EigResult:
    """Leading eigenpairs of a symmetric operator.

    Attributes:
        eigenvalues: shape (k,), largest first.
        eigenvectors: shape (n, k), columns matching ``eigenvalues`` (or None).
        matvecs: number of operator applications used (0 for dense).
        method: ``"dense"`` or ``"lanczos"``.
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray | None
    matvecs: int
    method: str


def dense_top_eigenpairs(A: np.ndarray, k: int, *, vectors: bool = True) -> EigResult:
    """Top-``k`` eigenpairs of a dense symmetric matrix by ``numpy.linalg.eigh``."""
    A = np.asarray(A)
    n = A.shape[0]
    k = check_int("k", k, minimum=1, maximum=n)
    if vectors:
        w, V = np.linalg.eigh(A)
        return EigResult(w[::-1][:k].copy(), V[:, ::-1][:, :k].copy(), 0, "dense")
    w = np.linalg.eigvalsh(A)
    return EigResult(w[::-1][:k].copy(), None, 0, "dense")


def top_eigenpairs(
    matvec: Callable[[np.ndarray], np.ndarray],
    n: int,
    k: int = 1,
    *,
    tol: float = 1e-10,
    maxiter: int | None = None,
    seed: int = 0,
    vectors: bool = True,
    dtype: type = np.float64,
) -> EigResult:
    """Largest-``k`` eigenpairs of a symmetric n×n operator by Lanczos.

    Args:
        matvec: v (n,) -> A v (n,); must be symmetric.
        n: operator size.
        k: how many leading eigenpairs.
        tol: ARPACK relative tolerance on Ritz values.
        seed: seeds the starting vector (same seed, same numbers).

    Returns:
        :class:`EigResult`, eigenvalues largest first, with the number of
        matrix-vector products used.
    """
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    n = check_int("n", n, minimum=1)
    k = check_int("k", k, minimum=1, maximum=n)
    count = [0]

    def mv(v: np.ndarray) -> np.ndarray:
        count[0] += 1
        return np.asarray(matvec(np.asarray(v).reshape(-1)), dtype=dtype).reshape(-1)

    if n <= max(2 * k + 1, 3) or k >= n - 1:
        # ARPACK needs k < n - 1: build the matrix column by column instead.
        A = np.stack([mv(e) for e in np.eye(n, dtype=dtype)], axis=1)
        res = dense_top_eigenpairs(0.5 * (A + A.T), k, vectors=vectors)
        return EigResult(res.eigenvalues, res.eigenvectors, count[0], "dense")
    rng = np.random.default_rng(seed)
    v0 = rng.standard_normal(n).astype(dtype)
    op = LinearOperator((n, n), matvec=mv, dtype=dtype)
    try:
        w, V = eigsh(op, k=k, which="LA", tol=tol, v0=v0, maxiter=maxiter, return_eigenvectors=True)
    except ArpackNoConvergence as e:  # pragma: no cover - reported, not hidden
        raise NormfieldError(
            f"Lanczos did not converge to tol={tol} within maxiter={maxiter}; raise maxiter or tol"
        ) from e
    order = np.argsort(w)[::-1]
    return EigResult(w[order], V[:, order] if vectors else None, count[0], "lanczos")
