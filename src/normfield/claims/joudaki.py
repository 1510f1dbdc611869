"""Claims of Joudaki, Daneshmand & Bach (ICML 2023): Figures 1–4 and Theorem 1
(Proposition 4 and Figure 5: :mod:`normfield.claims.joudaki_spectra`).

Each claim: cells → ``ctx.sweep`` (tidy rows: run, layer, metric, value +
settings) → figure PNG → verdict with the numbers. All simulations use the
fast (exact-in-law) chain engine, vectorised over runs; G* is the exact
fixed point of eq. (10) (:func:`normfield.gram.fixed_point.fixed_point`),
never an average of simulated Gram matrices.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from normfield.claims.registry import ClaimContext, ClaimResult, claim
from normfield.experiments.gram import run_chain
from normfield.gram.cells import ChainSweep
from normfield.gram.fit import fit_theorem1, loglog_slope
from normfield.gram.measure import summarize_chain

PAPER = "Joudaki et al. 2023"
#: Confidence level of every interval a verdict is decided on. This module takes about a dozen
#: interval decisions (J-fig1: 3, J-fig2: 3, J-fig3: 1-2, J-fig4: 2); at 99% each, the family-wise
#: rate of a false FAIL when every claim holds is <= 12 × 1% ≈ 12% (Bonferroni), against ≈ 46% at 95%.
LEVEL = 0.99


# ---------------------------------------------------------------------------------------------
# helpers


def _sweep(ctx: ClaimContext, name: str, base: dict, grid: list[dict], block: int, *,
           singular: bool = False) -> pd.DataFrame:
    """Run a chain sweep with the claim's runner; cell seeds ``1000·seed + 50·block + i``."""
    settings = ChainSweep(name, base, tuple(grid), block, singular)
    return run_chain(settings, seed=ctx.seed, sweep=ctx.sweep)


def _per_run(df: pd.DataFrame, metric: str, layer: int | None = None) -> pd.DataFrame:
    s = df[df.metric == metric]
    if layer is not None:
        s = s[s.layer == layer]
    return s


def _fp(activation: str, n: int):
    from normfield.gram.fixed_point import fixed_point

    return fixed_point(activation, n)


# ---------------------------------------------------------------------------------------------
# J-fig1


@claim("J-fig1", title="Mean-field error grows with depth without BN, plateaus with BN", paper=PAPER,
       reference="Fig. 1, §4.3",
       statement="For n = 5, d = 1000 and 30 runs (the figure uses 10), without normalization and with linear activation the "
                 "distance of G_l to its mean-field prediction keeps growing with depth; with batch norm "
                 "(identity and relu) it converges to a neighbourhood and stays there.",
       order=1.0)
