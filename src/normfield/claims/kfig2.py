"""Karakida et al. 2019, §3.4, Fig. 2 / S.2, as its two statements.

(a) ``K-fig2-line``: without normalization, training above the line η = 2/λ_max
    (λ_max of the Fisher at initialization, eq. (23)) explodes in wide networks.
(b) ``K-fig2-mean``: last-layer mean subtraction allows larger learning rates for
    convergence, and they are independent of the width.

Both read one teacher–student grid (:func:`normfield.experiments.train.run_lr_grid`,
memoised here) whose every run is classified converged / collapsed / exploded /
unconverged (:mod:`normfield.train.outcomes`). ``K-fig2`` is an alias running both.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from normfield.claims.registry import ClaimContext, ClaimResult, alias, claim

_MEMO: dict[tuple, tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]] = {}

_PAPER = "Karakida et al. 2019"
_SETUP = "ReLU, L = 3, α_l = C = 1, (σ_w², σ_b²) = (4, 1), full-batch GD on a teacher's labels"


def _grid_settings(ctx: ClaimContext) -> dict[str, Any]:
    from normfield.train.lr_grid import log_lrs

    return ctx.pick(
        smoke=dict(widths=[8, 16], lrs=log_lrs(1e-3, 10.0, 1), seeds=[0], steps=20, samples=32),
        quick=dict(widths=[32, 64, 128, 256], lrs=log_lrs(1e-4, 10.0, 3), seeds=[0, 1], steps=300, samples=128),
        paper=dict(widths=[100, 200, 300, 400, 500, 600, 800, 1000], lrs=log_lrs(1e-5, 100.0, 5),
                   seeds=list(range(10)), steps=1000, samples=1000),
    )


def _grid(ctx: ClaimContext) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """The grid of both normalizations at the context's scale (run once per context)."""
    from normfield.experiments.train import run_lr_grid
    from normfield.train.lr_grid import EXPLODE_AT, LRGridSettings, summarize_lr_grid

    key = (ctx.scale, ctx.seed, ctx.device, str(ctx.out_dir))
    if key not in _MEMO:
        s = _grid_settings(ctx)
        settings = LRGridSettings(widths=tuple(s["widths"]), lrs=tuple(s["lrs"]), replicates=tuple(s["seeds"]),
                                  steps=s["steps"], samples=s["samples"])
        df = run_lr_grid(settings, seed=ctx.seed, sweep=ctx.sweep)
        info = dict(widths=s["widths"], lrs=s["lrs"], seeds=settings.cell_seeds(ctx.seed), steps=s["steps"],
                    samples=s["samples"], depth=3, sw2=4.0, sb2=1.0, activation="relu", alphas=1, outputs=1,
                    explode_at=EXPLODE_AT, dtype="float64")
        _MEMO[key] = (df, summarize_lr_grid(df), info)
    return _MEMO[key]


def _by_width(summ: pd.DataFrame, norm: str, col: str) -> dict[int, float]:
    g = summ[summ["norm"] == norm].sort_values("width")
    return {int(r.width): float(getattr(r, col)) for r in g.itertuples()}


def _counts(rows: pd.DataFrame) -> dict[str, int]:
    return {o: int((rows["outcome"] == o).sum()) for o in ("converged", "collapsed", "exploded", "unconverged")}


def _finite_max(v: pd.Series) -> float:
    v = v[np.isfinite(v)]
    return float(v.max()) if len(v) else math.nan


def _finite_median(v: pd.Series) -> float:
    v = v[np.isfinite(v)]
    return float(v.median()) if len(v) else math.nan


def _scale_note(ctx: ClaimContext, info: dict[str, Any]) -> str:
    return (f"Scale {ctx.scale}: widths {info['widths']}, T = {info['samples']}, {info['steps']} GD steps, "
            f"{len(info['lrs'])} learning rates, seeds {info['seeds']} (paper: T = 1000, 1000 steps, 10 seeds); "
            f"{_SETUP}. λ_max: top eigenvalue of the exact CT×CT dual Fisher of the very student trained "
            "(normfield.fisher.dual.fisher_dual), at initialization and at the end. Outcomes "
            "(normfield.train.outcomes): exploded = final loss > 1e3 or not finite; converged = final loss "
            "≤ 0.1·min(initial loss, E_const), E_const = ½·Var(labels) the loss of the best constant output; "
            "collapsed = finite, not converged, output constant across samples (a hidden layer entirely dead, "
            "or output variance ≤ 1e-12 of the labels'); unconverged = the rest. ")


@claim("K-fig2-line", title="Training above 2/λ_max explodes in wide networks (no normalization)",
       paper=_PAPER, reference="Sec. 3.4, eq. (23), Fig. 2 (left), Fig. S.2",
       statement="Without normalization, gradient descent with a learning rate above the line η = 2/λ_max "
                 "(λ_max of the Fisher at initialization, eq. 23) explodes in sufficiently wide networks, "
                 "and training below the line does not.",
       order=40.0)
