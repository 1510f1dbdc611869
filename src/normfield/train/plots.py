"""Figures of the training experiments: thin plots of the tidy DataFrames.

* :func:`plot_lr_grid` — Karakida et al. 2019, Fig. 2 / S.2: final loss over (M, η).
* :func:`plot_gram_spectra` — Joudaki et al. 2023, Fig. 6: log-eigenvalues of the
  penultimate Gram matrix at initialization and at the end, with and without BN.
* :func:`plot_entropy` — Fig. 7: predicted-class entropy per epoch.
* :func:`plot_loss` — Fig. 8: training loss per epoch.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["plot_lr_grid", "plot_gram_spectra", "plot_entropy", "plot_loss"]

_COLORS = {True: "tab:orange", False: "tab:blue"}  # the paper's: orange with BN, blue without
_LABELS = {True: "with BN", False: "without BN"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (creating its folder), close it and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _edges(v: np.ndarray) -> np.ndarray:
    """Cell edges on a log axis for sorted positive centres ``v``."""
    lv = np.log10(v)
    if lv.size == 1:
        return 10 ** np.array([lv[0] - 0.5, lv[0] + 0.5])
    mid = (lv[1:] + lv[:-1]) / 2
    return 10 ** np.concatenate([[lv[0] - (mid[0] - lv[0])], mid, [lv[-1] + (lv[-1] - mid[-1])]])


def plot_lr_grid(df: pd.DataFrame, path: str | Path, *, explode_at: float = 1e3) -> Path:
    """Heat map of the final loss (minimum over seeds, Fig. S.2) over width M and η.

    Exploded cells (loss > ``explode_at`` or not finite) are grey. Black dots: the
    empirical 2/λ_max at initialization (median over seeds); red line: the theory
    (Thm 2.2 without normalization, 2/(ρα(κ1−κ2)) with mean subtraction).

    Args:
        df: rows of :func:`normfield.train.lr_grid.lr_grid`.
        path: PNG path.
    """
    plt = _plt()
    from matplotlib.colors import LogNorm

    norms = [n for n in ("none", "last-mean") if n in set(df["norm"])]
    fig, axes = plt.subplots(1, len(norms), figsize=(5.2 * len(norms), 4.2), squeeze=False, layout="constrained")
    titles = {"none": "w/o normalization", "last-mean": "w/ mean subtraction"}
    ok_all = df["final_loss"][np.isfinite(df["final_loss"]) & (df["final_loss"] <= explode_at)]
    vmin = max(float(ok_all.min()) if len(ok_all) else 1e-6, 1e-12)
    vmax = max(float(ok_all.max()) if len(ok_all) else 1.0, vmin * 10)
    vmin = max(vmin, vmax * 1e-10)  # losses below 1e-10·max are all "trained": one colour
    mesh = None
    for ax, norm in zip(axes[0], norms):
        g = df[df["norm"] == norm]
        widths = np.array(sorted(g["width"].unique()), dtype=float)
        lrs = np.array(sorted(g["lr"].unique()), dtype=float)
        best = g.groupby(["lr", "width"])["final_loss"].min().unstack("width").reindex(index=lrs, columns=widths)
        Z = best.to_numpy(dtype=float)
        exploded = ~np.isfinite(Z) | (Z > explode_at)
        ax.set_facecolor("0.6")  # grey: exploded
        mesh = ax.pcolormesh(_edges(widths), _edges(lrs), np.ma.masked_where(exploded, Z),
                             norm=LogNorm(vmin=vmin, vmax=vmax), cmap="viridis", shading="flat")
        emp = g.groupby(["width", "seed"])["eta_emp"].first().groupby("width").median().reindex(widths)
        ax.plot(widths, emp.to_numpy(), "ko", ms=4, label="2/λ_max (empirical, init)")
        if "eta_theory" in g:
            th = g.groupby("width")["eta_theory"].first().reindex(widths)
            lab = "2/λ_max (Thm 2.2)" if norm == "none" else "2/(ρα(κ1−κ2)) (Thm 3.3)"
            ax.plot(widths, th.to_numpy(), "r-", lw=2, label=lab)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(widths, [str(int(w)) for w in widths])
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xlabel("M (width)")
        ax.set_ylabel("η")
        ax.set_title(titles[norm])
        ax.set_ylim(_edges(lrs)[0], _edges(lrs)[-1])
        ax.legend(loc="lower left", fontsize=7)
    if mesh is not None:
        fig.colorbar(mesh, ax=list(axes[0]), label="training loss (min over seeds; grey: exploded)")
    return _save(plt, fig, path)


def _log_eigs(ev: np.ndarray) -> np.ndarray:
    top = max(float(np.max(ev)), 1e-300)
    return np.log(np.maximum(ev, top * 1e-15))


def plot_gram_spectra(eigs: pd.DataFrame, path: str | Path) -> Path:
    """Fig. 6: histograms of log λ_i(G) at the first and last measured epochs.

    Args:
        eigs: columns ``batchnorm, epoch, index, eigenvalue``.
    """
    plt = _plt()
    epochs = sorted(eigs["epoch"].unique())
    shown = [epochs[0], epochs[-1]] if len(epochs) > 1 else epochs
    fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 3.6), squeeze=False)
    for ax, ep in zip(axes[0], shown):
        sub = eigs[eigs["epoch"] == ep]
        allv = _log_eigs(sub["eigenvalue"].to_numpy())
        bins = np.linspace(allv.min(), allv.max(), 40) if allv.size else 10
        for bn in (False, True):
            v = sub[sub["batchnorm"] == bn]["eigenvalue"].to_numpy()
            if v.size:
                ax.hist(_log_eigs(v), bins=bins, alpha=0.6, color=_COLORS[bn], label=_LABELS[bn], density=True)
        ax.set_xlabel("log λ_i(G)")
        ax.set_title(f"penultimate Gram, epoch {ep}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(plt, fig, path)


def _per_epoch(metrics: pd.DataFrame, column: str, ylabel: str, path: str | Path, *,
               hline: float | None = None, logy: bool = False) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for bn in (False, True):
        m = metrics[metrics["batchnorm"] == bn].sort_values("epoch")
        if len(m):
            ax.plot(m["epoch"], m[column], "-o", ms=3, color=_COLORS[bn], label=_LABELS[bn])
    if hline is not None and math.isfinite(hline):
        ax.axhline(hline, color="k", ls="--", lw=1, label=f"log2 C = {hline:.2f}")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(plt, fig, path)


def plot_entropy(metrics: pd.DataFrame, path: str | Path, *, num_classes: int | None = None) -> Path:
    """Fig. 7: predicted-class entropy −Σ p_c log2 p_c per epoch, with log2 C dashed."""
    return _per_epoch(metrics, "entropy", "predicted-class entropy (bits)", path,
                      hline=math.log2(num_classes) if num_classes else None)


def plot_loss(metrics: pd.DataFrame, path: str | Path) -> Path:
    """Fig. 8: training loss (cross-entropy on the evaluation subset) per epoch."""
    return _per_epoch(metrics, "loss", "training loss", path)