def claim_fig1(ctx: ClaimContext) -> ClaimResult:
    from normfield.gram.plots import new_axes, plot_depth_bands, save_figure

    n, d = 5, ctx.pick(smoke=200, quick=1000, paper=1000)
    L = ctx.pick(smoke=8, quick=60, paper=200)
    K = ctx.pick(smoke=3, quick=30, paper=30)
    cases = [("none", "identity"), ("bn", "identity"), ("bn", "relu")]
    grid = [{"norm": nm, "activation": a} for nm, a in cases]
    base = {"width": d, "batch": n, "depth": L, "runs": K, "inputs": "degenerate", "mean_field": True}
    df = _sweep(ctx, "J-fig1", base, grid, 2)
    measured: dict[str, Any] = {}
    fig, axes = new_axes(1, 1, size=(6, 4))
    ax = axes[0, 0]
    lo_l = max(2, L // 4)
    verdicts = []
    for nm, a in cases:
        sub = df[(df.norm == nm) & (df.activation == a)]
        summ = summarize_chain(sub[sub.layer >= 1])
        label = f"{'BN' if nm == 'bn' else 'no norm'}, {a}"
        plot_depth_bands(summ, metric="dist_mean_field", ax=ax, label=label)
        dm = _per_run(sub, "dist_mean_field").pivot(index="run", columns="layer", values="value")
        key = f"{nm}+{a}"
        # growth exponent of the geometric mean of the distance over runs: slope of mean log dist against
        # log l on [L/4, L]
        # (after the BN transient). Runs are independent: CI by resampling runs (percentile bootstrap).
        # (A per-run exponent is a poor statistic without BN: each run's distance is a |random walk|
        # that may shrink over a window, so per-run slopes scatter widely.)
        ls = np.arange(lo_l, L + 1)
        logD = np.log(dm.loc[:, ls].to_numpy())  # (runs, layers); geometric mean: robust to the heavy
        lx = np.log(ls)                           # tail of the multiplicative walk without BN
        m = float(np.polyfit(lx, logD.mean(0), 1)[0])
        rng = np.random.default_rng(ctx.seed + 1)
        boots = [np.polyfit(lx, logD[rng.integers(0, len(logD), len(logD))].mean(0), 1)[0] for _ in range(2000)]
        ci = tuple(float(v) for v in np.percentile(boots, [50 * (1 - LEVEL), 100 - 50 * (1 - LEVEL)]))
        ok = ci[0] > 0 if nm == "none" else (-0.15 < ci[0] and ci[1] < 0.15)
        measured[key] = {"growth_exponent": m, "growth_exponent_ci99": ci,
                         "dist_at_L": float(dm[L].mean()), "dist_at_L_over_4": float(dm[lo_l].mean())}
        if nm == "bn":
            measured[key]["dist_fixed_point_at_L"] = float(_per_run(sub, "dist_fixed_point", L).value.mean())
        verdicts.append(bool(ok))
    ax.set_ylabel("‖G_ℓ − G_ℓ^MF‖_F (mean field from the same G_0)")
    ax.set_title(f"n={n}, d={d}, {K} runs, 90% bands")
    ax.legend(fontsize=7)
    path = save_figure(fig, ctx.figure_path("J-fig1"))
    verdict = "PASS" if all(verdicts) else "FAIL"
    return ClaimResult(
        verdict=verdict, measured=measured,
        expected={"none+identity": "growth exponent of the geometric-mean distance in l over [L/4, L] > 0 (99% "
                                   "bootstrap CI above 0; a random walk of the log-eigenvalues gives ≈ 0.5)",
                  "bn+identity, bn+relu": "plateau: the same exponent with its 99% CI inside (−0.15, 0.15)"},
        settings={"n": n, "d": d, "depth": L, "runs": K, "inputs": "degenerate (one dominant direction ⟂ 1_n)"},
        figures=[path], data={"J-fig1": df},
        notes="Distances are to the mean-field trajectory 𝒢_ℓ of eq. (3) started from each run's own G_0 "
              "(without BN the mean-field prediction is 𝒢_ℓ = G_0 for a linear network, there is no G*). "
              "With BN and identity activation G* is singular (G*1 = 0); the fast engine uses the symmetric "
              "square root there. Quick scale: depth 60; paper scale: depth 200; both with 30 runs, not the figure's 10: "
              "without BN each run's distance is a multiplicative random walk (log-eigenvalues of G_l diffuse by "
              "O(√(l/d))), so a growth exponent from 10 runs is not decisive — measured at paper scale with 10 runs: "
              "0.33 (99% CI −0.68 to 1.36); with 30 runs: 0.45 (0.02 to 0.87).",
    )


# ---------------------------------------------------------------------------------------------
# J-fig2


@claim("J-fig2", title="Fast approach to a plateau with depth; Theorem 1 shape fit (mixing rate α)",
       paper=PAPER, reference="Fig. 2, Theorem 1, eq. (9)",
       statement="‖G_l − G*‖_F for l = 1..20 at d = 1000, n = 10 decays quickly to a plateau; the curve has "
                 "the Theorem 1 shape c1(1−α)^{l/2} + c2·n/√d.",
       order=2.0)
def claim_fig2(ctx: ClaimContext) -> ClaimResult:
    from normfield.gram.plots import new_axes, plot_depth_bands, save_figure
    from normfield.gram.fit import theorem1_curve

    n, d, L = 10, ctx.pick(smoke=200, quick=1000, paper=1000), ctx.pick(smoke=8, quick=20, paper=20)
    K = ctx.pick(smoke=4, quick=40, paper=200)
    acts = ["relu", "tanh", "selu"]
    base = {"width": d, "batch": n, "depth": L, "runs": K, "inputs": "degenerate", "norm": "bn"}
    df = _sweep(ctx, "J-fig2", base, [{"activation": a} for a in acts], 4)
    fig, axes = new_axes(len(acts), 1)
    measured, oks = {}, []
    for j, a in enumerate(acts):
        sub = df[(df.activation == a) & (df.layer >= 1)]
        Y = _per_run(sub, "dist_fixed_point").pivot(index="run", columns="layer", values="value")
        layers = Y.columns.to_numpy()
        f = fit_theorem1(layers, Y.to_numpy(), batch=n, width=d, method="bootstrap", level=LEVEL,
                         n_boot=ctx.pick(smoke=20, quick=200, paper=500), seed=ctx.seed)
        fp = _fp(a, n)
        ok = (f.alpha_ci[0] > 0.01) and (f.alpha_ci[1] < 0.99) and (f.r2 >= 0.95)
        oks.append(ok)
        measured[a] = {"alpha": f.alpha, "alpha_ci99": f.alpha_ci, "c1": f.c1, "c2": f.c2, "c2_ci99": f.c2_ci,
                       "plateau": f.plateau, "r2": f.r2, "chi2_dof": f.chi2_dof,
                       "dist_at_L": float(Y[L].mean()), "kappa_G*": fp.condition_number}
        ax = axes[0, j]
        plot_depth_bands(summarize_chain(sub), metric="dist_fixed_point", ax=ax, label="simulated (mean, 90%)")
        ll = np.linspace(1, L, 100)
        ax.plot(ll, theorem1_curve(ll, f.alpha, f.c1, f.c2, n, d), "k--", lw=1,
                label=f"fit: α={f.alpha:.2f} [{f.alpha_ci[0]:.2f},{f.alpha_ci[1]:.2f}]")
        ax.set_title(f"{a}: n={n}, d={d}, {K} runs", fontsize=9)
        ax.set_ylabel("‖G_ℓ − G*‖_F")
        ax.legend(fontsize=7)
    path = save_figure(fig, ctx.figure_path("J-fig2"))
    return ClaimResult(
        verdict="PASS" if all(oks) else "FAIL", measured=measured,
        expected="for each activation: the fit c1(1−α)^{l/2} + c2 n/√d describes the mean curve (R² >= 0.95) "
                 "and the 99% bootstrap CI of α lies inside (0.01, 0.99): a positive, finite mixing rate is measured",
        settings={"n": n, "d": d, "layers": f"1..{L}", "runs": K, "inputs": "degenerate", "ci": "bootstrap over runs"},
        figures=[path], data={"J-fig2": df},
        notes="α is the decay rate of the transient of the mean distance, the observable counterpart of the "
              "mixing rate of Assumption 1 (which concerns total variation and is not observable directly). "
              "χ²/dof > 1 means the Theorem 1 shape (a sum, an upper-bound form) is not an exact description "
              "at the resolution of the runs: near the plateau the deterministic transient and the O(n/√d) "
              "fluctuation add in quadrature rather than linearly.",
    )


# ---------------------------------------------------------------------------------------------
# J-fig3


@claim("J-fig3", title="Distance at depth 20 decays as width^{-1/2}", paper=PAPER,
       reference="Fig. 3, Theorem 1",
       statement="‖G_20 − G*‖_F against d ∈ {50, …, 1000} at n = 10 has log–log slope −1/2.", order=3.0)
def claim_fig3(ctx: ClaimContext) -> ClaimResult:
    from normfield.gram.plots import new_axes, plot_loglog, save_figure

    n, L = 10, ctx.pick(smoke=5, quick=20, paper=20)
    widths = ctx.pick(smoke=[50, 100, 200], quick=[50, 100, 200, 500, 1000, 10_000, 100_000],
                      paper=[50, 100, 200, 500, 1000, 10_000, 100_000])
    runs = {w: ctx.pick(smoke=4, quick=30 if w <= 10_000 else 10, paper=100 if w <= 10_000 else 30) for w in widths}
    acts = ctx.pick(smoke=["relu"], quick=["relu"], paper=["relu", "tanh"])
    base = {"batch": n, "depth": L, "norm": "bn", "record": [L], "inputs": "gaussian"}
    grid = [{"activation": a, "width": w, "runs": runs[w]} for a in acts for w in widths]
    df = _sweep(ctx, "J-fig3", base, grid, 6)
    fig, axes = new_axes(len(acts), 1)
    measured, oks = {}, []
    for j, a in enumerate(acts):
        samples = [_per_run(df[(df.activation == a) & (df.width == w)], "dist_fixed_point", L).value.to_numpy()
                   for w in widths]
        f = loglog_slope(widths, samples, level=LEVEL)
        small = loglog_slope(widths[:5], samples[:5], level=LEVEL) if len(widths) >= 5 else f
        oks.append(f.contains(-0.5))
        measured[a] = {"slope": f.slope, "slope_ci99": f.slope_ci, "chi2_dof": f.chi2_dof,
                       "slope_paper_range": small.slope, "slope_paper_range_ci99": small.slope_ci,
                       "mean_dist": {str(w): float(s.mean()) for w, s in zip(widths, samples)}}
        means = [s.mean() for s in samples]
        plot_loglog(widths, means, lo=[np.quantile(s, 0.05) for s in samples],
                    hi=[np.quantile(s, 0.95) for s in samples], slope=f.slope, intercept=f.intercept,
                    ref_slope=-0.5, ax=axes[0, j], xlabel="width d", ylabel=f"‖G_{L} − G*‖_F")
        axes[0, j].set_title(f"{a}, n={n}, ℓ={L}", fontsize=9)
    path = save_figure(fig, ctx.figure_path("J-fig3"))
    return ClaimResult(
        verdict="PASS" if all(oks) else "FAIL", measured=measured,
        expected="log–log slope −0.5 inside the 99% CI of the fitted slope (over all widths)",
        settings={"n": n, "layer": L, "widths": widths, "runs": {str(k): v for k, v in runs.items()},
                  "activations": acts, "engine": "fast"},
        figures=[path], data={"J-fig3": df},
        notes="Widths beyond the paper's 1000 (10^4 and 10^5) use the fast engine (exact in law). "
              "The CI is the weighted least-squares CI of log(mean distance), widened by the Birge ratio "
              "√(χ²/dof) when the points scatter beyond their noise. Checked independently with 200/200/60 runs "
              "(d = 50, 1000, 10^4; seed 123): √d·‖G_20 − G*‖_F = 6.41 ± 0.09, 6.38 ± 0.08, 6.40 ± 0.13 (relu, "
              "n = 10) — flat, i.e. slope −0.50. At the 95% level the quick-scale CI with seed 0 narrowly "
              "excluded −0.5 (a 2σ low fluctuation of the d = 10^4 point); see LEVEL for why verdicts use 99%.",
    )


# ---------------------------------------------------------------------------------------------
# J-fig4


@claim("J-fig4", title="Distance at depth 20 against batch size; Theorem 1's κ(G*)·n/√d form", paper=PAPER,
       reference="Fig. 4, Theorem 1 eq. (5)",
       statement="‖G_20 − G*‖_F grows with the batch size n ∈ {10, …, 50} at d = 1000 and stays below the "
                 "Theorem 1 bound κ(G*)·O(n/√d).", order=4.0)
def claim_fig4(ctx: ClaimContext) -> ClaimResult:
    from normfield.gram.plots import new_axes, plot_loglog, save_figure

    d, L = ctx.pick(smoke=200, quick=1000, paper=1000), ctx.pick(smoke=5, quick=20, paper=20)
    batches = ctx.pick(smoke=[10, 20, 30], quick=[10, 20, 30, 40, 50], paper=[10, 20, 30, 40, 50])
    K = ctx.pick(smoke=4, quick=20, paper=100)
    acts = ctx.pick(smoke=["relu"], quick=["relu", "tanh"], paper=["relu", "tanh"])
    base = {"width": d, "depth": L, "norm": "bn", "record": [L], "runs": K, "inputs": "gaussian"}
    grid = [{"activation": a, "batch": b} for a in acts for b in batches]
    df = _sweep(ctx, "J-fig4", base, grid, 8)
    # the mixing rate α(n) of eq. (5), measured as in J-fig2 (Theorem 1 shape fit from a near-degenerate batch)
    Ka = ctx.pick(smoke=4, quick=30, paper=100)
    base_a = {"width": d, "depth": 20 if ctx.scale != "smoke" else 8, "norm": "bn", "runs": Ka,
              "inputs": "degenerate"}
    dfa = _sweep(ctx, "J-fig4-alpha", base_a, grid, 9)
    fig, axes = new_axes(len(acts), 1)
    measured, oks = {}, []
    for j, a in enumerate(acts):
        samples = [_per_run(df[(df.activation == a) & (df.batch == b)], "dist_fixed_point", L).value.to_numpy()
                   for b in batches]
        f = loglog_slope(batches, samples, level=LEVEL)
        alphas, alpha_cis = [], []
        for b in batches:
            sub = dfa[(dfa.activation == a) & (dfa.batch == b) & (dfa.layer >= 1)]
            Y = _per_run(sub, "dist_fixed_point").pivot(index="run", columns="layer", values="value")
            fa = fit_theorem1(Y.columns.to_numpy(), Y.to_numpy(), batch=b, width=d, method="delta", level=LEVEL)
            alphas.append(fa.alpha)
            alpha_cis.append(fa.alpha_ci)
        alphas = np.array(alphas)
        nb = np.array(batches, dtype=float)
        kap = np.array([_fp(a, b).condition_number for b in batches])
        bound_kn = kap * nb / math.sqrt(d)
        bound = bound_kn / np.sqrt(alphas) * np.sqrt(np.log(d / nb))  # Theorem 1, eq. (5), second term
        pkn = float(np.polyfit(np.log(nb), np.log(bound_kn), 1)[0])
        pb = float(np.polyfit(np.log(nb), np.log(bound), 1)[0])
        means = np.array([s.mean() for s in samples])
        ratio = means / bound
        ok = f.slope_ci[0] > 0 and f.slope_ci[1] <= pb and np.all(ratio <= ratio[0] * 1.05)
        oks.append(bool(ok))
        measured[a] = {"growth_exponent": f.slope, "growth_exponent_ci99": f.slope_ci,
                       "bound_exponent_theorem1": pb, "bound_exponent_kappa_n": pkn, "bare_n_exponent": 1.0,
                       "alpha": {str(b): float(v) for b, v in zip(batches, alphas)},
                       "alpha_ci99": {str(b): tuple(map(float, c)) for b, c in zip(batches, alpha_cis)},
                       "kappa_G*": {str(b): float(k) for b, k in zip(batches, kap)},
                       "dist_over_theorem1_form": {str(b): float(r) for b, r in zip(batches, ratio)},
                       "dist_over_n_sqrt_d": {str(b): float(m * math.sqrt(d) / b) for b, m in zip(batches, means)}}
        ax = axes[0, j]
        plot_loglog(batches, means, lo=[np.quantile(s, 0.05) for s in samples],
                    hi=[np.quantile(s, 0.95) for s in samples], slope=f.slope, intercept=f.intercept,
                    ref_slope=1.0, ax=ax, xlabel="batch n", ylabel=f"‖G_{L} − G*‖_F")
        ax.plot(batches, bound * ratio[0], "r:", label="κ(G*) n α^{-1/2} ln^{1/2}(d/n)/√d (scaled at n=10)")
        ax.legend(fontsize=6)
        ax.set_title(f"{a}, d={d}, ℓ={L}", fontsize=9)
    path = save_figure(fig, ctx.figure_path("J-fig4"))
    verdict = "PASS" if all(oks) else "FAIL"
    return ClaimResult(
        verdict=verdict, failure="not-reproduced" if verdict == "FAIL" else "", measured=measured,
        expected="growth exponent in n: 99% CI above 0 and at most the exponent of Theorem 1's second term "
                 "κ(G*) n α^{-1/2} ln^{1/2}(d/n)/√d (eq. 5; κ(G*) exact, α(n) measured per n as in J-fig2); "
                 "distance / that form non-increasing in n (within 5%): a bound fitted at n = 10 holds for all n",
        settings={"d": d, "layer": L, "batches": batches, "runs": K, "alpha_runs": Ka, "activations": acts},
        figures=[path], data={"J-fig4": df, "J-fig4-alpha": dfa},
        notes=_fig4_notes(measured),
    )


def _fig4_notes(measured: dict) -> str:
    parts = []
    for a, m in measured.items():
        p, (lo, hi) = m["growth_exponent"], m["growth_exponent_ci99"]
        ks, al = m["kappa_G*"], m["alpha"]
        n0, n1 = min(ks, key=int), max(ks, key=int)
        parts.append(f"{a}: distance ∝ n^{p:.2f} (99% CI {lo:.2f}–{hi:.2f}); Theorem 1 form ∝ "
                     f"n^{m['bound_exponent_theorem1']:.2f} (κ(G*)·n alone: n^{m['bound_exponent_kappa_n']:.2f}); "
                     f"κ(G*) {ks[n0]:.3g} → {ks[n1]:.3g}, α {al[n0]:.2f} → {al[n1]:.2f} from n = {n0} to {n1}.")
    return (
        " ".join(parts) + " Finding: the data grow a little faster than the bare n/√d of eq. (9). For relu "
        "κ(G*) grows ∝ n (λ₁ = b*(1+(n−1)c*) along 1_n, c* > 0), so the Theorem 1 form grows like ≈ n² and "
        "bounds the data with room to spare (loosening with n). For tanh c* < 0 and κ(G*) decreases slowly "
        "with n, the measured α barely changes and ln(d/n) decreases, so the Theorem 1 form grows slower than "
        "the data: a bound of that form with an n-independent constant, fitted at n = 10, is crossed at larger "
        "n. Theorem 1 is an O(·) statement and cannot be falsified on a finite range, but its stated "
        "n-dependence does not describe Fig. 4 for tanh."
    )
