r"""Exact infinite-width train-mode batch norm, NNGP and NTK, for positively homogeneous σ.

One unit of a layer sees its pre-activation across the batch, ``h ~ N(0, Σ)`` in ``R^T``, with
per-unit NTK ``Θ`` (T×T PSD). Train-mode batch norm (γ = 1, β = 0) followed by σ gives

    y = M h  (M = I − 11ᵀ/T),   s² = ‖y‖²/T + ε,   z = y/s,   x = σ(z),
    J = ∂x/∂h = diag(σ'(z)) (1/s) P M,   P = I − y yᵀ/(T s²),

and :func:`bn_homogeneous` returns ``K = E[x xᵀ]``, ``mean = E[x]`` and ``JTJ = E[J Θ Jᵀ]``
(the NTK that BN-then-σ passes on), each with a stated quadrature error.

Derivation (the Laplace method of Yang et al. 2019, *A Mean Field Theory of Batch Normalization*,
ICLR, re-derived here and carried to ε > 0 and to the NTK):

1. *Homogeneity.* σ = α x + β relu(x) (``Activation.linear_parts``: relu (0, 1), leaky relu
   (a, 1 − a), identity (1, 0)) has σ(z) = σ(y)/s, σ'(z) = σ'(y), σ'(y_i) y_i = σ(y_i) and
   σ'' = β δ. With ``y ~ N(0, S)``, ``S = M Σ M``, ``D = diag(σ'(y))``, ``A = M Θ M``:

       K = E[σ(y)σ(y)ᵀ s⁻²],   mean = E[σ(y) s⁻¹],
       J Θ Jᵀ = s⁻² D P A P D = s⁻² D A D − T⁻¹ s⁻⁴ D (y yᵀA + A y yᵀ) D + T⁻² s⁻⁶ (yᵀAy) D y yᵀ D,

   so, using ``D y = σ(y)``, entry (i, j) of JTJ is

       E[σ'_i σ'_j s⁻²] A_ij − T⁻¹ E[s⁻⁴ (σ_i σ'_j (Ay)_j + σ'_i σ_j (Ay)_i)] + T⁻² E[s⁻⁶ σ_i σ_j yᵀAy].

2. *Laplace integral.* ``s^{−2p} = Γ(p)⁻¹ ∫_0^∞ t^{p−1} e^{−tε} e^{−t‖y‖²/T} dt`` (p = ½, 1, 2, 3).
   Tilting N(0, S) by ``e^{−t‖y‖²/T}`` gives the factor ``d(t) = det(I + 2tS/T)^{−1/2}`` times an
   expectation under ``N(0, C_t)``, ``C_t = S (I + 2tS/T)⁻¹``. In the eigenbasis ``S = U diag(λ) Uᵀ``
   (the constant vector is a zero-eigenvalue direction, harmless: ``λ = 0`` gives factor 1 and
   variance 0), ``C_t = U diag(λ/(1 + 2tλ/T)) Uᵀ``. So every quantity is ``∫_0^∞ w_p(t) E_{C_t}[…] dt``
   with ``w_p(t) = t^{p−1} e^{−tε} d(t)/Γ(p)``.

3. *Inner expectations under N(0, C)*, all bivariate closed forms (Cho & Saul 2009; Karakida et
   al. 2019, S.70; :mod:`normfield.core.closed_forms`), ``ρ_ij = C_ij/√(C_ii C_jj)``:

       Kσ_ij = E[σ_i σ_j]   = (α² + αβ) C_ij + β² √(C_ii C_jj) J(ρ_ij)/2   (J = arc-cosine kernel),
       E'_ij = E[σ'_i σ'_j] = α² + αβ + β² (π − arccos ρ_ij)/(2π),
       F_ij  = E[σ_i σ''_j] = β² √(C_ii C_jj − C_ij²)/(2π C_jj)   (F_ii = 0),
       E[σ_i]              = β √(C_ii/(2π)).

   F is ``β p_j(0) E[σ(y_i) | y_j = 0]``: given y_j = 0, y_i is centred with variance
   ``C_ii − C_ij²/C_jj``, and only β relu contributes to the conditional mean. The terms with y
   factors are reduced by Gaussian integration by parts (Stein: ``E[y_k g] = Σ_m C_km E[∂_m g]``,
   valid for singular C; applied twice, ``E[y_k y_l g] = C_kl E[g] + Σ_mn C_km C_ln E[∂_m∂_n g]``).
   With ``R = A C``, ``B = C A C``:

       Σ_k A_jk E[y_k σ_i σ'_j]     = R_ji E'_ij + R_jj F_ij                      (=: X_ij),
       Σ_kl A_kl E[y_k y_l σ_i σ_j] = tr(AC) Kσ_ij + B_ii F_ji + B_jj F_ij + 2 B_ij E'_ij.

   For i = j the same formulas hold (``(σ²)'' = 2σ'² + 2σσ''`` and σ(0) = 0 make ``F_ii = 0``;
   ``(σσ')' = σ'²``), so one vectorised expression serves every entry. Hence, with the node
   matrices above at ``C = C_t``,

       K    = ∫ w_1 Kσ dt,       mean = ∫ w_{1/2} β √(diag C/(2π)) dt,
       JTJ  = A ∘ ∫ w_1 E' dt − T⁻¹ ∫ w_2 (X + Xᵀ) dt
              + T⁻² ∫ w_3 (tr(AC) Kσ + Z + Zᵀ + 2 B ∘ E') dt,   Z_ij = F_ij B_jj.

   Per node this costs four (T×T)·(T×T) products (C, R, B in the eigenbasis), O(T³).

4. *Quadrature in t.* The exp-sinh substitution ``t = τ₀ exp(π/2 sinh u)`` turns each integral into
   a doubly-exponentially decaying one on the real line, on which the trapezoid rule converges
   geometrically in 1/h. Two t-scales meet: the weight ``e^{−tε} d(t)`` falls off at
   ``t ~ 1/E[s²]``, the kernels' argument ``C_t`` moves at ``t ~ T/(2λ̄)``; ``τ₀`` is twice their
   geometric mean (equal scales for small T; at T = 128 this cut the h = 1/4 error from 1e-5 to 1e-8).
   Nested rules h = 1/4, 1/8, …, 1/256 share their nodes; the stated error is ``|I_h − I_{2h}|``
   (max over entries), i.e. the coarser rule's error, which for a geometrically converging rule
   exceeds the finer one's by orders of magnitude (tested against finer rules), plus a rounding
   term ``8 u (T + 4) max|term|``. Nodes whose a-priori magnitude (from λ, ε and t alone) is below
   1e-20 of the largest are skipped. Pairs with |ρ| > 0.99 take their angle from unit-vector
   differences rather than ``arccos ρ`` (:func:`_sharpen_angles`), so repeated samples (ρ = 1) and
   T = 2 (ρ = −1) lose no accuracy to the √u sensitivity of arccos at ±1.

Finiteness: E[s⁻²] under ε = 0 is finite iff rank(S) ≥ 3, so the NTK of train-mode BN at ε = 0
diverges for T ≤ 3 (or rank(MΣM) ≤ 2); :func:`bn_homogeneous` refuses that case.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from normfield.core.activations import ActivationLike, get_activation
from normfield.core.validation import check_float, check_int, check_memory, check_psd
from normfield.errors import NormfieldError
from normfield.gram.meanfield import _center

__all__ = ["bn_homogeneous", "BNParts"]

_H0 = 1.0 / 4.0          # coarsest trapezoid step in u
_MAX_LEVEL = 6           # finest step _H0 / 2**6 = 1/256
_TAU_MAX = 5.0           # |u| ≤ 5: t spans exp(±116) τ₀
_PRUNE = 1e-20           # skip nodes whose a-priori magnitude is below this fraction of the largest
_CHUNK_BYTES = 2**22     # working set per chunk of nodes (≈ 12 arrays of N·T² floats; cache-sized is fastest)
_U = np.finfo(np.float64).eps


class BNParts(dict):
    """Extra output of :func:`bn_homogeneous` (``return_parts=True``), a dict with keys
    ``jtj_terms`` (the three (T,T) terms of step 3, in order), ``level`` (nested levels used),
    ``step`` (finest h), ``nodes`` (nodes evaluated), ``errors`` ({"K", "JTJ", "mean"}: nested
    error of each), ``rounding`` (the rounding part of the stated error)."""


def _level_nodes(level: int) -> tuple[np.ndarray, float]:
    """u-nodes new at ``level`` (all of level 0; the odd multiples of h after), and h."""
    h = _H0 / 2**level
    k1 = int(math.floor(_TAU_MAX / h))
    k = np.arange(-k1, k1 + 1)
    if level > 0:
        k = k[k % 2 != 0]
    return k * h, h


def _exp_sinh_nodes(level: int, tau0: float) -> tuple[np.ndarray, np.ndarray, float]:
    """The t-nodes new at ``level`` of the exp-sinh rule ``t = τ₀ exp(π/2 sinh u)`` (step 4), their
    weights ``dt/du`` and the step h in u."""
    u, h = _level_nodes(level)
    e = np.exp(0.5 * math.pi * np.sinh(u))
    return tau0 * e, tau0 * 0.5 * math.pi * np.cosh(u) * e, h


def _check(Sigma: Any, Theta: Any, activation: ActivationLike, eps: Any, ntk: bool):
    act = get_activation(activation)
    if act.linear_parts is None:
        raise NormfieldError(
            f"activation {act.label} is not positively homogeneous; the exact BN route takes relu, "
            "leaky_relu:SLOPE or identity (use the quasi-Monte Carlo route of normfield.infinite.expect)",
            argument="activation",
        )
    Sigma = check_psd("Sigma", Sigma)
    T = Sigma.shape[0]
    if T < 2:
        raise NormfieldError(f"Sigma must be at least 2x2 (batch norm over one sample is degenerate), got {T}x{T}",
                             argument="Sigma")
    eps = check_float("eps", eps, minimum=0.0)
    if ntk:
        if Theta is None:
            raise NormfieldError("Theta is required when ntk=True (pass the input's per-unit NTK, or ntk=False)",
                                 argument="Theta")
        Theta = check_psd("Theta", Theta)
        if Theta.shape != Sigma.shape:
            raise NormfieldError(f"Theta must have Sigma's shape {Sigma.shape}, got {Theta.shape}", argument="Theta")
    return act, Sigma, (Theta if ntk else None), T, eps


def _spectrum(Sigma: np.ndarray, T: int, act, eps: float, ntk: bool) -> tuple[np.ndarray, np.ndarray, int]:
    S = _center(Sigma)
    lam, U = np.linalg.eigh(S)
    top = max(float(lam[-1]), 0.0)
    if top <= 1e-14 * max(float(np.trace(Sigma)), 1e-300):
        raise NormfieldError("Sigma has no variance orthogonal to the all-ones vector (all samples equal): "
                             "batch norm divides by a zero standard deviation", argument="Sigma")
    lam = np.where(lam > 1e-13 * top, lam, 0.0)
    rank = int(np.count_nonzero(lam))
    var = (U * U) @ lam
    if act.linear_parts[1] != 0.0 and var.min() <= 1e-12 * var.max():
        raise NormfieldError(
            f"Sigma: sample {int(var.argmin())} has zero variance after centring (it always equals the batch "
            "mean), so it sits on the kink of the activation; perturb Sigma or use activation='identity'",
            argument="Sigma")
    if ntk and eps == 0.0 and rank <= 2:
        raise NormfieldError(
            f"eps=0 with rank(MΣM) = {rank} ≤ 2 (batch {T}): E[1/s²] diverges, so the train-mode BN NTK is "
            "infinite; pass eps > 0 (torch's default is 1e-5)", argument="eps")
    return lam, U, rank


def _sharpen_angles(rho: np.ndarray, theta: np.ndarray, sin: np.ndarray, U: np.ndarray, c: np.ndarray,
                    var: np.ndarray) -> None:
    """Recompute, in place, the angles of nearly collinear pairs (|ρ| > 0.99, e.g. repeated samples).

    ``arccos`` of a ρ rounded to ``u`` is off by ``√(2u)`` near ±1; instead, with the unit vectors
    ``n_i = (U_i ∘ √c)/√var_i`` (so ρ_ij = n_i·n_j), ``θ = 2 arcsin(‖n_i − n_j‖/2)`` for ρ > 0 and
    ``π − 2 arcsin(‖n_i + n_j‖/2)`` for ρ < 0, with the difference summed coordinate by coordinate
    (absolute accuracy ~u). Cost O(T) per such pair and node."""
    T = U.shape[0]
    near = np.abs(rho) > 0.99
    near[:, np.arange(T), np.arange(T)] = False
    n, i, j = np.nonzero(near)
    if n.size == 0:
        return
    for a in range(0, n.size, 4096):
        nn, ii, jj = n[a:a + 4096], i[a:a + 4096], j[a:a + 4096]
        sgn = np.sign(rho[nn, ii, jj])
        rc = np.sqrt(c[nn])
        vi = U[ii] * rc / np.sqrt(var[nn, ii])[:, None]
        vj = U[jj] * rc / np.sqrt(var[nn, jj])[:, None]
        half = 2.0 * np.arcsin(np.clip(0.5 * np.linalg.norm(vi - sgn[:, None] * vj, axis=1), 0.0, 1.0))
        th = np.where(sgn > 0, half, math.pi - half)
        theta[nn, ii, jj] = th
        sin[nn, ii, jj] = np.sin(half)
        rho[nn, ii, jj] = np.cos(th)


def _node_sums(t: np.ndarray, om: np.ndarray, lam: np.ndarray, U: np.ndarray, UA: np.ndarray,
               At: np.ndarray, ab: tuple[float, float], eps: float, ntk: bool) -> dict[str, np.ndarray]:
    """Σ over the given nodes of weight × node matrix, for every accumulated quantity (step 3)."""
    T = U.shape[0]
    al, be = ab
    N = t.size
    x = 2.0 * t[:, None] * lam[None, :] / T
    c = lam[None, :] / (1.0 + x)                                        # (N, T) eigenvalues of C_t
    base = om * np.exp(-t * eps - 0.5 * np.log1p(x).sum(axis=1))        # ω e^{−tε} d(t)
    var = np.clip(c @ (U * U).T, 0.0, None)                             # (N, T) diag C_t
    Uc = U[None, :, :] * c[:, None, :]
    C = (Uc.reshape(N * T, T) @ U.T).reshape(N, T, T)
    out: dict[str, np.ndarray] = {}
    lin = al * al + al * be
    prod = np.sqrt(var[:, :, None] * var[:, None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(prod > 0, C / np.where(prod > 0, prod, 1.0), 0.0)
    idx = np.arange(T)
    rho[:, idx, idx] = 1.0
    np.clip(rho, -1.0, 1.0, out=rho)
    Ks = lin * C
    if be != 0.0:
        theta = np.arccos(rho)                      # one arccos serves J(ρ), E' and F
        sin = np.sqrt(1.0 - rho * rho)
        sin[:, idx, idx] = 0.0
        _sharpen_angles(rho, theta, sin, U, c, var)
        # β² √(C_ii C_jj) J(ρ)/2 with J(ρ) = (sin θ + (π − θ) ρ)/π (= closed_forms.arccos_kernel)
        Ks += (0.5 * be * be / math.pi) * prod * (sin + (math.pi - theta) * rho)
    out["K"] = base @ Ks.reshape(N, T * T)
    out["K"] = out["K"].reshape(T, T)
    out["mean"] = (base / np.sqrt(math.pi * t)) @ (be * np.sqrt(var / (2.0 * math.pi)))
    if not ntk:
        return out
    if be != 0.0:
        Ep = lin + (be * be / (2.0 * math.pi)) * (math.pi - theta)
        # F_ij = β² √(C_ii C_jj − C_ij²)/(2π C_jj) = β² sin θ_ij √(C_ii/C_jj)/(2π)
        rv = np.sqrt(var)
        with np.errstate(divide="ignore", invalid="ignore"):
            F = (be * be / (2.0 * math.pi)) * sin * (rv[:, :, None] / rv[:, None, :])
    else:
        Ep = np.full((N, T, T), lin)
        F = None
    R = ((UA[None, :, :] * c[:, None, :]).reshape(N * T, T) @ U.T).reshape(N, T, T)    # A C_t
    B = (((Uc.reshape(N * T, T) @ At).reshape(N, T, T) * c[:, None, :]).reshape(N * T, T) @ U.T).reshape(N, T, T)
    trAC = c @ np.diag(At)
    X = np.swapaxes(R, 1, 2) * Ep
    if F is not None:
        X += F * np.einsum("nii->ni", R)[:, None, :]
    out["E1"] = (base @ Ep.reshape(N, T * T)).reshape(T, T)
    out["X2"] = ((base * t) @ X.reshape(N, T * T)).reshape(T, T)
    Y = trAC[:, None, None] * Ks + 2.0 * B * Ep
    if F is not None:
        Z = F * np.einsum("nii->ni", B)[:, None, :]
        Y += Z + np.swapaxes(Z, 1, 2)
    out["Y3"] = ((0.5 * base * t * t) @ Y.reshape(N, T * T)).reshape(T, T)
    return out


def _envelope(t: np.ndarray, om: np.ndarray, lam: np.ndarray, T: int, eps: float) -> np.ndarray:
    """A-priori magnitude of each node's contribution to the mean, K and the three JTJ terms (N, 5),
    from λ, t and ε alone (entries of C_t are ≤ c_max = max λ/(1 + 2tλ/T))."""
    x = 2.0 * t[:, None] * lam[None, :] / T
    base = om * np.exp(-t * eps - 0.5 * np.log1p(x).sum(axis=1))
    cmax = (lam[None, :] / (1.0 + x)).max(axis=1)
    return np.stack([base * np.sqrt(cmax / t), base * cmax, base, 2.0 * base * t * cmax,
                     2.5 * base * t * t * cmax * cmax], axis=1)


def _assemble(S: dict[str, np.ndarray], h: float, A: np.ndarray | None, T: int):
    K = h * S["K"]
    K = 0.5 * (K + K.T)
    mean = h * S["mean"]
    if A is None:
        return K, None, mean
    t1 = A * (h * S["E1"])
    X = h * S["X2"]
    t2 = -(X + X.T) / T
    t3 = h * S["Y3"] / T**2
    t3 = 0.5 * (t3 + t3.T)
    t1 = 0.5 * (t1 + t1.T)
    return K, (t1, t2, t3), mean


def bn_homogeneous(Sigma: Any, Theta: Any, activation: ActivationLike, *, eps: float = 1e-5, ntk: bool = True,
                   rtol: float = 1e-12, atol: float = 0.0, refine: int = 0, return_parts: bool = False):
    """Exact train-mode BN followed by a positively homogeneous σ, at infinite width (module docstring).

    Args:
        Sigma: (T, T) PSD, the per-unit pre-activation covariance ``E[h hᵀ]`` (T >= 2).
        Theta: (T, T) PSD, the per-unit NTK of ``h`` (ignored, may be None, when ``ntk=False``).
        activation: ``"relu"``, ``"leaky_relu:SLOPE"`` (any slope), ``"identity"``, or such an
            :class:`~normfield.Activation`.
        eps: BN's ε (>= 0): ``s² = ‖Mh‖²/T + eps``.
        ntk: also compute ``JTJ = E[J Θ Jᵀ]`` (else zeros).
        rtol, atol: nested rules are refined (h = 1/4 … 1/256) until the nested error of each of
            K, JTJ and mean is below ``max(atol, rtol × its max|entry|)`` (or the finest rule is
            reached; the stated error is returned either way).
        refine: nested levels to add after the tolerance is met (each doubles the nodes; the
            result and its stated error are then the finer rule's).
        return_parts: also return a :class:`BNParts` (the three JTJ terms, levels, node count).

    Returns:
        ``(K, JTJ, mean, err)``: (T, T), (T, T), (T,) float64 arrays and the stated absolute error
        (max over all entries of the three), or ``(K, JTJ, mean, err, parts)``.

    Raises:
        NormfieldError: non-PSD or mismatched inputs, T < 2, a non-homogeneous activation, zero
            centred variance, or ``eps = 0`` with rank(MΣM) ≤ 2 and ``ntk=True`` (infinite NTK).
    """
    act, Sigma, Theta, T, eps = _check(Sigma, Theta, activation, eps, bool(ntk))
    rtol = check_float("rtol", rtol, minimum=0.0)
    atol = check_float("atol", atol, minimum=0.0)
    refine = check_int("refine", refine, minimum=0, maximum=_MAX_LEVEL)
    ntk = bool(ntk)
    ab = (float(act.linear_parts[0]), float(act.linear_parts[1]))
    lam, U, rank = _spectrum(Sigma, T, act, eps, ntk)
    A = _center(Theta) if ntk else None
    At = U.T @ A @ U if ntk else np.zeros((T, T))
    At = 0.5 * (At + At.T)
    UA = U @ At
    # Two scales: the weight e^{−tε} d(t) falls off at t ~ 1/E[s²] = 1/(tr S/T + ε), while C_t (the
    # kernels' argument) changes at t ~ T/(2λ̄); centring u = 0 at twice their geometric mean keeps
    # both inside the analyticity strip (measured: 1e-5 → 1e-8 error at h = 1/4, T = 128).
    tau0 = 2.0 * math.sqrt(T / (2.0 * lam.sum() / rank) / (lam.sum() / T + eps))
    chunk = max(1, int(_CHUNK_BYTES // (12 * 8 * T * T)))
    check_memory("Sigma", 16.0 * 8 * T * T * chunk, hint="the exact BN route holds ~16 T×T arrays per node")
    keys = ("K", "mean", "E1", "X2", "Y3") if ntk else ("K", "mean")
    sums = {k: 0.0 for k in keys}
    ref = None
    prev = None
    nodes = 0
    stop = None
    errs = {"K": math.inf, "JTJ": math.inf, "mean": math.inf}
    for level in range(_MAX_LEVEL + 1):
        t, om, h = _exp_sinh_nodes(level, tau0)
        env = _envelope(t, om, lam, T, eps)
        if ref is None:
            ref = env.max(axis=0)
            ref = np.array([ref[0], ref[1], ref[2:].max(), ref[2:].max(), ref[2:].max()])
        keep = (env > _PRUNE * ref[None, :]).any(axis=1)
        t, om = t[keep], om[keep]
        nodes += t.size
        for a in range(0, t.size, chunk):
            part = _node_sums(t[a:a + chunk], om[a:a + chunk], lam, U, UA, At, ab, eps, ntk)
            for k in keys:
                sums[k] = sums[k] + part[k]
        cur = _assemble(sums, h, A, T)
        if prev is not None:
            errs["K"] = float(np.abs(cur[0] - prev[0]).max())
            errs["mean"] = float(np.abs(cur[2] - prev[2]).max())
            errs["JTJ"] = float(np.abs(sum(cur[1]) - sum(prev[1])).max()) if ntk else 0.0
            scales = {"K": np.abs(cur[0]).max(), "mean": np.abs(cur[2]).max(),
                      "JTJ": np.abs(sum(cur[1])).max() if ntk else 0.0}
            if stop is None and all(errs[k] <= max(atol, rtol * scales[k]) for k in errs):
                stop = level + refine
            if stop is not None and level >= stop:
                break
        prev = cur
    K, terms, mean = cur
    if ntk:
        JTJ = terms[0] + terms[1] + terms[2]
        JTJ = 0.5 * (JTJ + JTJ.T)
        mag = np.abs(terms[0]) + np.abs(terms[1]) + np.abs(terms[2])
    else:
        JTJ = np.zeros((T, T))
        mag = np.zeros((T, T))
    rounding = 8.0 * _U * (T + 4) * max(float(np.abs(K).max()), float(mag.max()), float(np.abs(mean).max()))
    err = max(errs.values()) + rounding
    if not return_parts:
        return K, JTJ, mean, err
    parts = BNParts(jtj_terms=terms, level=level, step=h, nodes=nodes, errors=errs, rounding=rounding)
    return K, JTJ, mean, err, parts
