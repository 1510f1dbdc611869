"""Figures of the training experiments: thin plots of the tidy DataFrames.

* :func:`plot_lr_grid` — Karakida et al. 2019, Fig. 2 / S.2: final loss over (M, η), outcomes coloured.
* :func:`plot_sharpness_end` — η·λ_max at the end of training against η/(2/λ_max at init).
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

__all__ = ["plot_lr_grid", "plot_sharpness_end", "plot_gram_spectra", "plot_entropy", "plot_loss"]

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


def _outcome_map(g: pd.DataFrame, lrs: np.ndarray, widths: np.ndarray, explode_at: float) -> np.ndarray:
    """Per (η, M) cell the outcome shown: 0 a finite loss, 1 collapsed (no seed better), 2 exploded (all seeds).

    Without an ``outcome`` column, 2 where the minimum-over-seeds loss is > ``explode_at`` or not finite.
    """
    best = g.groupby(["lr", "width"])["final_loss"].min().unstack("width").reindex(index=lrs, columns=widths)
    Z = best.to_numpy(dtype=float)
    code = np.where(~np.isfinite(Z) | (Z > explode_at), 2, 0)
    if "outcome" in g:
        shown = g.assign(rank=g["outcome"].map({"converged": 0, "unconverged": 0, "collapsed": 1,
                                                "exploded": 2}).fillna(2))
        r = shown.groupby(["lr", "width"])["rank"].min().unstack("width").reindex(index=lrs, columns=widths)
        code = r.to_numpy(dtype=float).astype(int)
    return code


def plot_lr_grid(df: pd.DataFrame, path: str | Path, *, explode_at: float = 1e3) -> Path:
    """Heat map of the final loss (minimum over seeds, Fig. S.2) over width M and η.

    Exploded cells (every seed's loss > ``explode_at`` or not finite) are grey; collapsed
    cells (no seed better than a collapse: constant output, :mod:`normfield.train.outcomes`)
    are magenta. Black dots: the empirical 2/λ_max at initialization (median over seeds);
    red line: the theory (Thm 2.2 without normalization, 2/(ρα(κ1−κ2)) with mean subtraction).

    Args:
        df: rows of :func:`normfield.experiments.train.run_lr_grid`.
        path: PNG path.
    """
    plt = _plt()
    from matplotlib.colors import ListedColormap, LogNorm
    from matplotlib.patches import Patch

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
        code = _outcome_map(g, lrs, widths, explode_at)
        ax.set_facecolor("0.6")  # grey: exploded
        ex, wx = _edges(lrs), _edges(widths)
        ax.pcolormesh(wx, ex, np.ma.masked_where(code != 1, code), cmap=ListedColormap(["magenta"]),
                      shading="flat")
        mesh = ax.pcolormesh(wx, ex, np.ma.masked_where(code != 0, Z), norm=LogNorm(vmin=vmin, vmax=vmax),
                             cmap="viridis", shading="flat")
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
        ax.set_ylim(ex[0], ex[-1])
        handles, _ = ax.get_legend_handles_labels()
        handles += [Patch(color="0.6", label="exploded"), Patch(color="magenta", label="collapsed")]
        ax.legend(handles=handles, loc="lower left", fontsize=7)
    if mesh is not None:
        fig.colorbar(mesh, ax=list(axes[0]), label="training loss (min over seeds)")
    return _save(plt, fig, path)


_OUTCOME_COLORS = {"converged": "tab:green", "unconverged": "tab:olive", "collapsed": "magenta"}


def plot_sharpness_end(df: pd.DataFrame, path: str | Path) -> Path:
    """The catapult check: η·λ_max(end) against η / (2/λ_max(init)) for every run that did not explode.

    Gradient descent that converges at a minimum of sharpness λ needs η·λ < 2 (Karakida et al.
    2019, eq. (23)); runs above the initial line (x > 1) that converge must have lowered their
    sharpness to y ≲ 2. Filled markers: the loss rose above its initial value during training.

    Args:
        df: rows of :func:`normfield.experiments.train.run_lr_grid` (with ``outcome``).
        path: PNG path.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.4, 4.0))
    g = df[df["outcome"] != "exploded"]
    x = g["lr"] / g["eta_emp"]
    for outcome, color in _OUTCOME_COLORS.items():
        for rose, marker in ((False, "o"), (True, "s")):
            m = (g["outcome"] == outcome) & (g["loss_rose"].astype(bool) == rose)
            if m.any():
                ax.scatter(x[m], g["eta_lambda_end"][m], s=18, color=color,
                           facecolors=color if rose else "none",
                           label=f"{outcome}{' (loss rose)' if rose else ''}")
    ax.axhline(2.0, color="k", ls="--", lw=1, label="η·λ_max = 2")
    ax.axvline(1.0, color="r", lw=1, label="η = 2/λ_max(init)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("η / (2/λ_max at init)")
    ax.set_ylabel("η · λ_max at the end")
    ax.legend(fontsize=7)
    fig.tight_layout()
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
