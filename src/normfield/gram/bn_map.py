"""The batch-norm mean-field map for any activation, with a stated error (Joudaki et al. 2023, eq. 3).

For a PSD ``G`` (n × n), ``S = M G M`` (``M = I − 11ᵀ/n``) and
``u = √n y/‖y‖``, ``y ~ N(0, S)``, the BN map is ``G' = E[σ(u) σ(u)ᵀ]``.

**Moments of u, exactly.** With ``1/‖y‖^{2p} = Γ(p)^{-1} ∫_0^∞ s^{p−1} e^{−s‖y‖²} ds`` and
the Gaussian tilt ``E[F(y) e^{−s‖y‖²}] = det(I + 2sS)^{−1/2} E_{N(0, S_s)}[F]``,
``S_s = S (I + 2sS)^{−1}``:

    E[u_i^a u_j^b] = n^p/Γ(p) ∫_0^∞ s^{p−1} det(I + 2sS)^{−1/2} E_{S_s}[y_i^a y_j^b] ds,   p = (a+b)/2,

a 1-D integral (exp-sinh rule, nested error estimate) of bivariate Gaussian
moments (Isserlis: ``E[X^a Y^b] = Σ_k C(a,k) C(b,k) k! c^k (a−k−1)!! v_1^{(a−k)/2}
(b−k−1)!! v_2^{(b−k)/2}`` over ``k ≡ a ≡ b mod 2``); odd ``a + b`` gives 0. This is
the route of the homogeneous case (:mod:`normfield.gram.meanfield`) applied to monomials.

**Any σ: polynomial part exact, remainder by Monte Carlo (a control variate).**
Each coordinate gets the least-squares polynomial ``h_i`` of degree ``K`` to σ
under ``N(0, v_i)``, ``v_i = n S_ii/tr S`` (the law of ``u_i`` to O(1/n)); then

    G'_ij = Σ_{a,b} c_{ia} c_{jb} E[u_i^a u_j^b]  +  E[σ(u_i)σ(u_j) − h_i(u_i)h_j(u_j)],

the first term exact (above), the second a randomised quasi-Monte Carlo mean
(32 independently scrambled Sobol' sequences of ``h ~ N(0, G)``) whose summand
is small where ``u`` lives. Measured at n = 10 (tanh, 65,536 points): Frobenius
standard error 1.0e-2 for plain Monte Carlo, 1.3e-3 with the polynomial
alone, 3e-4 with both. The standard error comes from the 32 independent
sequences; the points double until the stated error ``3·‖se‖_F`` (plus the
quadrature estimate) is at most ``tol`` (default 1e-3) or a cap is reached.
The estimate is unbiased for every ``K``; the polynomial only lowers the variance.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from normfield.core.activations import Activation
from normfield.core.kernels import kernel
from normfield.core.seeding import derive_seed
from normfield.core.normalize import center
from normfield.core.validation import check_memory

__all__ = ["bn_map_cv", "bn_moments", "bn_relu_moments", "kink", "DEGREE", "TOL", "MAX_SAMPLES"]

#: polynomial degree of the control variate
DEGREE = 8
#: default stated Frobenius error of :func:`bn_map_cv`
TOL = 1e-3
#: default cap on the quasi-Monte Carlo points of :func:`bn_map_cv`
MAX_SAMPLES = 2**22
_BATCHES = 32
_START = 2**15


@lru_cache(maxsize=4)
def _expsinh(h: float, tmax: float = 5.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """exp-sinh nodes for ∫_0^∞ F(s) ds: s = exp(π/2 sinh τ), weights fine/coarse."""
    k1 = math.ceil(tmax / h)
    k = np.arange(-k1, k1 + 1)
    t = k * h
    s = np.exp(0.5 * math.pi * np.sinh(t))
    w = h * 0.5 * math.pi * np.cosh(t) * s
    wc = np.where(k % 2 == 0, 2.0 * w, 0.0)
    return s, w, wc


def _double_factorial_odd(m: np.ndarray) -> np.ndarray:
    """(m − 1)!! for even m >= 0 (= E[Z^m]), 0 for odd m."""
    out = np.zeros(m.shape)
    for i, mm in np.ndenumerate(m):
        if mm % 2 == 0:
            out[i] = float(np.prod(np.arange(mm - 1, 0, -2))) if mm > 0 else 1.0
    return out


def _bivariate_moments(v1: np.ndarray, v2: np.ndarray, c: np.ndarray, K: int) -> np.ndarray:
    """``E[X^a Y^b]`` for ``(X, Y) ~ N(0, [[v1, c], [c, v2]])``, ``a, b <= K``: shape ``(..., K+1, K+1)``."""
    out = np.zeros(v1.shape + (K + 1, K + 1))
    ar = np.arange(2 * K + 1)
    dfo = _double_factorial_odd(ar)
    sv1 = np.sqrt(np.clip(v1, 0.0, None))
    sv2 = np.sqrt(np.clip(v2, 0.0, None))
    p1 = np.stack([sv1**e for e in range(K + 1)], axis=-1)
    p2 = np.stack([sv2**e for e in range(K + 1)], axis=-1)
    pc = np.stack([c**e for e in range(K + 1)], axis=-1)
    for a in range(K + 1):
        for b in range(K + 1):
            if (a + b) % 2:
                continue
            acc = np.zeros(v1.shape)
            for k in range(a % 2, min(a, b) + 1, 2):
                coef = math.comb(a, k) * math.comb(b, k) * math.factorial(k) * dfo[a - k] * dfo[b - k]
                acc = acc + coef * pc[..., k] * p1[..., a - k] * p2[..., b - k]
            out[..., a, b] = acc
    return out


_ZPLUS = [2.0 ** (k / 2 - 1) * math.gamma((k + 1) / 2) / math.sqrt(math.pi) for k in range(64)]  # E[Z_+^k]


def _relu_moments(v1: np.ndarray, v2: np.ndarray, c: np.ndarray, K: int) -> np.ndarray:
    """``E[X_+ Y^b]`` for ``(X, Y) ~ N(0, [[v1, c], [c, v2]])``, ``b <= K``: shape ``(..., K+1)``.

    ``Y = (c/v1) X + γ Z`` with ``γ² = v2 − c²/v1`` and Z independent, so
    ``E[X_+ Y^b] = Σ_m C(b,m) (c/√v1)^m γ^{b−m} √v1 E[Z_+^{1+m}] E[Z^{b−m}]``.
    """
    sv1 = np.sqrt(np.clip(v1, 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(sv1 > 0, c / np.where(sv1 > 0, sv1, 1.0), 0.0)  # c/√v1, |.| <= √v2
    g = np.sqrt(np.clip(v2 - rho * rho, 0.0, None))
    dfo = _double_factorial_odd(np.arange(K + 1))
    out = np.zeros(v1.shape + (K + 1,))
    for b in range(K + 1):
        acc = np.zeros(v1.shape)
        for m in range(b + 1):
            if (b - m) % 2:
                continue
            acc = acc + math.comb(b, m) * rho**m * g ** (b - m) * _ZPLUS[1 + m] * dfo[b - m]
        out[..., b] = acc * sv1
    return out


def _tilted(S: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """exp-sinh nodes ``s`` (fine/coarse weights), ``det(I + 2sS)^{-1/2}`` and ``s·S_s`` at each node."""
    lam, U = np.linalg.eigh(S)
    lam = np.clip(lam, 0.0, None)
    scale = lam.sum() / max(int(np.sum(lam > 1e-14 * lam.max())), 1)
    s, w, wc = _expsinh(1.0 / 16.0)
    s = s / (2.0 * scale)
    w = w / (2.0 * scale)
    wc = wc / (2.0 * scale)
    d = s[:, None] * lam[None, :] / (1.0 + 2.0 * s[:, None] * lam[None, :])  # (N, n)
    sSs = np.einsum("ik,sk,jk->sij", U, d, U)
    wdet = np.exp(-0.5 * np.sum(np.log1p(2.0 * s[:, None] * lam[None, :]), axis=1))
    return s, w, wc, wdet, sSs


def _s_integral(n: int, p: float, s, w, wc, wdet, E: np.ndarray) -> tuple[np.ndarray, float]:
    """``n^p/Γ(p) ∫ s^{p−1} det(I+2sS)^{-1/2} E_{S_s}[·] ds`` from ``E = E_{s S_s}[·] = s^p E_{S_s}[·]``
    (axis 0 over nodes): fine value and |fine − coarse|."""
    f = (n**p / math.gamma(p)) * (wdet / s)
    fine = np.tensordot(w * f, E, axes=(0, 0))
    coarse = np.tensordot(wc * f, E, axes=(0, 0))
    return fine, float(np.abs(fine - coarse).max()) if fine.size else 0.0


def bn_relu_moments(S: np.ndarray, K: int = DEGREE) -> tuple[np.ndarray, float]:
    """``E[relu(u_i) u_j^b]`` for all ``i, j`` and ``b <= K``: shape ``(n, n, K+1)``, with an error estimate."""
    n = S.shape[0]
    s, w, wc, wdet, sSs = _tilted(S)
    check_memory("G", 8.0 * s.size * n * n * (K + 1) * 2, hint="use method='mc' for very large batches")
    var = np.einsum("sii->si", sSs).clip(min=0.0)
    v1 = np.broadcast_to(var[:, :, None], sSs.shape)
    v2 = np.broadcast_to(var[:, None, :], sSs.shape)
    lim = np.sqrt(v1 * v2)
    E = _relu_moments(v1, v2, np.clip(sSs, -lim, lim), K)  # (N, n, n, K+1)
    out = np.empty((n, n, K + 1))
    err = 0.0
    for b in range(K + 1):
        out[:, :, b], e = _s_integral(n, 0.5 * (1 + b), s, w, wc, wdet, E[..., b])
        err = max(err, e)
    return out, err


def bn_moments(S: np.ndarray, K: int = DEGREE) -> tuple[np.ndarray, float]:
    """``E[u_i^a u_j^b]`` for all ``i <= j`` and ``a, b <= K`` (module docstring), with an error estimate.

    Args:
        S: (n, n) centred PSD matrix (``M G M``), not zero.
        K: largest power.

    Returns:
        ``(moments, error)``: moments of shape ``(P, K+1, K+1)`` over the pairs of
        ``np.triu_indices(n)``, and the largest ``|fine − coarse|`` of the s-integrals.
    """
    n = S.shape[0]
    s, w, wc, wdet, sSs = _tilted(S)
    iu, ju = np.triu_indices(n)
    check_memory("G", 8.0 * s.size * iu.size * (K + 1) ** 2 * 2, hint="use method='mc' for very large batches")
    var = np.einsum("sii->si", sSs).clip(min=0.0)
    v1, v2 = var[:, iu], var[:, ju]
    lim = np.sqrt(v1 * v2)
    # moments of √s·y under N(0, S_s) (bounded at every node: s S_s → I/2 on the range of S)
    E = _bivariate_moments(v1, v2, np.clip(sSs[:, iu, ju], -lim, lim), K)  # (N, P, K+1, K+1)
    out = np.zeros((iu.size, K + 1, K + 1))
    err = 0.0
    for ia in range(K + 1):
        for ib in range(K + 1):
            if (ia + ib) % 2:
                continue
            if ia + ib == 0:
                out[:, ia, ib] = 1.0
                continue
            out[:, ia, ib], e = _s_integral(n, 0.5 * (ia + ib), s, w, wc, wdet, E[:, :, ia, ib])
            err = max(err, e)
    return out, err


def kink(act: Activation) -> float:
    """``σ'(0⁺) − σ'(0⁻)``: the relu coefficient that makes ``σ − kink·relu`` C¹ at 0 (selu: λ(1 − α))."""
    d = act.numpy_pair()[1](np.array([1e-300, -1e-300]))
    k = float(d[0] - d[1])
    return k if abs(k) > 1e-12 else 0.0


def _fit_polys(f, v: np.ndarray, K: int) -> np.ndarray:
    """Least-squares polynomial coefficients ``(n, K+1)`` (power basis) of ``f`` under ``N(0, v_i)``."""
    z, wz = np.polynomial.hermite_e.hermegauss(80)
    wz = wz / wz.sum()
    out = np.empty((v.size, K + 1))
    for i, vi in enumerate(v):
        x = math.sqrt(max(vi, 1e-300)) * z
        A = np.vander(x, K + 1, increasing=True) * np.sqrt(wz)[:, None]
        coef, *_ = np.linalg.lstsq(A, f(x) * np.sqrt(wz), rcond=None)
        out[i] = coef
    return out


def _bn_relu_relu(S: np.ndarray) -> tuple[np.ndarray, float]:
    """``E[relu(u_i) relu(u_j)]`` (p = 1: ``n ∫ det^{-1/2} E_{S_s}[relu relu] ds``, S.70 kernel)."""
    n = S.shape[0]
    s, w, wc, wdet, sSs = _tilted(S)
    var = np.einsum("sii->si", sSs).clip(min=0.0)
    v1 = np.broadcast_to(var[:, :, None], sSs.shape)
    v2 = np.broadcast_to(var[:, None, :], sSs.shape)
    lim = np.sqrt(v1 * v2)
    E = np.asarray(kernel("relu", v1, v2, np.clip(sSs, -lim, lim), method="closed"))
    out, err = _s_integral(n, 1.0, s, w, wc, wdet, E)
    return 0.5 * (out + out.T), err


def bn_map_cv(
    act: Activation,
    G: np.ndarray,
    *,
    tol: float = TOL,
    seed: int = 0,
    max_samples: int = MAX_SAMPLES,
    degree: int = DEGREE,
    device: str = "cpu",
) -> tuple[np.ndarray, float, int]:
    """BN mean-field map ``E[σ(u)σ(u)ᵀ]`` for any σ (module docstring), with its stated error.

    Args:
        act: the activation.
        G: (n, n) PSD matrix with variance orthogonal to ``1_n`` (checked by the caller).
        tol: target of the stated Frobenius error.
        seed: Monte Carlo seed (same seed, same numbers).
        max_samples: cap on Monte Carlo draws.
        degree: polynomial degree of the control variate.
        device: where the draws run.

    Returns:
        ``(G', error, samples)``: the (n, n) map, the stated error (``3‖se‖_F`` of
        the Monte Carlo remainder plus the quadrature estimate of the exact part),
        and the number of draws used.
    """
    n = G.shape[0]
    Gc = G - G.mean(axis=0, keepdims=True)
    Gc = Gc - Gc.mean(axis=1, keepdims=True)
    S = 0.5 * (Gc + Gc.T)  # M G M
    tr = float(np.trace(S))
    v = n * np.clip(np.diag(S), 0.0, None) / tr
    K = int(degree)
    f = act.numpy_pair()[0]
    kk = kink(act)
    coef = _fit_polys((lambda x: f(x) - kk * np.maximum(x, 0.0)) if kk else f, v, K)  # (n, K+1)
    mom, qerr = bn_moments(S, K)
    iu, ju = np.triu_indices(n)
    poly = np.einsum("pa,pab,pb->p", coef[iu], mom, coef[ju])
    exact = np.empty((n, n))
    exact[iu, ju] = poly
    exact[ju, iu] = poly
    scale = float(np.abs(coef).sum(axis=1).max()) + abs(kk)
    if kk:  # control (kk·relu + h)(kk·relu + h)ᵀ: add kk² E[r r] + kk (E[r_i h_j] + E[h_i r_j])
        rr, e1 = _bn_relu_relu(S)
        rm, e2 = bn_relu_moments(S, K)  # (n, n, K+1): E[relu(u_i) u_j^b]
        rh = np.einsum("ijb,jb->ij", rm, coef)
        exact = exact + kk * kk * rr + kk * (rh + rh.T)
        qerr = max(qerr, e1, e2)

    lam, U = np.linalg.eigh(G)
    Lt = torch.as_tensor(U * np.sqrt(np.clip(lam, 0.0, None)), dtype=torch.float64, device=device)
    ct = torch.as_tensor(coef, dtype=torch.float64, device=device)
    # remainder R = σ(u)σ(u)ᵀ − h(u)h(u)ᵀ by randomised quasi-Monte Carlo: _BATCHES independently
    # scrambled Sobol' sequences (their means give the standard error); every round doubles the
    # points of each sequence (powers of 2 keep the nets balanced)
    engines = [torch.quasirandom.SobolEngine(n, scramble=True, seed=derive_seed(int(seed), bi))
               for bi in range(_BATCHES)]
    sums = np.zeros((_BATCHES, n, n))
    per, add = 0, max(_START // _BATCHES, 1)
    while True:
        for bi, eng in enumerate(engines):
            q = eng.draw(add, dtype=torch.float64).clamp_(1e-17, 1.0 - 1e-17)
            z = torch.special.ndtri(q).to(device)
            h = z @ Lt.T
            y = center(h, 1)
            u = math.sqrt(n) * y / y.norm(dim=1, keepdim=True)
            x = act(u).to(torch.float64)
            hp = ct[:, K].expand_as(u).clone()
            for k in range(K - 1, -1, -1):
                hp = hp * u + ct[:, k]
            if kk:
                hp = hp + kk * torch.relu(u)
            sums[bi] += (x.T @ x - hp.T @ hp).cpu().numpy()
        per += add
        grp = sums / per
        mean = grp.mean(0)
        se = grp.std(0, ddof=1) / math.sqrt(_BATCHES)
        err = 3.0 * float(np.linalg.norm(se)) + n * qerr * scale * scale
        if err <= tol or 2 * per * _BATCHES > max_samples:
            break
        add = per
    total = per * _BATCHES
    out = exact + mean
    return 0.5 * (out + out.T), err, total
