"""Benchmark: λ_max of the Fisher/NTK dual of a ~10^6-parameter model with T·C = 10^4 outputs.

Target (issue 6, §4): ``nf.analyze``'s matrix-free Lanczos gives λ_max for a
model with ~10^6 parameters and T·C = 10^4 outputs in under 2 minutes on 2 CPU
cores, within 5% of the dense answer where dense fits; compared in the same run
against power iteration as PyHessian does it (v ← F v/‖F v‖, Rayleigh quotient,
no restarts), counting Jacobian products (one VJP or one JVP each) to reach a
relative accuracy of 1e-6.

Parts, all in one run:
  A. dense fits (T·C = ``--dense-samples``·C): dense F* (vmapped VJP/JVP) vs Lanczos;
  B. convergence in Jacobian products to 1e-6 relative accuracy, same operator,
     same start vector: plain Lanczos (full reorthogonalisation; Ritz value per
     step) vs PyHessian power iteration, reference = the dense λ_max;
  C. the target size: ``nf.analyze(method="lanczos")`` on T·C = 10^4, wall time,
     products; then power iteration on the same operator with the same budget of
     products, reporting its relative error against Lanczos' λ_max.

Usage:  python benchmarks/bench_analyze.py [--quick] [--dtype float64]
Prints a table and one JSON line (``--json`` for only the JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
import torch
from torch import nn

import normfield as nf
from normfield.analyze._functional import ModelFunction, model_state_guard, select_parameters
from normfield.analyze.ntk import dual_matvec


def make_model(d_in: int, width: int, classes: int, dtype: torch.dtype, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, width), nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, width),
                         nn.BatchNorm1d(width), nn.ReLU(), nn.Linear(width, classes)).to(dtype)


def operator(model: nn.Module, x: torch.Tensor):
    fn = ModelFunction.build(model, x, select_parameters(model, None), dtype=x.dtype, device=x.device)
    n, T, _, mv = dual_matvec(fn)
    count = [0]

    def matvec(v: np.ndarray) -> np.ndarray:
        count[0] += 2  # one VJP + one JVP
        with torch.no_grad():
            return mv(torch.as_tensor(v, dtype=x.dtype)).double().numpy()

    return n, matvec, count, fn.num_parameters


def lanczos_history(matvec, n: int, steps: int, v0: np.ndarray, ref: float | None = None, rtol: float = 1e-6):
    """Plain Lanczos with full reorthogonalisation; top Ritz value after each step.

    Stops early once the top Ritz value is within ``rtol`` of ``ref`` (if given),
    or its residual bound |β_k s_k| <= 1e-12 θ.
    """
    Q = np.zeros((steps + 1, n))
    q = v0 / np.linalg.norm(v0)
    Q[0] = q
    alpha, beta, hist = [], [], []
    for k in range(steps):
        w = matvec(Q[k])
        a = float(Q[k] @ w)
        w = w - a * Q[k] - (beta[-1] * Q[k - 1] if k > 0 else 0)
        w -= Q[: k + 1].T @ (Q[: k + 1] @ w)  # full reorthogonalisation (twice is enough)
        w -= Q[: k + 1].T @ (Q[: k + 1] @ w)
        b = float(np.linalg.norm(w))
        alpha.append(a)
        Tm = np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)
        th, S = np.linalg.eigh(Tm)
        hist.append(float(th[-1]))
        if ref is not None and abs(hist[-1] - ref) <= rtol * abs(ref):
            break
        if b * abs(S[-1, -1]) <= 1e-12 * abs(th[-1]) or b == 0:
            break
        beta.append(b)
        Q[k + 1] = w / b
    return hist


def power_iteration(matvec, v0: np.ndarray, ref: float, rtol: float, max_products: int):
    """PyHessian's power iteration (hessian_eigenthings / pyhessian.hessian.eigenvalues):
    v ← F v / ‖F v‖, eigenvalue = vᵀ F v; stops at relative error ``rtol`` w.r.t. ``ref``."""
    v = v0 / np.linalg.norm(v0)
    products, lam = 0, 0.0
    while products + 2 <= max_products:
        w = matvec(v)
        products += 2
        lam = float(v @ w)
        if abs(lam - ref) <= rtol * abs(ref):
            return products, lam, True
        v = w / np.linalg.norm(w)
    return products, lam, False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-in", type=int, default=512)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--samples", type=int, default=1000, help="T of the target run (T·C = 10^4 by default)")
    ap.add_argument("--dense-samples", type=int, default=30, help="T of the dense comparison")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not the target)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.d_in, a.width, a.samples, a.dense_samples = 64, 96, 100, 20
    if a.threads:
        torch.set_num_threads(a.threads)
    dt = getattr(torch, a.dtype)
    rtol = 1e-6
    model = make_model(a.d_in, a.width, a.classes, dt, a.seed)
    P = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(a.seed + 1)
    out: dict = {"parameters": P, "dtype": a.dtype, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                 "load_avg_1min": os.getloadavg()[0]}

    # -- A + B: dense fits ----------------------------------------------------------------
    xs = torch.randn(a.dense_samples, a.d_in, generator=g, dtype=dt)
    t0 = time.perf_counter()
    rd = nf.analyze(model, xs, method="dense", layers="none", k=1)
    t_dense = time.perf_counter() - t0
    t0 = time.perf_counter()
    rl = nf.analyze(model, xs, method="lanczos", layers="none", k=1, tol=rtol, trace="hutchinson", probes=2)
    t_lanc = time.perf_counter() - t0
    lam_dense = rd.lambda_max
    out["A"] = {"outputs": a.dense_samples * a.classes, "dense_lambda_max": lam_dense, "dense_s": t_dense,
                "dense_products": rd.fisher.products, "lanczos_lambda_max": rl.lambda_max, "lanczos_s": t_lanc,
                "lanczos_products": rl.fisher.products - 2 * 1,  # minus the Hutchinson VJPs
                "rel_diff": abs(rl.lambda_max - lam_dense) / lam_dense}
    with model_state_guard(model):
        n, mv, cnt, _ = operator(model, xs)
        v0 = np.random.default_rng(a.seed).standard_normal(n)
        h = lanczos_history(mv, n, min(n, 300), v0, ref=lam_dense, rtol=rtol)
        lanczos_products = 2 * len(h)
        lanczos_ok = abs(h[-1] - lam_dense) <= rtol * lam_dense
        pw_products, pw_lam, pw_ok = power_iteration(mv, v0, lam_dense, rtol, max_products=1000)
    out["B"] = {"lanczos_products_to_1e-6": lanczos_products if lanczos_ok else None,
                "power_products_to_1e-6": pw_products if pw_ok else None, "power_reached": pw_ok,
                "power_rel_err_at_stop": abs(pw_lam - lam_dense) / lam_dense, "power_cap": 1000}

    # -- C: the target size ---------------------------------------------------------------------
    x = torch.randn(a.samples, a.d_in, generator=g, dtype=dt)
    t0 = time.perf_counter()
    rc = nf.analyze(model, x, method="lanczos", layers="none", k=1, tol=rtol, trace="hutchinson", probes=8)
    t_target = time.perf_counter() - t0
    lanc_prod = rc.fisher.products - 8
    with model_state_guard(model):
        n, mv, cnt, _ = operator(model, x)
        v0 = np.random.default_rng(a.seed).standard_normal(n)
        t0 = time.perf_counter()
        pw_products_c, pw_lam_c, pw_ok_c = power_iteration(mv, v0, rc.lambda_max, rtol, max_products=lanc_prod)
        t_pw = time.perf_counter() - t0
    out["C"] = {"outputs": a.samples * a.classes, "lanczos_s": t_target, "lanczos_products": lanc_prod,
                "lambda_max": rc.lambda_max, "m_lambda": rc.m_lambda, "target_s": 120.0,
                "meets_target": t_target < 120.0,
                "power_same_budget_products": pw_products_c, "power_same_budget_rel_err": abs(pw_lam_c - rc.lambda_max)
                / rc.lambda_max, "power_same_budget_s": t_pw, "power_reached_1e-6": pw_ok_c}
    if a.json:
        print(json.dumps(out))
        return
    A, B, C = out["A"], out["B"], out["C"]
    print(f"P = {P:,} parameters, {a.dtype}, {out['threads']} threads, load avg {out['load_avg_1min']:.1f}")
    print(f"A  dense fits (T·C={A['outputs']}): dense {A['dense_s']:.1f}s ({A['dense_products']} products), "
          f"Lanczos {A['lanczos_s']:.1f}s ({A['lanczos_products']} products); λ_max {A['lanczos_lambda_max']:.8g} vs "
          f"dense {A['dense_lambda_max']:.8g}: rel diff {A['rel_diff']:.2e} (target < 5e-2); "
          f"speed-up x{A['dense_s'] / A['lanczos_s']:.1f}")
    print(f"B  products to 1e-6 relative accuracy: Lanczos {B['lanczos_products_to_1e-6']}, PyHessian power iteration "
          f"{B['power_products_to_1e-6'] if B['power_reached'] else '>' + str(B['power_cap'])} "
          f"(rel err at stop {B['power_rel_err_at_stop']:.1e})")
    print(f"C  target (T·C={C['outputs']}): Lanczos {C['lanczos_s']:.1f}s, {C['lanczos_products']} products, "
          f"λ_max {C['lambda_max']:.8g} -> {'MEETS' if C['meets_target'] else 'MISSES'} < 120 s; power iteration "
          f"with the same {C['power_same_budget_products']} products: rel err {C['power_same_budget_rel_err']:.1e} "
          f"({C['power_same_budget_s']:.1f}s)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
