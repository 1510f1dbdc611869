"""Figures of an :class:`normfield.analyze.AnalysisResult`.

* :func:`plot_spectrum` — the spectral density of the Fisher/NTK dual F* on a
  log axis (exact eigenvalues on the dense route, the stochastic Lanczos
  quadrature measure otherwise), the top-k eigenvalues, and the learning-rate
  bound 2/λ_max of gradient descent on the squared loss (Karakida et al. 2019,
  eq. (23)) on a secondary axis;
* :func:`plot_layer_conditioning` — per hooked layer, the condition number and
  the top fraction λ_1/tr of the batch Gram G = H Hᵀ/d (Joudaki et al. 2023,
  eq. (2); rank collapse shows as a top fraction near 1), and the distance to
  the batch-norm fixed point G* where it applies (eq. (10)).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from normfield.errors import NormfieldError

__all__ = ["plot_spectrum", "plot_layer_conditioning"]


def _figure(ax, size):
    import matplotlib

    if ax is None:
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=size)
        return fig, ax
    return ax.figure, ax


def _save(fig, path):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(path, dpi=110)


def _spectrum_measure(spec) -> tuple[np.ndarray, np.ndarray, str]:
    if spec.density_nodes is not None:
        return np.asarray(spec.density_nodes), np.asarray(spec.density_weights), (
            "exact eigenvalues" if spec.spectrum is not None else "stochastic Lanczos quadrature")
    if spec.spectrum is not None:
        n = len(spec.spectrum)
        return np.asarray(spec.spectrum), np.full(n, 1.0 / n), "exact eigenvalues"
    raise NormfieldError("plot_spectrum needs the spectral density: run analyze(..., density=True) "
                         "(or the dense route, method='dense')", argument="result")


def plot_spectrum(result: Any, *, variant: str | None = None, bins: int = 40, ax=None, path: str | Path | None = None):
    """Spectral density of F* on a log axis, the top eigenvalues and the 2/λ_max line.

    Args:
        result: an :class:`~normfield.analyze.AnalysisResult` (or a
            :class:`~normfield.analyze.FisherSpectrum`) with a density or a full spectrum.
        variant: a ``what_if`` name to plot instead of the model as given.
        bins: log-spaced histogram bins over the positive part of the measure.
        ax: a matplotlib axis to draw into (default: a new figure).
        path: save the figure there (PNG by extension).

    Returns:
        the matplotlib figure.
    """
    spec = getattr(result, "fisher", result)
    if variant is not None:
        what = getattr(result, "what_if", {})
        if variant not in what:
            raise NormfieldError(f"variant {variant!r} was not analyzed; have: {', '.join(what) or 'none'}",
                                 argument="variant")
        spec = what[variant]
    if spec is None:
        raise NormfieldError("the Fisher was not computed (fisher=False)", argument="result")
    nodes, weights, how = _spectrum_measure(spec)
    pos = nodes > max(float(nodes.max()), 1e-300) * 1e-12
    fig, ax = _figure(ax, (6.4, 4.0))
    if pos.any():
        lo, hi = float(nodes[pos].min()), float(nodes.max())
        lo = min(lo, hi / 10)
        edges = np.geomspace(lo * 0.99, hi * 1.01, bins + 1)
        mass, _ = np.histogram(nodes[pos], bins=edges, weights=weights[pos])
        ax.stairs(mass, edges, fill=True, alpha=0.4, color="C0", label=f"density of F* ({how})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    top = np.asarray(spec.eigenvalues, float)
    for i, lam in enumerate(top):
        ax.axvline(lam, color="C3", lw=1.0, ls="-" if i == 0 else ":",
                   label="λ_max" if i == 0 else ("top eigenvalues" if i == 1 else None))
    ax.set_xlabel("eigenvalue of F* = J Jᵀ/T")
    ax.set_ylabel("spectral mass")
    zero_mass = float(weights[~pos].sum())
    title = f"T={spec.samples}, C={spec.outputs}, P={spec.parameters}"
    if zero_mass > 0:
        title += f"; mass at 0: {zero_mass:.2g}"
    ax.set_title(title, fontsize=9)
    # the learning-rate bound on a secondary axis: η = 2/λ
    sec = ax.secondary_xaxis("top", functions=(lambda x: 2.0 / np.clip(x, 1e-300, None),
                                               lambda e: 2.0 / np.clip(e, 1e-300, None)))
    sec.set_xlabel("learning rate 2/λ")
    if math.isfinite(spec.lr_bound):
        ax.text(spec.lambda_max, ax.get_ylim()[1] if pos.any() else 1.0, f"  2/λ_max = {spec.lr_bound:.3g}",
                color="C3", fontsize=8, va="top", rotation=90)
    ax.legend(fontsize=7, loc="lower left")
    _save(fig, path)
    return fig


def plot_layer_conditioning(result: Any, *, ax=None, path: str | Path | None = None):
    """Per-layer batch Gram conditioning: condition number (log), top fraction λ_1/tr, distance to G*.

    Args:
        result: an :class:`~normfield.analyze.AnalysisResult` with hooked layers.
        ax: an axis for the condition numbers (default: a new figure with two panels).
        path: save the figure there.

    Returns:
        the matplotlib figure.
    """
    df = getattr(result, "layers", None)
    if df is None or len(df) == 0:
        raise NormfieldError("no layer was hooked; run analyze with layers='auto' or layer names",
                             argument="result")
    if ax is None:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(max(6.4, 0.18 * len(df)), 5.6), sharex=True)
    else:
        fig, ax2 = ax.figure, ax.twinx()
    x = np.arange(len(df))
    cond = df.condition_number.to_numpy(float)
    finite = np.isfinite(cond)
    ax.semilogy(x[finite], cond[finite], "o-", ms=3, color="C0", label="condition number of G")
    if (~finite).any():
        ymax = np.nanmax(cond[finite]) if finite.any() else 1.0
        ax.plot(x[~finite], np.full((~finite).sum(), ymax), "x", color="C3", label="singular G (rank < batch)")
    ax.set_ylabel("condition number")
    ax.legend(fontsize=7)
    ax2.plot(x, df.top_fraction.to_numpy(float), "s-", ms=3, color="C1", label="top fraction λ_1/tr (1: rank one)")
    d = df.dist_fixed_point.to_numpy(float)
    if np.isfinite(d).any():
        ax2.plot(x, d, "^", ms=4, color="C2", label="‖G − G*‖/‖G*‖ (BN → activation)")
    ax2.set_ylim(0, 1.05)
    ax2.set_ylabel("fraction")
    ax2.legend(fontsize=7)
    ax2.set_xticks(x)
    ax2.set_xticklabels(df.layer.tolist(), rotation=90, fontsize=6)
    ax.set_title(f"batch Gram per layer (batch {int(df.batch.iloc[0])})", fontsize=9)
    _save(fig, path)
    return fig
