r"""Exact infinite-width train-mode batch norm followed by a polynomial: NNGP, mean and NTK.

The setting of :mod:`normfield.infinite.bn_exact`: one unit sees ``h ~ N(0, Σ)`` across the
batch (per-unit NTK ``Θ``), and train-mode batch norm then ``p`` gives

    y = M h,   s² = ‖y‖²/T + ε,   z = y/s,   x = p(z),   J = ∂x/∂h = diag(p'(z)) s⁻¹ P M,

``P = I − y yᵀ/(T s²)``, now for a polynomial ``p(z) = Σ_a c_a z^a`` (degree n) instead of a
homogeneous σ. :func:`bn_polynomial` returns ``K = E[x xᵀ]``, ``mean = E[x]``,
``JTJ = E[J Θ Jᵀ]`` and the two affine-parameter terms ``Gγ = E[(p'(z)∘z)(p'(z)∘z)ᵀ]`` and
``Gβ = E[p'(z)p'(z)ᵀ]``, with a stated quadrature error. Its use: the control variate that lets
the quasi-Monte Carlo route (:mod:`normfield.infinite.qmc`) estimate ``σ(BN(h))`` for a smooth
non-homogeneous σ through the small difference ``σ − p`` only (:func:`hermite_fit` gives ``p``).

Derivation (the Laplace method of Yang et al. 2019, *A Mean Field Theory of Batch Normalization*,
ICLR, as in :mod:`normfield.infinite.bn_exact`, now one power of s per monomial):

1. With ``p'(z) = Σ_a d_a z^a`` (``d_a = (a+1) c_{a+1}``) and ``z^a = y^a s^{−a}``, every entry is
   a sum of ``E[s^{−m} g(y)]`` with ``g`` a monomial in ``y_i, y_j`` (times ``(Ay)_j`` or ``yᵀAy``,
   ``A = MΘM``). Expanding ``s⁻² D P A P D`` (``D = diag p'(z)``) as in ``bn_exact`` step 1:

       K_ij   = Σ_ab c_a c_b E[s^{−(a+b)} y_i^a y_j^b],           mean_i = Σ_a c_a E[s^{−a} y_i^a],
       JTJ_ij = A_ij E1_ij − (X_ij + X_ji)/T + Y_ij/T²,
       E1_ij  = Σ_ab d_a d_b E[s^{−(a+b+2)} y_i^a y_j^b],
       X_ij   = Σ_ab d_a d_b E[s^{−(a+b+4)} y_i^{a+1} y_j^b (Ay)_j],
       Y_ij   = Σ_ab d_a d_b E[s^{−(a+b+6)} y_i^{a+1} y_j^{b+1} yᵀAy],
       Gγ_ij  = Σ_ab d_a d_b E[s^{−(a+b+2)} y_i^{a+1} y_j^{b+1}],
       Gβ_ij  = Σ_ab d_a d_b E[s^{−(a+b)} y_i^a y_j^b].

2. *Laplace integral* (``bn_exact`` step 2): ``s^{−m} = Γ(m/2)⁻¹ ∫_0^∞ t^{m/2−1} e^{−tε}
   e^{−t‖y‖²/T} dt`` for m ≥ 1 (the m = 0 terms are the constants ``c_0``, ``c_0²``, ``d_0²``),
   and tilting N(0, S) by ``e^{−t‖y‖²/T}`` gives ``d(t) = det(I + 2tS/T)^{−1/2}`` times an
   expectation under ``N(0, C_t)``, ``C_t = S(I + 2tS/T)⁻¹``. A monomial of degree D has
   ``E_{C_t}[·] = t^{−D/2} E_{C̃_t}[·]`` with ``C̃_t = t C_t`` (eigenvalues ``tλ/(1 + 2tλ/T) ≤ T/2``,
   bounded at every t), so each term is ``∫ t^{(m−D)/2 − 1} e^{−tε} d(t) E_{C̃_t}[g] dt/Γ(m/2)``:
   ``t⁻¹`` for K, mean, Gγ and Gβ (m = D) and ``t⁰`` for E1, X, Y (m = D + 2).

3. *Inner expectations*, bivariate Gaussian moments under ``C̃ = C̃_t``: the table
   ``μ_{αβ} = E[y_i^α y_j^β]`` (all i, j at once) by Gaussian integration by parts,
   ``μ_{α+1,β} = α C̃_ii μ_{α−1,β} + β C̃_ij μ_{α,β−1}``; the ``(Ay)_j`` and ``yᵀAy`` factors by
   Stein's lemma once and twice (``bn_exact`` step 3, ``R = A C̃``, ``B = C̃ A C̃``):

       E[y_i^α y_j^β (Ay)_j] = R_ji α μ_{α−1,β} + R_jj β μ_{α,β−1},
       E[y_i^α y_j^β yᵀAy]   = tr(AC̃) μ_{αβ} + B_ii α(α−1) μ_{α−2,β} + 2 B_ij αβ μ_{α−1,β−1}
                               + B_jj β(β−1) μ_{α,β−2}.

   For i = j the same formulas hold (the bivariate table at ``C̃_ij = C̃_ii`` is the univariate
   one, and the partial derivatives add up to the total one), so one vectorised expression
   serves every entry.

4. *Quadrature in t*: ``bn_exact``'s exp-sinh substitution and nested trapezoid rules; the stated
   error is the difference of the last two rules plus a rounding term from the size of the summed
   terms (the monomial sums cancel: ``Σ_ab |c_a c_b| E|z|^{a+b}`` bounds what is summed).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from normfield.core.activations import Activation
from normfield.errors import NormfieldError
from normfield.gram.meanfield import _center
from normfield.infinite.bn_exact import _MAX_LEVEL, _exp_sinh_nodes

__all__ = ["bn_polynomial", "hermite_fit", "clean_coefficients", "POLY_DEGREE"]

#: Degree of the polynomial control of σ(BN(h)). Measured on the first BN → tanh step of a BN-MLP at
#: T = 32 (2¹⁵ points per replicate): the stated NNGP/NTK errors fall 22×/10× at degree 13, 32×/14× at
#: 15 (the exact part: 95 quadrature nodes, 0.08 s); degree 17 needs 183–1459 nodes for the same rule.
POLY_DEGREE = 15
_U = np.finfo(np.float64).eps
_PRUNE = 1e-22
_CHUNK = 16


def hermite_fit(act: Activation, degree: int = POLY_DEGREE) -> np.ndarray | None:
    """Monomial coefficients ``c_0 … c_n`` of σ's Hermite projection under N(0, 1) (degree n).

    ``p = Σ_a (E[σ(g) He_a(g)]/a!) He_a`` (probabilists' Hermite polynomials, 160-node Gauss–Hermite
    quadrature): the least-squares polynomial of σ for a unit Gaussian argument, which batch norm's
    output is to ``O(T^{-1/2})``. ``None`` where σ is not finite on the nodes.
    """
    from numpy.polynomial import hermite_e as He

    g, w = He.hermegauss(160)
    w = w / math.sqrt(2.0 * math.pi)
    if act.np_fn is not None:
        f = np.asarray(act.np_fn(g), dtype=np.float64)
    else:
        import torch

        f = act.fn(torch.as_tensor(g, dtype=torch.float64)).numpy()
    if not np.all(np.isfinite(f)):
        return None
    coef = np.array([np.sum(w * f * He.hermeval(g, np.eye(degree + 1)[a])) / math.factorial(a)
                     for a in range(degree + 1)])
    return He.herme2poly(coef)


def clean_coefficients(coef: Any) -> np.ndarray:
    """``coef`` as float64 with entries below 1e-14 of the largest set to 0 (e.g. the even part of an
    odd σ's fit, rounding only), so that the same polynomial is integrated exactly and sampled."""
    c = np.asarray(coef, dtype=np.float64).copy()
    c[np.abs(c) <= 1e-14 * np.abs(c).max()] = 0.0
    return c


def _table(C: np.ndarray, vi: np.ndarray, vj: np.ndarray, n: int) -> np.ndarray:
    """``μ[α, β] = E[y_i^α y_j^β]`` for α, β ≤ n under N(0, C̃), shape (n+1, n+1, N, P), for the P
    pairs (i ≤ j) given by their ``C̃_ij`` (N, P), ``C̃_ii`` and ``C̃_jj`` (step 3's recursion; odd
    total degrees are zero)."""
    mu = np.zeros((n + 1, n + 1) + C.shape)
    mu[0, 0] = 1.0
    for b in range(1, n):
        mu[0, b + 1] = b * vj * mu[0, b - 1]
    for a in range(n):
        for b in range(n + 1):
            if (a + 1 + b) % 2:
                continue
            out = mu[a + 1, b]
            if a >= 1:
                np.multiply(a * vi, mu[a - 1, b], out=out)
            if b >= 1:
                out += b * C * mu[a, b - 1]
    return mu


def _weights(c: np.ndarray, d: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The coefficient matrices W[name][α, β] of step 1 against the moment table μ[α, β]
    (``g(m) = 1/Γ(m/2)``, the Laplace weight; ``a, b`` index ``c`` or ``d``)."""
    n = len(c) - 1
    g = np.array([0.0] + [1.0 / math.gamma(0.5 * m) for m in range(1, 2 * n + 8)])
    names = ["K", "Kabs", "mean", "E1", "Gg", "Gb", "S1", "S2", "S1t", "S2t", "Y1", "Y2", "Y3", "Y4"]
    W = {k: np.zeros((n + 1, n + 1)) for k in names}
    for a in range(n + 1):
        for b in range(n + 1):
            if a + b and (a + b) % 2 == 0:
                W["K"][a, b] = c[a] * c[b] * g[a + b]
        if a and a % 2 == 0:
            W["mean"][a, 0] = c[a] * g[a]
    W["Kabs"] = np.abs(W["K"])
    for a in range(len(d)):
        for b in range(len(d)):
            w = d[a] * d[b]
            if not w or (a + b) % 2:
                continue
            W["E1"][a, b] += w * g[a + b + 2]
            W["Gg"][a + 1, b + 1] += w * g[a + b + 2]
            if a + b:
                W["Gb"][a, b] += w * g[a + b]
            W["S1"][a, b] += (a + 1) * w * g[a + b + 4]
            if b:
                W["S2"][a + 1, b - 1] += b * w * g[a + b + 4]
            W["Y1"][a + 1, b + 1] += w * g[a + b + 6]
            if a:
                W["Y2"][a - 1, b + 1] += (a + 1) * a * w * g[a + b + 6]
            W["Y3"][a, b] += (a + 1) * (b + 1) * w * g[a + b + 6]
            if b:
                W["Y4"][a + 1, b - 1] += (b + 1) * b * w * g[a + b + 6]
    W["S1t"], W["S2t"] = W["S1"].T.copy(), W["S2"].T.copy()
    return names, np.stack([W[k] for k in names])


def _node_sums(t, om, lam, U, At, Wall, names, eps, ntk):
    """Σ over the nodes of weight × node values of step 1, on the pairs i ≤ j (keys K, Kabs, mean,
    E1, Gg, Gb, Xij, Xji, Y; each (P,), mean (T,))."""
    T = U.shape[0]
    n = Wall.shape[1] - 1
    N = t.size
    iu, ju = np.triu_indices(T)
    x = 2.0 * t[:, None] * lam[None, :] / T
    ct = t[:, None] * lam[None, :] / (1.0 + x)                      # eigenvalues of C̃_t
    base = om * np.exp(-t * eps - 0.5 * np.log1p(x).sum(axis=1))
    bt = base / t
    Uc = U[None, :, :] * ct[:, None, :]
    C = (Uc.reshape(N * T, T) @ U.T).reshape(N, T, T)
    v = np.einsum("nii->ni", C)
    mu = _table(C[:, iu, ju], v[:, iu], v[:, ju], n)
    rows = slice(None) if ntk else slice(0, 3)
    Wr = Wall[rows].reshape(-1, (n + 1) ** 2)
    used = np.flatnonzero(np.abs(Wr).sum(axis=0))
    flat = mu.reshape((n + 1) ** 2, -1)[used]
    res = (Wr[:, used] @ flat).reshape(-1, N, iu.size)
    ix = {k: i for i, k in enumerate(names[rows])}
    kabs = ix["Kabs"]
    res[kabs] = (np.abs(Wr[kabs, used]) @ np.abs(flat)).reshape(N, iu.size)
    diag = np.flatnonzero(iu == ju)
    out = {"K": bt @ res[ix["K"]], "Kabs": float(np.abs(bt) @ res[kabs].max(axis=1)),
           "mean": bt @ res[ix["mean"]][:, diag]}
    if not ntk:
        return out
    R = (((U @ At)[None, :, :] * ct[:, None, :]).reshape(N * T, T) @ U.T).reshape(N, T, T)   # A C̃
    B = (((Uc.reshape(N * T, T) @ At).reshape(N, T, T) * ct[:, None, :]).reshape(N * T, T) @ U.T).reshape(N, T, T)
    trAC = ct @ np.diag(At)
    Rd, Bd = np.einsum("nii->ni", R), np.einsum("nii->ni", B)
    out["E1"] = base @ res[ix["E1"]]
    out["Gg"] = bt @ res[ix["Gg"]]
    out["Gb"] = bt @ res[ix["Gb"]]
    out["Xij"] = base @ (R[:, ju, iu] * res[ix["S1"]] + Rd[:, ju] * res[ix["S2"]])
    out["Xji"] = base @ (R[:, iu, ju] * res[ix["S1t"]] + Rd[:, iu] * res[ix["S2t"]])
    out["Y"] = base @ (trAC[:, None] * res[ix["Y1"]] + Bd[:, iu] * res[ix["Y2"]] + 2.0 * B[:, iu, ju] * res[ix["Y3"]]
                       + Bd[:, ju] * res[ix["Y4"]])
    return out


def _full(p: np.ndarray, T: int, pt: np.ndarray | None = None) -> np.ndarray:
    """(T, T) from values on the pairs i ≤ j (``pt``: the values at (j, i), default symmetric)."""
    iu, ju = np.triu_indices(T)
    out = np.zeros((T, T))
    out[ju, iu] = p if pt is None else pt
    out[iu, ju] = p
    return out


def _assemble(S: dict, h: float, A: np.ndarray, c: np.ndarray, d: np.ndarray, T: int, ntk: bool) -> dict:
    out = {"K": _full(h * S["K"], T) + c[0] ** 2, "mean": h * S["mean"] + c[0]}
    if ntk:
        X = _full(h * S["Xij"], T, h * S["Xji"])
        JTJ = A * _full(h * S["E1"], T) - (X + X.T) / T + _full(h * S["Y"], T) / T**2
        out["JTJ"] = 0.5 * (JTJ + JTJ.T)
        out["Gg"] = _full(h * S["Gg"], T)
        out["Gb"] = _full(h * S["Gb"], T) + (d[0] ** 2 if len(d) else 0.0)
    return out


def bn_polynomial(Sigma: Any, Theta: Any, coef: Any, *, eps: float = 1e-5, ntk: bool = True,
                  rtol: float = 1e-10) -> dict[str, Any]:
    """Exact moments of ``p(BN(h))`` for a polynomial ``p`` (module docstring).

    Args:
        Sigma: (T, T) PSD ``E[h hᵀ]`` (T >= 2, rank(MΣM) >= 1).
        Theta: (T, T) PSD per-unit NTK of ``h`` (ignored when ``ntk=False``).
        coef: monomial coefficients ``c_0 … c_n`` of ``p``.
        eps: batch norm's ε >= 0.
        ntk: also compute ``JTJ``, ``Gg`` and ``Gb``.
        rtol: nested rules refine until every quantity changes by at most ``rtol`` × its largest entry.

    Returns:
        dict with ``K`` (T, T), ``mean`` (T,), and with ``ntk``: ``JTJ``, ``Gg`` (``E[(p'(z)z)(p'(z)z)ᵀ]``),
        ``Gb`` (``E[p'(z)p'(z)ᵀ]``), all (T, T); ``error`` (stated absolute error, max over entries)
        and ``nodes``.

    Raises:
        NormfieldError: ``MΣM = 0`` (every sample equal: nothing for batch norm to normalise).
    """
    Sigma = np.asarray(Sigma, dtype=np.float64)
    T = Sigma.shape[0]
    c = clean_coefficients(coef)
    d = np.polynomial.polynomial.polyder(c) if len(c) > 1 else np.zeros(0)
    S = _center(Sigma)
    lam, U = np.linalg.eigh(0.5 * (S + S.T))
    top = max(float(lam[-1]), 0.0)
    lam = np.where(lam > 1e-13 * top, lam, 0.0)
    rank = int(np.count_nonzero(lam))
    if rank == 0:
        raise NormfieldError("Sigma has no variance orthogonal to the all-ones vector (all samples equal): "
                             "batch norm divides by its ε alone", argument="Sigma")
    A = _center(np.asarray(Theta, dtype=np.float64)) if ntk else np.zeros((T, T))
    At = U.T @ A @ U
    At = 0.5 * (At + At.T)
    tau0 = 2.0 * math.sqrt(T / (2.0 * lam.sum() / max(rank, 1)) / (lam.sum() / T + eps))
    n = len(c) - 1
    # a-priori size of a node's terms: Σ_D w_D max(C̃)^{D/2}, w_D = Σ_{a+b=D} |c_a c_b| (D−1)!!/Γ(D/2)
    dfact = [1.0] + [float(np.prod(np.arange(D - 1, 0, -2))) if D % 2 == 0 else 0.0 for D in range(1, 2 * n + 8)]
    cc = np.abs(np.concatenate([c, np.zeros(4)]))
    wD = np.array([sum(cc[a] * cc[D - a] for a in range(0, min(D, n) + 1) if D - a <= n + 3) * dfact[D]
                   for D in range(2 * n + 8)])
    names, Wall = _weights(c, d)
    keys = ("K", "mean", "E1", "Xij", "Xji", "Y", "Gg", "Gb") if ntk else ("K", "mean")
    sums: dict[str, Any] = {k: 0.0 for k in keys}
    prev = cur = None
    ref = None
    nodes = 0
    err = math.inf
    mag = 0.0
    for level in range(_MAX_LEVEL + 1):
        t, om, h = _exp_sinh_nodes(level, tau0)
        x = 2.0 * t[:, None] * lam[None, :] / T
        base = om * np.exp(-t * eps - 0.5 * np.log1p(x).sum(axis=1))
        cmax = (t[:, None] * lam[None, :] / (1.0 + x)).max(axis=1)
        env = base * (1.0 + 1.0 / t) * (np.power.outer(np.maximum(cmax, 1e-300), 0.5 * np.arange(2 * n + 8)) @ wD)
        if ref is None:
            ref = float(env.max())
        keep = env > _PRUNE * ref
        t, om = t[keep], om[keep]
        nodes += t.size
        for a in range(0, t.size, _CHUNK):
            part = _node_sums(t[a:a + _CHUNK], om[a:a + _CHUNK], lam, U, At, Wall, names, eps, ntk)
            mag += part.pop("Kabs") * h
            for k in keys:
                sums[k] = sums[k] + part[k]
        cur = _assemble(sums, h, A, c, d, T, ntk)
        if prev is not None:
            diffs = [float(np.abs(cur[k] - prev[k]).max()) for k in cur]
            err = max(diffs)
            if all(dk <= rtol * max(float(np.abs(cur[k]).max()), 1e-300) for dk, k in zip(diffs, cur)):
                break
        prev = cur
    out = dict(cur)
    # rounding: the monomial sums cancel; u × the sum of the absolute terms (of K, the largest
    # relative to its result), times T + 4 for the NTK's matrix products, times 8 for safety
    scale = max(1.0, max(float(np.abs(cur[k]).max()) for k in cur) / max(float(np.abs(cur["K"]).max()), 1e-300))
    out["error"] = err + 8.0 * _U * (T + 4) * mag * scale
    out["nodes"] = nodes
    return out
