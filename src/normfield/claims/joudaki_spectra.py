"""Claims of Joudaki, Daneshmand & Bach (ICML 2023) on spectra: Proposition 4 and Figure 5.

Same pattern as :mod:`normfield.claims.joudaki`: a chain sweep → figure → verdict with the numbers.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import optimize

from normfield.claims.joudaki import LEVEL, PAPER, _fp, _per_run, _sweep
from normfield.claims.registry import ClaimContext, ClaimResult, claim
from normfield.gram.fit import loglog_slope
from normfield.gram.spectra import ks_distance, mp_cdf, mp_quantile, mp_singular_cdf, outlier_mask


# ---------------------------------------------------------------------------------------------
# J-prop4


@claim("J-prop4", title="Bulk of the spectrum of G_l within O(√(n/d)) of b*(1−c*)", paper=PAPER,
       reference="Prop. 4, Cor. 3 (Hoffman–Wielandt)",
       statement="For a deep layer, n − O(1) eigenvalues of G_l lie within O(√(n/d)) of b*(1 − c*); the "
                 "spectral distance to G* is bounded by ‖G_l − G*‖_F.", order=5.0)
def claim_prop4(ctx: ClaimContext) -> ClaimResult:
    from normfield.gram.plots import new_axes, plot_loglog, save_figure

    n, L = 10, ctx.pick(smoke=5, quick=20, paper=50)
    widths = ctx.pick(smoke=[100, 400], quick=[250, 500, 1000, 2000, 4000], paper=[250, 500, 1000, 2000, 4000, 16000])
    K = ctx.pick(smoke=4, quick=20, paper=100)
    acts = ["relu", "tanh"]
    base = {"batch": n, "depth": L, "norm": "bn", "record": [L], "runs": K, "spectrum": True, "inputs": "gaussian"}
    grid = [{"activation": a, "width": w} for a in acts for w in widths]
    df = _sweep(ctx, "J-prop4", base, grid, 10)
    fig, axes = new_axes(len(acts), 1)
    measured, oks = {}, []
    for j, a in enumerate(acts):
        fp = _fp(a, n)
        lam_bulk = fp.diagonal - fp.off_diagonal  # b*(1 − c*)
        gs_sorted = np.sort(fp.eigenvalues)[::-1]
        skip = int(np.argmax(np.abs(gs_sorted - lam_bulk)))  # index of the 1_n eigenvalue in sorted order
        devs, hw_ok, scaled = [], True, {}
        for w in widths:
            sub = df[(df.activation == a) & (df.width == w)]
            ev = np.stack([_per_run(sub, f"eig_{i + 1}", L).sort_values("run").value.to_numpy() for i in range(n)],
                          axis=1)  # (K, n) largest first
            dfp = _per_run(sub, "dist_fixed_point", L).sort_values("run").value.to_numpy()
            sd = np.sqrt(((ev - gs_sorted) ** 2).sum(axis=1))  # spectral_distance(G_l, G*): both sorted
            hw_ok &= bool(np.all(sd <= dfp * (1 + 1e-10)))
            bulk = np.delete(ev, skip, axis=1)
            dev = np.abs(bulk - lam_bulk).max(axis=1)
            devs.append(dev)
            scaled[str(w)] = float(dev.mean() / (lam_bulk * math.sqrt(n / w)))
        f = loglog_slope(widths, devs, level=LEVEL)
        ok = hw_ok and abs(f.slope + 0.5) <= 0.1
        oks.append(ok)
        measured[a] = {"b*(1-c*)": lam_bulk, "bulk_dev_slope_in_d": f.slope, "slope_ci99": f.slope_ci,
                       "hoffman_wielandt_holds_all_runs": hw_ok,
                       "max_bulk_dev_over_lambda_sqrt(n/d)": scaled,
                       "excluded_eigenvalue": "largest" if skip == 0 else "smallest"}
        means = [v.mean() for v in devs]
        plot_loglog(widths, means, lo=[np.quantile(v, 0.05) for v in devs], hi=[np.quantile(v, 0.95) for v in devs],
                    slope=f.slope, intercept=f.intercept, ref_slope=-0.5, ax=axes[0, j], xlabel="width d",
                    ylabel="max bulk |λ_i − b*(1−c*)|")
        axes[0, j].set_title(f"{a}, n={n}, ℓ={L}", fontsize=9)
    path = save_figure(fig, ctx.figure_path("J-prop4"))
    return ClaimResult(
        verdict="PASS" if all(oks) else "FAIL", measured=measured,
        expected="Hoffman–Wielandt √Σ(λ_i−λ*_i)² <= ‖G_l − G*‖_F in every run, and the largest deviation of the "
                 "n − 1 bulk eigenvalues from b*(1−c*) scales as d^{-1/2}: fitted exponent within −0.5 ± 0.1 "
                 "(the MP edge 2√γ + γ, γ = n/d <= 0.04, shifts the exponent by <= 0.05)",
        settings={"n": n, "layer": L, "widths": widths, "runs": K, "activations": acts},
        figures=[path], data={"J-prop4": df},
        notes="The one excluded eigenvalue is the 1_n direction of G* (largest for relu, c* > 0; smallest for "
              "tanh, c* < 0). The constant max_bulk_dev/(b*(1−c*)√(n/d)) is reported per width: "
              "Proposition 4's O(√(n/d)).",
    )


# ---------------------------------------------------------------------------------------------
# J-fig5


def _bulk_normalised(sv: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Pooled bulk singular values (each run's bulk divided by its own median) and outlier counts.

    Outliers are first taken outside the MP(γ) edges (±25%); the bulk law is then fitted (γ_fit,
    minimum KS) and the outliers re-taken outside the MP(γ_fit) edges, so that a bulk wider than
    MP(γ) is not mistaken for spikes. Returns (bulk values, upper counts, lower counts, γ_fit).
    """
    def pool(mask):
        vals = []
        for k in range(sv.shape[0]):
            b = sv[k][~mask[k]]
            vals.append(b / np.median(b))
        return np.concatenate(vals)

    mask = outlier_mask(sv, gamma)
    g_fit = _fit_gamma(pool(mask), gamma)
    mask = outlier_mask(sv, g_fit)
    above = sv > np.median(sv, axis=-1, keepdims=True)
    return pool(mask), (mask & above).sum(axis=1), (mask & ~above).sum(axis=1), g_fit


