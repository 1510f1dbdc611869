"""Spectra in parameter space: the pooled Fisher of a data set, the Hessian, and the per-batch spread.

For a data set of B batches (N samples in all) the pooled Fisher is

    F = (1/N) Σ_b J_bᵀ Λ_b J_b = Σ_b (T_b/N) F_b,      F_b = J_bᵀ Λ_b J_b / T_b,

each batch differentiated as a whole (train-mode batch norm couples the samples within a batch,
as in training; Λ_b = I for ``fisher-mse`` (Karakida et al. 2019, eq. (8)), the softmax blocks
for ``fisher-cross-entropy``). Its λ_max comes from Lanczos on the parameter-space product of
:class:`normfield.analyze.operator.CurvatureOperator` (one JVP and one VJP per batch); its trace
is exactly the weighted sum of the per-batch traces, tr F = Σ_b (T_b/N) tr F_b, so the per-batch
spread (λ_max and tr of each F_b, on each batch's own dual) also gives the pooled trace, with
standard error (Σ_b (T_b/N)² se_b²)^{1/2} for independent per-batch estimates.

The Hessian (``hessian-*``) has its largest eigenvalue by Lanczos on H and its smallest by
Lanczos on λ̂·I − H (λ̂ the largest Ritz value plus its residual, so the shifted operator is
positive semi-definite up to that bound and its accuracy is relative to the spread λ_max − λ_min);
its trace by Hutchinson probes zᵀHz (one HVP each) deflated by the Lanczos basis, at most
``probes`` or :data:`HESSIAN_MAX_PROBES` of them (a trace near zero cannot reach a relative target).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from normfield.analyze.cost import ProductMeter
from normfield.analyze.losses import is_hessian
from normfield.analyze.ntk import dual_spectra
from normfield.analyze.operator import CurvatureOperator
from normfield.analyze.settings import Accuracy
from normfield.analyze.spectrum import FisherSpectrum
from normfield.core import krylov

__all__ = ["parameter_spectrum", "dense_parameter_spectrum", "per_batch_spectra", "pooled_spectra", "spread",
           "HESSIAN_MAX_PROBES"]

#: Hutchinson probes of a Hessian trace at most (without ``probes=``).
HESSIAN_MAX_PROBES = 64


def spread(values: np.ndarray) -> tuple[float, float]:
    """(mean, half-width of its 95 % confidence interval) of per-batch values: Student's t with B − 1
    degrees of freedom times the standard error s/√B (NaN for one batch)."""
    from scipy.stats import t as student

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()) if len(v) else math.nan, math.nan
    return float(v.mean()), float(student.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def dense_parameter_spectrum(cop: CurvatureOperator, acc: Accuracy, *, meter: ProductMeter,
                             density: bool = False) -> FisherSpectrum:
    """Every eigenvalue of a parameter-space operator formed column by column (P products: one HVP, or
    one JVP and one VJP per batch, each), symmetrised, by ``eigvalsh``: exact to round-off."""
    start = cop.products
    M = np.stack([cop.matvec(e) for e in np.eye(cop.dim)], axis=1)
    w = np.linalg.eigvalsh(0.5 * (M + M.T))[::-1].copy()
    k = min(acc.k, cop.dim)
    tr = float(np.trace(M))
    return FisherSpectrum(
        lambda_max=float(w[0]), m_lambda=tr / cop.parameters, trace=tr, trace_stderr=0.0,
        parameters=cop.parameters, samples=cop.samples, outputs=cop.rows, eigenvalues=w[:k].copy(),
        method="dense (parameter space)", products=cop.products - start, spectrum=w,
        density_nodes=w.copy() if density else None,
        density_weights=np.full(len(w), 1.0 / len(w)) if density else None, route=cop.route_used,
        converged=not meter.exhausted, curvature=cop.curvature,
        lambda_min=float(w[-1]) if is_hessian(cop.curvature) else None,
        lambda_min_error=0.0 if is_hessian(cop.curvature) else None)


def parameter_spectrum(cop: CurvatureOperator, acc: Accuracy, *, seed: int, meter: ProductMeter,
                       trace: tuple[float, float, str] | None = None, density: bool = False,
                       method: str = "lanczos") -> FisherSpectrum:
    """λ_max, the top-k eigenvalues (and λ_min of a Hessian) of a parameter-space operator.

    ``trace`` = (value, standard error, how) when known (the pooled Fisher's, from its batches);
    otherwise a deflated Hutchinson estimate with HVPs or JVPs. ``method="dense"`` (or ``"auto"``
    with P <= ``acc.dense_max``) forms the matrix instead (:func:`dense_parameter_spectrum`).
    """
    if method == "dense" or (method == "auto" and cop.dim <= acc.dense_max):
        return dense_parameter_spectrum(cop, acc, meter=meter, density=density)
    start = cop.products
    k = min(acc.k, cop.dim)
    tol = acc.tol_for(cop.dtype)
    lz = cop.lanczos(k, tol, seed=seed, stop=meter.stop)
    lam_min = lam_min_err = None
    converged = lz.converged
    if is_hessian(cop.curvature) and not meter.stop():
        lo = cop.lanczos(1, tol, which="smallest", seed=seed, stop=meter.stop)
        lam_min, lam_min_err = float(lo.eigenvalues[0]), float(lo.errors[0])
        converged = converged and lo.converged
    if trace is None:
        cap = acc.probes or (HESSIAN_MAX_PROBES if is_hessian(cop.curvature) else max(8, cop.dim))
        est = cop.trace_estimate(rtol=acc.trace_rtol, probes=acc.probes, seed=seed + 1, stop=meter.stop,
                                 max_probes=cap)
        trace = (est.value, est.stderr, f"hutchinson trace ({est.probes} probes deflated by the Lanczos basis)")
    dn = dw = None
    if density:
        dn, dw, _ = krylov.slq(cop.matvec, cop.dim, seed=seed + 2, stop=meter.stop)
    tr, se, how = trace
    return FisherSpectrum(
        lambda_max=float(lz.eigenvalues[0]), m_lambda=tr / cop.parameters, trace=tr, trace_stderr=se,
        parameters=cop.parameters, samples=cop.samples, outputs=cop.rows,
        eigenvalues=np.asarray(lz.eigenvalues[:k], dtype=float), method=f"lanczos (parameter space), {how}",
        products=cop.products - start, eigenvalue_errors=lz.errors.copy(),
        converged=converged and not meter.exhausted, route=cop.route_used, stopped=lz.stopped,
        density_nodes=dn, density_weights=dw, curvature=cop.curvature, lambda_min=lam_min,
        lambda_min_error=lam_min_err)


def per_batch_spectra(cop: CurvatureOperator, acc: Accuracy, *, method: str, seed: int,
                      meter: ProductMeter) -> list[FisherSpectrum]:
    """The curvature of each batch alone: its dual spectrum (Fisher: λ_max and trace to the same
    accuracy as the main result, k = 1) or its parameter-space spectrum (Hessian)."""
    out = []
    one = Accuracy(tol=acc.tol, trace=acc.trace, probes=acc.probes, trace_rtol=acc.trace_rtol, k=1,
                   dense_max=acc.dense_max, chunk=acc.chunk)
    for b in range(cop.batches):
        sub = cop.for_batch(b)
        if meter.stop():
            break
        if is_hessian(cop.curvature):
            out.append(parameter_spectrum(sub, one, seed=seed, meter=meter, method=method))
        else:
            main, _ = dual_spectra(sub, (), k=1, method=method, dense_max=acc.dense_max, tol=acc.tol,
                                   trace=acc.trace, probes=acc.probes, trace_rtol=acc.trace_rtol, seed=seed,
                                   chunk=acc.chunk, meter=meter)
            out.append(main)
    return out


def pooled_spectra(cop: CurvatureOperator, acc: Accuracy, *, method: str, seed: int, meter: ProductMeter,
                   density: bool = False) -> tuple[FisherSpectrum, pd.DataFrame]:
    """The pooled curvature of a data set and its per-batch spread.

    Returns:
        (the pooled :class:`FisherSpectrum` (samples = N), a DataFrame with one row per batch: ``batch``,
        ``samples``, ``lambda_max``, ``trace``, ``trace_stderr``, ``products``).
    """
    rows = per_batch_spectra(cop, acc, method=method, seed=seed, meter=meter)
    sizes = cop.batch_sizes
    frame = pd.DataFrame({
        "batch": list(range(len(rows))), "samples": sizes[:len(rows)],
        "lambda_max": [r.lambda_max for r in rows], "trace": [r.trace for r in rows],
        "trace_stderr": [r.trace_stderr for r in rows], "products": [r.products for r in rows]})
    trace = None
    if not is_hessian(cop.curvature) and len(rows) == cop.batches:
        w = np.asarray(sizes, float) / cop.samples
        trace = (float(w @ frame["trace"].to_numpy()), float(np.sqrt(w**2 @ frame["trace_stderr"].to_numpy() ** 2)),
                 "trace = sum of the per-batch traces weighted T_b/N")
    pooled = parameter_spectrum(cop, acc, seed=seed, meter=meter, trace=trace, density=density,
                                method="lanczos" if method == "auto" else method)
    return pooled, frame
