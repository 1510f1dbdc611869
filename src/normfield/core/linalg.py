"""Restarted Lanczos (ARPACK) for a symmetric operator given by its products.

:func:`top_eigenpairs` runs implicitly restarted Lanczos (ARPACK, through
``scipy.sparse.linalg.eigsh``) on a symmetric PSD operator given only by its
matrix-vector product, and counts the products it used. Restarts keep the
memory at O(k·n) whatever the number of steps, which is what the Fisher
engine's large duals need. The unrestarted Krylov methods with error
estimates, budgets, quadrature and trace estimation are in
:mod:`normfield.core.krylov`; this module is the SciPy-backed member of the
same family (same operator convention: ``v (n,) -> A v (n,)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from normfield.core.validation import check_int
from normfield.errors import NormfieldError

__all__ = ["EigResult", "top_eigenpairs", "dense_top_eigenpairs"]


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
