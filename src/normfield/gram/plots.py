"""Plotting helpers on top of the tidy chain DataFrames (matplotlib, Agg).

Each helper draws on a given ``Axes`` (or a new figure) and returns it; the
data come from :func:`normfield.gram.measure.summarize_chain` or from the
claims' tidy frames. Nothing here computes a result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from normfield.gram.spectra import mp_pdf, mp_quantile, mp_singular_pdf, mp_support  # noqa: E402

__all__ = ["plot_depth_bands", "plot_loglog", "plot_singular_histogram", "save_figure", "new_axes"]


def new_axes(ncols: int = 1, nrows: int = 1, size: tuple[float, float] = (4.2, 3.2)):
    """A figure with an ``nrows × ncols`` grid of axes (always a 2-D array)."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    return fig, axes


def save_figure(fig, path: str | Path) -> Path:
    """Save as PNG (tight layout, 120 dpi) and close."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_depth_bands(
    summary: pd.DataFrame, *, metric: str, ax=None, label: str | None = None, color=None,
    logy: bool = True, band: bool = True,
):
    """Mean and 5%–95% band of ``metric`` against layer (Joudaki et al. Figs. 1–2).

    Args:
        summary: output of :func:`~normfield.gram.measure.summarize_chain`
            (columns layer, metric, mean, q05, q95).
        metric: e.g. ``"dist_fixed_point"``.
    """
    if ax is None:
        _, axes = new_axes()
        ax = axes[0, 0]
    s = summary[summary.metric == metric].sort_values("layer")
    (line,) = ax.plot(s.layer, s["mean"], label=label, color=color)
    if band:
        ax.fill_between(s.layer, s.q05, s.q95, alpha=0.25, color=line.get_color(), linewidth=0)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("layer ℓ")
    return ax


def plot_loglog(
    x: Sequence[float], mean: Sequence[float], *, lo: Sequence[float] | None = None,
    hi: Sequence[float] | None = None, slope: float | None = None, intercept: float | None = None,
    ref_slope: float | None = None, ax=None, label: str | None = None, xlabel: str = "", ylabel: str = "",
):
    """Log–log points with error bars, the fitted line and a reference slope."""
    if ax is None:
        _, axes = new_axes()
        ax = axes[0, 0]
    x = np.asarray(x, dtype=float)
    mean = np.asarray(mean, dtype=float)
    yerr = None
    if lo is not None and hi is not None:
        yerr = np.vstack([mean - np.asarray(lo), np.asarray(hi) - mean])
    ax.errorbar(x, mean, yerr=yerr, fmt="o", capsize=3, label=label)
    xx = np.geomspace(x.min(), x.max(), 50)
    if slope is not None and intercept is not None:
        ax.plot(xx, np.exp(intercept) * xx ** slope, "-", lw=1, label=f"fit: slope {slope:.3f}")
    if ref_slope is not None:
        c = mean[0] / x[0] ** ref_slope
        ax.plot(xx, c * xx ** ref_slope, "k--", lw=1, label=f"slope {ref_slope:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    return ax


def plot_singular_histogram(
    values: np.ndarray, gamma: float, *, ax=None, title: str = "", eigen_law: bool = True,
    gamma_fit: float | None = None, bins: int = 40,
):
    """Histogram of median-normalised singular values against Marchenko–Pastur (Fig. 5).

    Solid: the law of MP *singular values* (√λ, median-normalised) for
    γ = n/d — the right variable. Dashed (``eigen_law``): the MP *eigenvalue*
    density rescaled to median 1, drawn for comparison only. Dotted: the MP
    singular law at a fitted ``gamma_fit``.
    """
    if ax is None:
        _, axes = new_axes()
        ax = axes[0, 0]
    v = np.asarray(values, dtype=float).ravel()
    ax.hist(v, bins=bins, density=True, alpha=0.45, color="C0", label="simulated (bulk)")
    lo, hi = np.quantile(v, [0.0, 1.0])
    a, b = mp_support(gamma)
    c = np.sqrt(mp_quantile(0.5, gamma))
    s = np.linspace(min(lo, np.sqrt(a) / c) * 0.98, max(hi, np.sqrt(b) / c) * 1.02, 400)
    ax.plot(s, mp_singular_pdf(s, gamma), "k-", lw=1.3, label=f"MP singular values, γ={gamma:g}")
    if eigen_law:
        m = mp_quantile(0.5, gamma)
        ax.plot(s, mp_pdf(s * m, gamma) * m, "r--", lw=1, label="MP eigenvalue density (for comparison)")
    if gamma_fit is not None:
        ax.plot(s, mp_singular_pdf(s, gamma_fit), "g:", lw=1.3, label=f"MP singular, fitted γ={gamma_fit:.3g}")
    ax.set_title(title, fontsize=8)
    ax.set_xlabel("singular value / median")
    ax.legend(fontsize=6)
    return ax