def k_fig2_line(ctx: ClaimContext) -> ClaimResult:
    from normfield.train.plots import plot_lr_grid, plot_sharpness_end

    df, summ, info = _grid(ctx)
    none = df[df["norm"] == "none"]
    factor = none["lr"] / none["eta_emp"]
    above, well_below = factor > 1.0, factor < 0.5
    widths = sorted(none["width"].unique())
    wide = none["width"].isin(widths[-2:])
    ex = none["outcome"] == "exploded"
    conv = none["outcome"] == "converged"
    frac_ex = float(ex[above & wide].mean()) if (above & wide).any() else math.nan
    frac_conv = float(conv[above & wide].mean()) if (above & wide).any() else math.nan
    cat = none[above & conv]  # converged above the line: the catapult signature
    below_fin = none[~above & ~ex]
    coll = none[none["outcome"] == "collapsed"]
    ok_below = not bool((well_below & ex).any())
    ok_above = bool(frac_ex >= 0.9) if math.isfinite(frac_ex) else False
    verdict = "PASS" if (ok_below and ok_above) else "FAIL"
    measured = {
        "outcomes_above_line": _counts(none[above]), "outcomes_below_line": _counts(none[~above]),
        "well_below_exploded": int((well_below & ex).sum()), "well_below_total": int(well_below.sum()),
        "fraction_above_exploded_two_widest": frac_ex,
        "fraction_above_converged_two_widest": frac_conv,
        "converged_up_to_factor": _by_width(summ, "none", "converged_up_to_factor"),
        "stop_converging_factor": _by_width(summ, "none", "stop_converging_factor"),
        "converged_above_line": int(len(cat)),
        "converged_above_line_eta_lambda_end_max": _finite_max(cat["eta_lambda_end"]),
        "converged_above_line_eta_lambda_end_median": _finite_median(cat["eta_lambda_end"]),
        "converged_above_line_loss_rose": int(cat["loss_rose"].astype(bool).sum()),
        "below_line_not_exploded": int(len(below_fin)),
        "below_line_monotone": int(below_fin["monotone"].astype(bool).sum()),
        "collapsed": int(len(coll)),
        "collapsed_by_detector": {str(k): int(v) for k, v in coll["collapse_detector"].value_counts().items()},
        "collapsed_eta_lambda_end_median": _finite_median(coll["eta_lambda_end"]),
        "collapsed_final_over_constant_loss_median": _finite_median(coll["final_loss"] / coll["constant_loss"]),
        "eta_emp_2_over_lambda_max": _by_width(summ, "none", "eta_emp"),
        "eta_theory": _by_width(summ, "none", "eta_theory"),
    }
    expected = {
        "well_below_exploded": "0 (η < ½·2/λ_max never explodes)",
        "fraction_above_exploded_two_widest": ">= 0.9 (runs above 2/λ_max(init) explode at the two widest widths)",
    }
    notes = _scale_note(ctx, info) + (
        "η is compared with each run's own 2/λ_max at initialization (factor = η·λ_max(init)/2); "
        "converged_up_to_factor / stop_converging_factor: the largest factor at which some seed converged, "
        "and the next factor of the grid, per width. The quick scale adds M = 256 so that the two widest "
        "widths (128, 256) are 4-8 times the narrowest. ")
    failure = ""
    if verdict == "FAIL":
        failure = "not-reproduced" if (ok_below and len(cat)) else "unexplained"
        notes += (
            f"Statement not reproduced: {measured['outcomes_above_line']['converged']} of "
            f"{int(above.sum())} runs above the line converge (fraction converged at the two widest widths "
            f"{frac_conv:.2f}, exploded {frac_ex:.2f}). Cause, measured: catapult dynamics. Every converged run "
            f"above the line ends with η·λ_max(end) ≤ {measured['converged_above_line_eta_lambda_end_max']:.3g} "
            f"(median {measured['converged_above_line_eta_lambda_end_median']:.3g}): its sharpness fell below 2/η, "
            f"and {measured['converged_above_line_loss_rose']} of {len(cat)} had a loss that first rose above its "
            f"initial value, while {measured['below_line_monotone']} of {len(below_fin)} runs below the line that "
            "did not explode decreased monotonically. So 2/λ_max at initialization bounds monotone descent, not "
            "where runs explode; eq. (23) holds at the minimum reached, whose sharpness is lower. ")
    if len(coll):
        notes += (f"{len(coll)} run{'s' if len(coll) > 1 else ''} collapsed (detectors {measured['collapsed_by_detector']}): the ReLU units "
                  "died, the output is constant and the loss stays at E_const (median final/E_const "
                  f"{measured['collapsed_final_over_constant_loss_median']:.3g}, η·λ_max(end) median "
                  f"{measured['collapsed_eta_lambda_end_median']:.3g}); the 1e3 threshold alone would count them "
                  "as stable. ")
    figs = [plot_lr_grid(none, ctx.figure_path("K-fig2-line_lr_grid")),
            plot_sharpness_end(none, ctx.figure_path("K-fig2-line_sharpness_end"))]
    return ClaimResult(verdict=verdict, measured=measured, expected=expected, settings=dict(info),
                       figures=figs, data={"lr_grid": df, "lr_grid_summary": summ}, notes=notes, failure=failure)


