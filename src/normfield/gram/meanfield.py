"""The mean-field Gram map and its iteration (Joudaki et al. 2023, eq. 3).

For an ``n × n`` PSD Gram matrix ``G`` (the covariance of one row
``h ∈ R^n`` of the next pre-activation, i.e. of one unit across the batch)
the mean-field map is

* ``norm="bn"`` (eq. 3): ``G ↦ E_{h~N(0,G)}[σ(√n M h/‖M h‖)^{⊗2}]``,
  ``M = I − 11ᵀ/n`` (batch norm: centre over the batch, divide by the
  batch standard deviation ``‖M h‖/√n``);
* ``norm="none"``: ``G ↦ E[σ(h) σ(h)ᵀ]``, entrywise the 2-D kernel
  ``kernel(σ, G_ii, G_jj, G_ij)`` (no normalization);
* ``norm="ln"``: layer norm divides each *sample* (column of the ``d × n``
  pre-activation) by its mean and standard deviation over the ``d`` units.
  With ``W ~ N(0, 1/d)`` and no bias, the mean over units of column ``t`` is
  ``O(d^{-1/2})`` and its mean square tends to ``G_tt`` as ``d → ∞``, so in
  the mean-field limit LN is the fixed rescaling ``h ↦ D^{-1/2} h``,
  ``D = diag(G)``, and ``G ↦ E[σ(D^{-1/2}h) σ(D^{-1/2}h)ᵀ]``: the 2-D kernel
  at unit variances and the correlation ``G_ij/√(G_ii G_jj)`` (cf. Karakida
  et al. 2019, §4 and S.71–S.75).

Routes (``method``):

* ``"exact"`` for BN with positively homogeneous σ (relu, leaky relu,
  identity): ``σ(√n y/‖y‖) = √n σ(y)/‖y‖`` with ``y = M h ~ N(0, S)``,
  ``S = M G M``, and ``1/‖y‖² = ∫_0^∞ e^{−s‖y‖²} ds``. Tilting a Gaussian
  by ``e^{−s‖y‖²}`` gives

      G'_ij = n ∫_0^∞ det(I + 2sS)^{−1/2} K_σ(S_s)_ij ds,  S_s = S (I + 2sS)^{−1},

  a 1-D integral of closed-form 2-D kernels, evaluated with the
  exp-sinh (double-exponential) rule on ``s ∈ (0, ∞)`` (error ~1e-14, with
  the estimate ``|fine − coarse|``). Also exact for *any* σ when the input
  is exchangeable in the BN sense (``S ∝ M``; always true for ``n = 2``):
  then ``√n y/‖y‖`` is uniform on the BN sphere and the output is G*
  (:func:`normfield.gram.fixed_point.fixed_point`). ``norm="none"`` and
  ``"ln"`` are always exact (2-D kernels).
* ``"cv"`` for BN with any σ (:mod:`normfield.gram.bn_map`): the moments
  ``E[u_i^a u_j^b]`` and ``E[relu(u_i) u_j^b]`` by the same 1-D integral, a
  polynomial (plus relu, for a kink at 0) fitted to σ integrated exactly, and
  the small remainder by randomised quasi-Monte Carlo, with the stated
  Frobenius error (≤ ``tol``, default 1e-3, when the draws allow).
* ``"mc"``: Monte Carlo over ``samples`` draws of ``h`` (any activation),
  with standard errors (:func:`gram_map_mc`).
* ``"auto"``: exact when available, else ``"cv"``.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from normfield.core.activations import Activation, ActivationLike, get_activation
from normfield.core.kernels import kernel
from normfield.core.normalize import center
from normfield.core.validation import check_choice, check_device, check_float, check_int, check_memory, check_psd
from normfield.errors import NormfieldError
from normfield.gram.bn_map import MAX_SAMPLES, TOL, bn_map_cv

__all__ = ["gram_map", "gram_map_mc", "mean_field_trajectory", "NORMS"]

NORMS = ("bn", "none", "ln")
_METHODS = ("auto", "exact", "cv", "mc")
_DEFAULT_SAMPLES = 200_000


def _check_G(G: Any, norm: str) -> np.ndarray:
    check_choice("norm", norm, NORMS)
    G = check_psd("G", G)
    n = G.shape[0]
    if norm == "bn":
        if n < 2:
            raise NormfieldError(
                f"G must be at least 2x2 under batch norm (batch statistics of one sample are degenerate), got {n}x{n}",
                argument="G",
            )
        S = _center(G)
        if np.trace(S) <= 1e-14 * max(np.trace(G), 1e-300):
            raise NormfieldError(
                "G has no variance orthogonal to the all-ones vector (all samples identical): "
                "batch norm divides by a zero standard deviation",
                argument="G",
            )
    if norm == "ln" and np.any(np.diag(G) <= 0):
        raise NormfieldError("G must have a positive diagonal under layer norm (a zero sample has no std)",
                             argument="G")
    return G


def _center(G: np.ndarray) -> np.ndarray:
    Gc = G - G.mean(axis=0, keepdims=True)
    Gc = Gc - Gc.mean(axis=1, keepdims=True)
    return 0.5 * (Gc + Gc.T)


def _exchangeable(S: np.ndarray) -> bool:
    """S ∝ M (to 1e-12): the BN image of N(0, G) is uniform on the sphere."""
    n = S.shape[0]
    M = np.eye(n) - 1.0 / n
    a = np.trace(S) / (n - 1)
    return bool(np.abs(S - a * M).max() <= 1e-12 * a)


def _pairwise_kernel(act: Activation, var: np.ndarray, C: np.ndarray, method: str = "auto") -> np.ndarray:
    """Matrix ``[kernel(σ, var_i, var_j, C_ij)]`` (symmetric, computed on i <= j)."""
    n = C.shape[0]
    iu, ju = np.triu_indices(n)
    cij = C[iu, ju]
    lim = np.sqrt(var[iu] * var[ju])
    cij = np.clip(cij, -lim, lim)  # round-off from the PSD projection
    vals = np.asarray(kernel(act, var[iu], var[ju], cij, method=method))
    out = np.empty((n, n))
    out[iu, ju] = vals
    out[ju, iu] = vals
    return out


@lru_cache(maxsize=8)
def _expsinh_nodes(h: float, tmax: float = 5.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """exp-sinh nodes for ∫_0^∞ F(s) ds: s = exp(π/2 sinh τ), weights fine/coarse."""
    k1 = math.ceil(tmax / h)
    k = np.arange(-k1, k1 + 1)
    t = k * h
    s = np.exp(0.5 * math.pi * np.sinh(t))
    w = h * 0.5 * math.pi * np.cosh(t) * s
    wc = np.where(k % 2 == 0, 2.0 * w, 0.0)
    return s, w, wc


def _bn_exact_homogeneous(act: Activation, G: np.ndarray) -> tuple[np.ndarray, float]:
    """Exact BN map for positively homogeneous σ (module docstring)."""
    n = G.shape[0]
    S = _center(G)
    lam, U = np.linalg.eigh(S)
    lam = np.clip(lam, 0.0, None)
    scale = lam.sum() / max(int(np.sum(lam > 1e-14 * lam.max())), 1)
    s, w, wc = _expsinh_nodes(1.0 / 16.0)
    s = s / (2.0 * scale)  # put the bend of det(I+2sS)^{-1/2} near τ = 0
    w = w / (2.0 * scale)
    wc = wc / (2.0 * scale)
    check_memory("G", 8.0 * s.size * n * n * 3, hint="use method='mc' for very large batches")
    d = lam[None, :] / (1.0 + 2.0 * s[:, None] * lam[None, :])  # (N, n)
    Ss = np.einsum("ik,sk,jk->sij", U, d, U)  # (N, n, n)
    logdet = np.sum(np.log1p(2.0 * s[:, None] * lam[None, :]), axis=1)
    wdet = np.exp(-0.5 * logdet)
    var = np.einsum("sii->si", Ss).clip(min=0.0)
    iu, ju = np.triu_indices(n)
    lim = np.sqrt(var[:, iu] * var[:, ju])
    cij = np.clip(Ss[:, iu, ju], -lim, lim)
    K = np.asarray(kernel(act, var[:, iu], var[:, ju], cij, method="closed"))  # (N, P)
    fine = n * (w * wdet) @ K
    coarse = n * (wc * wdet) @ K
    out = np.empty((n, n))
    out[iu, ju] = fine
    out[ju, iu] = fine
    err = float(np.abs(fine - coarse).max())
    return out, err


def gram_map(
    G: Any,
    activation: ActivationLike,
    *,
    norm: str = "bn",
    method: str = "auto",
    samples: int = _DEFAULT_SAMPLES,
    seed: int = 0,
    return_error: bool = False,
    device: str = "cpu",
    tol: float = TOL,
    max_samples: int = MAX_SAMPLES,
):
    """One step of the mean-field Gram map (Joudaki et al. 2023, eq. 3).

    Args:
        G: (n, n) symmetric PSD matrix (the covariance of a row ``h``).
        activation: name, :class:`~normfield.Activation` or torch callable.
        norm: ``"bn"`` (eq. 3), ``"none"`` or ``"ln"`` (module docstring).
        method: ``"auto"``, ``"exact"``, ``"cv"`` or ``"mc"`` (module docstring).
        samples: Monte Carlo draws (``method="mc"``).
        seed: Monte Carlo seed (``"mc"`` and ``"cv"``).
        return_error: also return an error estimate: the quadrature estimate
            (max over entries) for exact routes, the stated Frobenius error for
            ``"cv"``, the (n, n) standard errors for ``"mc"``.
        device: where Monte Carlo draws run (``"cpu"`` or ``"cuda"``); exact
            routes run in float64 NumPy.
        tol: stated Frobenius error the ``"cv"`` route draws points until.
        max_samples: cap on the ``"cv"`` route's quasi-Monte Carlo points.

    Returns:
        (n, n) float64 array (or ``(array, error)``).

    Raises:
        NormfieldError: non-PSD/non-square ``G``, ``n < 2`` or constant rows
            under BN, zero diagonal under LN, unknown activation/norm/method,
            or ``method="exact"`` where no exact route exists.
    """
    act = get_activation(activation)
    check_choice("method", method, _METHODS)
    G = _check_G(G, norm)
    n = G.shape[0]
    if method == "cv" and norm != "bn":
        raise NormfieldError(f"method='cv' is the batch-norm route; norm={norm!r} is exact (use method='auto')",
                             argument="method")
    if method == "mc":
        m, se = gram_map_mc(G, act, norm=norm, samples=samples, seed=seed, device=device)
        return (m, se) if return_error else m
    if norm == "none":
        out = _pairwise_kernel(act, np.diag(G).copy(), G)
        return (out, 0.0) if return_error else out
    if norm == "ln":
        dg = np.sqrt(np.diag(G))
        C = G / np.outer(dg, dg)
        out = _pairwise_kernel(act, np.ones(n), C)
        return (out, 0.0) if return_error else out
    S = _center(G)
    if _exchangeable(S):
        from normfield.gram.fixed_point import fixed_point

        fp = fixed_point(act, n)
        return (fp.matrix, fp.error) if return_error else fp.matrix
    if act.linear_parts is not None and method != "cv":
        out, err = _bn_exact_homogeneous(act, G)
        return (out, err) if return_error else out
    if method == "exact":
        raise NormfieldError(
            f"method='exact': no exact BN route for {act.label} with a non-exchangeable G "
            "(exact routes: relu, leaky_relu, identity, or G = aI + b11ᵀ); use method='cv', 'mc' or 'auto'",
            argument="method",
        )
    tol = check_float("tol", tol, minimum=0.0)
    cap = check_int("max_samples", max_samples, minimum=64)
    check_int("seed", seed, minimum=0)
    check_device("device", device)
    out, err, _ = bn_map_cv(act, G, tol=tol, seed=seed, max_samples=cap, device=device)
    return (out, err) if return_error else out


def gram_map_mc(
    G: Any,
    activation: ActivationLike,
    *,
    norm: str = "bn",
    samples: int = _DEFAULT_SAMPLES,
    seed: int | torch.Generator = 0,
    device: str = "cpu",
    dtype: torch.dtype = torch.float64,
    chunk: int = 65_536,
) -> tuple[np.ndarray, np.ndarray]:
    """Monte Carlo estimate of the mean-field Gram map, with standard errors.

    Draws ``h = U diag(√λ) z`` (``G = U diag(λ) Uᵀ``, ``z ~ N(0, I_n)``),
    applies the normalization (``"bn"``: ``√n M h/‖M h‖``; ``"ln"``:
    ``D^{-1/2} h``; ``"none"``: ``h``) and averages ``σ(·) σ(·)ᵀ``.

    Args:
        G: (n, n) PSD matrix. activation, norm: as :func:`gram_map`.
        samples: number of draws (>= 2).
        seed: int seed or a ``torch.Generator`` (same seed → same numbers).
        device, dtype: where and in what precision to simulate.
        chunk: draws per batch (memory).

    Returns:
        ``(mean, stderr)``, two (n, n) float64 arrays; ``stderr`` is the sample
        standard deviation of each entry over draws divided by ``√samples``.
    """
    act = get_activation(activation)
    G = _check_G(G, norm)
    n = G.shape[0]
    N = check_int("samples", samples, minimum=2)
    chunk = check_int("chunk", chunk, minimum=1)
    check_memory("samples", 8.0 * min(N, chunk) * n * (n + 2), hint="lower chunk")
    check_device("device", device)
    if isinstance(seed, torch.Generator):
        gen = seed
    else:
        gen = torch.Generator(device=device)
        gen.manual_seed(check_int("seed", seed, minimum=0))
    lam, U = np.linalg.eigh(G)
    Lt = torch.as_tensor(U * np.sqrt(np.clip(lam, 0.0, None)), dtype=dtype, device=device)
    dg = torch.as_tensor(np.sqrt(np.diag(G)), dtype=dtype, device=device)
    s1 = torch.zeros(n, n, dtype=torch.float64, device=device)
    s2 = torch.zeros(n, n, dtype=torch.float64, device=device)
    done = 0
    while done < N:
        b = min(chunk, N - done)
        z = torch.randn(b, n, generator=gen, dtype=dtype, device=device)
        h = z @ Lt.T
        if norm == "bn":
            y = center(h, 1)
            h = math.sqrt(n) * y / y.norm(dim=1, keepdim=True)
        elif norm == "ln":
            h = h / dg
        x = act(h).to(torch.float64)
        outer = x[:, :, None] * x[:, None, :]
        s1 += outer.sum(0)
        s2 += (outer * outer).sum(0)
        done += b
    mean = (s1 / N).cpu().numpy()
    var = ((s2 / N).cpu().numpy() - mean**2) * N / (N - 1)
    se = np.sqrt(np.clip(var, 0.0, None) / N)
    return mean, se


def mean_field_trajectory(
    G0: Any,
    activation: ActivationLike,
    depth: int,
    *,
    norm: str = "bn",
    method: str = "auto",
    samples: int = _DEFAULT_SAMPLES,
    seed: int = 0,
    device: str = "cpu",
    tol: float = TOL,
    max_samples: int = MAX_SAMPLES,
) -> np.ndarray:
    """Iterate the mean-field Gram map: ``G_{l+1} = F(G_l)`` (Joudaki et al. 2023, eq. 3).

    Input convention: ``G0`` is the Gram matrix that feeds the first map, i.e.
    the covariance of the rows of ``h_1 = W_0 σ(BN(h_0))``, which equals
    ``G_0 = σ(BN(h_0))ᵀ σ(BN(h_0))/d`` in eq. 2 (for an input batch ``X`` of
    ``n`` samples in ``d`` dimensions, pass ``σ(BN(X))ᵀσ(BN(X))/d``, or the
    input Gram ``XᵀX/d`` to model a first layer without normalization).
    Entry ``0`` of the result is ``G0`` itself; entry ``l`` is ``F^l(G0)``.

    Args:
        G0: (n, n) PSD matrix.
        activation, norm, method, samples, device, tol, max_samples: as :func:`gram_map`.
        depth: number of map applications (>= 0).
        seed: Monte Carlo seed; step ``l`` uses ``seed + l``.

    Returns:
        float64 array of shape ``(depth + 1, n, n)``.
    """
    act = get_activation(activation)
    L = check_int("depth", depth, minimum=0, maximum=100_000)
    G = _check_G(G0, norm)
    n = G.shape[0]
    check_memory("depth", 8.0 * (L + 1) * n * n)
    out = np.empty((L + 1, n, n))
    out[0] = G
    for l in range(1, L + 1):
        out[l] = gram_map(out[l - 1], act, norm=norm, method=method, samples=samples, seed=seed + l, device=device,
                          tol=tol, max_samples=max_samples)
    return out