def _fit_gamma(t: np.ndarray, gamma: float) -> float:
    res = optimize.minimize_scalar(lambda g: ks_distance(t, lambda x: mp_singular_cdf(x, g)),
                                   bounds=(gamma / 5, min(1.0, 20 * gamma)), method="bounded",
                                   options={"xatol": 1e-4 * gamma})
    return float(res.x)


@claim("J-fig5", title="Singular values of h_l against Marchenko–Pastur (γ = n/d); outliers", paper=PAPER,
       reference="Fig. 5, §6.1, Appendix B",
       statement="Singular values of h_l (n = 20, d = 100…1000, l = 10, 20), normalised by their median, follow "
                 "the Marchenko–Pastur law with γ = n/d for common activations; O(1) outliers depend on the "
                 "activation (relu: one along 1_n).", order=6.0)
def claim_fig5(ctx: ClaimContext) -> ClaimResult:
    from normfield.gram.plots import new_axes, plot_singular_histogram, save_figure

    n = 20
    widths = ctx.pick(smoke=[100], quick=[100, 1000], paper=[100, 200, 500, 1000])
    layers = ctx.pick(smoke=[4], quick=[20], paper=[10, 20])
    K = ctx.pick(smoke=5, quick=30, paper=200)
    acts = ["relu", "tanh", "sin", "selu", "sigmoid", "gelu"]
    # layer 1 is recorded too, for the investigation only (not part of the verdict)
    base = {"batch": n, "depth": max(layers), "layers": sorted({1, *layers}), "runs": K}
    grid = [{"activation": a, "width": w} for a in acts for w in widths]
    df = _sweep(ctx, "J-fig5", base, grid, 12, singular=True)
    rng = np.random.default_rng(ctx.seed + 5)
    fig, axes = new_axes(len(widths), len(acts), size=(3.4, 2.4))
    rows, oks, layer1 = [], [], {}
    for w in widths:
        g = n / w
        # baseline: the same statistic for Gaussian (Wishart) matrices of the same size and count
        X = rng.standard_normal((K, w, n))
        t_ref = _bulk_normalised(np.sqrt(np.linalg.eigvalsh(X.transpose(0, 2, 1) @ X)), g)[0]
        ks_ref = ks_distance(t_ref, lambda x: mp_singular_cdf(x, g))
        for i, a in enumerate(acts):
            s1 = df[(df.activation == a) & (df.width == w) & (df.layer == 1) & (df.metric == "sv")]
            g1 = _bulk_normalised(s1.pivot(index="run", columns="index", values="value").to_numpy(), g)[3]
            layer1[f"{a}, d={w}"] = g1 / g
            for layer in layers:
                sub = df[(df.activation == a) & (df.width == w) & (df.layer == layer)]
                sv = sub[sub.metric == "sv"].pivot(index="run", columns="index", values="value").to_numpy()
                t, up, lo, g_fit = _bulk_normalised(sv, g)
                ks = ks_distance(t, lambda x: mp_singular_cdf(x, g))
                m_med = mp_quantile(0.5, g)
                ks_eig = ks_distance(t, lambda x: mp_cdf(x * m_med, g))
                # Under the law, √m·KS of m i.i.d. values has sd ≈ 0.26 (Kolmogorov distribution); the
                # chain's and the Wishart baseline's statistics are compared, so the difference has sd
                # ≈ 0.26·√2/√m; we allow 3 of those (the dependence between the n singular values of one
                # matrix is shared by both and calibrated by the baseline).
                tol = 3 * 0.26 * math.sqrt(2) / math.sqrt(t.size)
                ok = ks <= ks_ref + tol
                oks.append(ok)
                at = sub[sub.metric == "align_top_1n"].value.to_numpy()
                ab = sub[sub.metric == "align_bottom_1n"].value.to_numpy()
                rows.append({"activation": a, "width": w, "layer": layer, "ks_bulk": ks, "ks_wishart_baseline": ks_ref,
                             "ks_tolerance": tol, "ks_vs_eigenvalue_law": ks_eig, "gamma": g, "gamma_fit": g_fit,
                             "gamma_fit_over_gamma": g_fit / g,
                             "upper_outliers_mode": int(np.bincount(up).argmax()),
                             "lower_outliers_mode": int(np.bincount(lo).argmax()),
                             "align_top_eigvec_1n": float(at.mean()), "align_bottom_eigvec_1n": float(ab.mean()),
                             "pass": bool(ok)})
                if layer == max(layers):
                    plot_singular_histogram(t, g, ax=axes[i, widths.index(w)], gamma_fit=g_fit,
                                            title=f"{a}, d={w}, ℓ={layer}: KS={ks:.3f} (Wishart {ks_ref:.3f})")
    path = save_figure(fig, ctx.figure_path("J-fig5"))
    table = pd.DataFrame(rows)
    relu = table[(table.activation == "relu") & (table.width == max(widths))]
    relu_one = bool((relu.upper_outliers_mode == 1).all() and (relu.align_top_eigvec_1n > 0.9).all())
    verdict = "PASS" if all(oks) and relu_one else "FAIL"
    worst = table.sort_values("ks_bulk").iloc[-1]
    big = table[table.width == max(widths)]
    up_1n = [f"{r.activation} (c*={_fp(r.activation, n).c_star:+.3f})" for r in big.itertuples()
             if r.upper_outliers_mode == 1 and r.align_top_eigvec_1n > 0.9]
    lo_1n = [f"{r.activation} (c*={_fp(r.activation, n).c_star:+.3f})" for r in big.itertuples()
             if r.lower_outliers_mode == 1 and r.align_bottom_eigvec_1n > 0.9]
    up_1n, lo_1n = list(dict.fromkeys(up_1n)), list(dict.fromkeys(lo_1n))
    notes = (
        "Investigated: the bulk of the median-normalised singular values of h_l is MP-shaped but wider than MP "
        f"with γ = n/d: the KS distance to the γ = n/d singular-value law is {table.ks_bulk.min():.3f}–"
        f"{table.ks_bulk.max():.3f} against {table.ks_wishart_baseline.min():.3f}–"
        f"{table.ks_wishart_baseline.max():.3f} for Wishart matrices of the same size, and the best-fitting "
        f"ratio is γ_fit ≈ {table.gamma_fit_over_gamma.min():.1f}–{table.gamma_fit_over_gamma.max():.1f} × n/d. "
        "Cause: h_l = W_{l−1} X_{l−1} has rows N(0, G_{l−1}), and G_{l−1} is itself a random matrix whose bulk "
        "fluctuates at O(√(n/d)) (Prop. 4): the spectrum of h_l is the free multiplicative convolution of "
        "MP(γ) with that of G_{l−1}, accumulated over the mixing time of the chain, so its width exceeds "
        f"MP(γ)'s (already γ_fit/γ = {min(layer1.values()):.1f}–{max(layer1.values()):.1f} at layer 1, from i.i.d. "
        "Gaussian inputs, where G_0 is one Wishart-like draw). The MP *eigenvalue* density rescaled to "
        "median 1 (red dashed in the figure; the wrong variable for singular values) happens to be about "
        f"twice as wide and matches better (KS {table.ks_vs_eigenvalue_law.min():.3f}–"
        f"{table.ks_vs_eigenvalue_law.max():.3f}), which may be what the paper's Fig. 5 shows. "
        f"Outliers at d = {max(widths)} (counted outside the edges of the fitted bulk law; mode over runs): one "
        f"upper outlier with the top eigenvector of G_l along 1_n for {', '.join(up_1n) or 'none'}; one lower "
        f"outlier with the bottom eigenvector along 1_n for {', '.join(lo_1n) or 'none'} (the sign of c* in eq. 10 "
        "decides: c* > 0 puts the 1_n eigenvalue b*(1+(n−1)c*) above the bulk, c* < 0 below it). "
        f"Worst case: {worst.activation}, d={worst.width}, ℓ={worst.layer}."
    )
    return ClaimResult(
        verdict=verdict, failure="not-reproduced" if verdict == "FAIL" else "",
        measured={"cases": rows, "relu_one_outlier_along_1n": relu_one, "gamma_fit_over_gamma_at_layer_1": layer1},
        expected="bulk KS distance to the MP singular-value law (γ = n/d) no larger than for Wishart matrices of "
                 "the same size plus 3·0.26·√2/√m (m pooled bulk values); relu: exactly one outlier, along 1_n",
        settings={"n": n, "widths": widths, "layers": layers, "runs": K, "activations": acts,
                  "outliers": "outside (1±0.25)× the median-normalised MP edges at the fitted γ"},
        figures=[path], data={"J-fig5": df, "J-fig5-summary": table}, notes=notes,
    )