def _slope(widths: np.ndarray, etas: np.ndarray) -> float:
    """Least-squares slope of log η against log M (NaN where fewer than 2 finite points)."""
    ok = np.isfinite(etas) & (etas > 0)
    if ok.sum() < 2:
        return math.nan
    return float(np.polyfit(np.log(widths[ok]), np.log(etas[ok]), 1)[0])


@claim("K-fig2-mean", title="Mean subtraction allows larger, width-independent learning rates",
       paper=_PAPER, reference="Sec. 3.4, Fig. 2 (right), Fig. S.2",
       statement="With last-layer mean subtraction, gradient descent converges at larger learning rates than "
                 "without normalization, and the largest such learning rate does not depend on the width.",
       order=40.5)
def k_fig2_mean(ctx: ClaimContext) -> ClaimResult:
    from normfield.train.plots import plot_lr_grid

    df, summ, info = _grid(ctx)
    mean_c = _by_width(summ, "last-mean", "largest_converged_lr")
    none_c = _by_width(summ, "none", "largest_converged_lr")
    w = np.array(sorted(mean_c), dtype=float)
    slope_mean = _slope(w, np.array([mean_c[int(v)] for v in w]))
    slope_none = _slope(w, np.array([none_c.get(int(v), math.nan) for v in w]))
    lrs = info["lrs"]
    lr_step = float(np.log(lrs[1] / lrs[0])) if len(lrs) > 1 else math.nan
    slope_res = lr_step / float(np.log(w.max() / w.min())) if w.size > 1 else math.nan
    ratios = {int(v): mean_c[int(v)] / none_c[int(v)] if none_c.get(int(v), 0) > 0 else math.nan for v in w}
    widest = int(w.max())
    ok_larger = bool(ratios[widest] > 1.0) and all(r >= 1.0 for r in ratios.values() if math.isfinite(r))
    ok_flat = bool(abs(slope_mean) <= slope_res) if math.isfinite(slope_mean) else False
    verdict = "PASS" if (ok_larger and ok_flat) else "FAIL"
    measured = {
        "largest_converged_lr": {"last-mean": mean_c, "none": none_c},
        "largest_stable_lr": {"last-mean": _by_width(summ, "last-mean", "largest_stable_lr"),
                              "none": _by_width(summ, "none", "largest_stable_lr")},
        "converged_lr_ratio_mean_over_none": ratios,
        "slope_logeta_logM_mean_subtraction": slope_mean,
        "slope_logeta_logM_none": slope_none,
        "slope_resolution": slope_res,
        "outcomes_mean_subtraction": _counts(df[df["norm"] == "last-mean"]),
        "eta_emp_2_over_lambda_max": _by_width(summ, "last-mean", "eta_emp"),
        "eta_theory": _by_width(summ, "last-mean", "eta_theory"),
    }
    expected = {
        "converged_lr_ratio_mean_over_none": "> 1 at the widest width and >= 1 at every width (larger η converge)",
        "slope_logeta_logM_mean_subtraction": "|slope| <= slope_resolution (width-independent; no normalization "
                                              "gives -1)",
    }
    notes = _scale_note(ctx, info) + (
        "Largest converging η per width: the largest η at which some seed converged (Fig. S.2 plots the "
        "minimum loss over trials). What is checked is the paper's sentence, 'it allows larger learning rates "
        "for convergence and they are independent of width': (i) larger: the ratio to the no-normalization "
        "value exceeds 1 at the widest width and is never below 1; (ii) width-independent: the log-log slope "
        f"in M is zero within the grid's resolution ±{slope_res:.2f} (one η step over the width range). An earlier "
        "criterion asked for a ratio >= 10 at the widest width; the paper states no factor, and at fixed T the "
        "no-normalization limit falls like 1/M, so any fixed factor is a statement about the widths run, not "
        "the paper's. ")
    if verdict == "FAIL":
        notes += ("Failed: " + ("mean subtraction did not converge at larger η " if not ok_larger else "")
                  + ("the largest converging η changes with width beyond the grid resolution" if not ok_flat
                     else "") + ". ")
    fig = plot_lr_grid(df, ctx.figure_path("K-fig2-mean_lr_grid"))
    return ClaimResult(verdict=verdict, measured=measured, expected=expected, settings=dict(info), figures=[fig],
                       data={"lr_grid": df, "lr_grid_summary": summ}, notes=notes)


alias("K-fig2", ["K-fig2-line", "K-fig2-mean"])
