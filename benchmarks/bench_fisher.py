"""Speed and memory of the Fisher dual engines (normfield.fisher.dual); ratios in one run.

Targets:
  1. relu, L = 3, M = T = 4000, norm none: dual build + λ_max < 30 s (float64), peak memory < 2 GiB.
  2. fast route >= 100× faster than the torch.func jacobian-contraction NTK at M = T = 400.
  3. general route within 10× of the fast route where both apply (met only for small T: the
     exact coupled route pays ~C·T more, see docs/fisher.md); [4] times it against the NTK baseline.

Usage:  python benchmarks/bench_fisher.py [--big-width 4000] [--ntk-width 400] [--json]
Target 1 runs in a fresh subprocess so that its peak RSS (ru_maxrss) is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from normfield.fisher.dual import fisher_dual
from normfield.fisher.networks import MLPConfig, init_mlp, mlp_forward, sample_inputs


def _best(fn, repeat: int) -> float:
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts)


def big_case(M: int) -> dict:
    """Target 1, inside this process: build F* and λ_max; report wall time and peak RSS."""
    cfg = MLPConfig("relu", 2.0, 0.0, 3, M, None, 1, M, "none")
    p, X = init_mlp(cfg, 0), sample_inputs(cfg, 1)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (Linux: KiB units)
    t0, c0 = time.perf_counter(), time.process_time()
    r = fisher_dual(p, X, cfg, k=1, vectors=False, keep_dual=False)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"M": M, "T": M, "seconds": dt, "cpu_seconds": cpu, "load_avg_1min": os.getloadavg()[0], "peak_rss_gib": peak, "rss_before_gib": rss0,
            "lambda_max": r.lambda_max, "eig_method": r.eig_method}


def ntk_jacobian_contraction(params, X, cfg) -> torch.Tensor:
    """Baseline: torch.func.jacrev of the full-batch output, contracted per parameter tensor
    (neural-tangents' 'jacobian contraction' NTK), F* = Σ_p J_p J_pᵀ / T."""
    from torch.func import jacrev

    names = [f"{k}{l}" for l in range(len(params)) for k in ("W", "b")]
    flat = {n: t for n, t in zip(names, [x for Wb in params for x in Wb])}

    def f(d):
        ps = [(d[f"W{l}"], d[f"b{l}"]) for l in range(len(params))]
        return mlp_forward(ps, X, cfg).T.reshape(-1)

    n = X.shape[0] * cfg.outputs
    F = torch.zeros(n, n, dtype=X.dtype)
    for name in names:  # one parameter tensor at a time keeps the peak at one J_p
        def g(t, name=name):
            return f({**flat, name: t})

        Jp = jacrev(g)(flat[name]).reshape(n, -1)
        F += Jp @ Jp.T
        del Jp
    return F / X.shape[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--big-width", type=int, default=4000)
    ap.add_argument("--ntk-width", type=int, default=400)
    ap.add_argument("--general-width", type=int, default=400, help="M of the general/fast sweep [3]")
    ap.add_argument("--general-samples", default="10,25,50,100,200,400", help="T values of [3]")
    ap.add_argument("--general-norms", default="none", help="placements of [3] (both routes apply)")
    ap.add_argument("--no-ntk-general", dest="ntk_general", action="store_false",
                    help="skip [4] (general route, middle-bn, vs the jacobian-contraction NTK)")
    ap.add_argument("--case", default="all", choices=["all", "big"])
    ap.add_argument("--skip-big", action="store_true", help="skip target 1 (the M = T = 4000 build)")
    ap.add_argument("--ratio-threads", type=int, default=1,
                    help="torch threads for the ratio targets 2 and 3 (default 1: on a shared machine, "
                    "oversubscribed OpenMP threads make 2-thread timings of small products erratic)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.case == "big":
        print(json.dumps(big_case(a.big_width)))
        return
    out: dict = {"threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}

    # 1. big case in a subprocess (clean peak RSS)
    if not a.skip_big:
        proc = subprocess.run([sys.executable, __file__, "--case", "big", "--big-width", str(a.big_width)],
                              capture_output=True, text=True, check=True)
        big = json.loads(proc.stdout.strip().splitlines()[-1])
        big["target_seconds"], big["target_gib"] = 30.0, 2.0
        big["pass"] = big["seconds"] < 30.0 and big["peak_rss_gib"] < 2.0
        out["big"] = big

    # 2. fast route vs jacobian-contraction NTK (both with --ratio-threads threads)
    if a.ratio_threads > 0:
        torch.set_num_threads(a.ratio_threads)
    out["ratio_threads"] = torch.get_num_threads()
    out["load_avg_1min_start"] = os.getloadavg()[0]
    M = a.ntk_width
    cfg = MLPConfig("relu", 2.0, 0.0, 3, M, None, 1, M, "none")
    p, X = init_mlp(cfg, 0), sample_inputs(cfg, 1)
    # interleaved repeats, best of each (the same estimator for both; the machine is shared)
    t_fast, t_ntk = float("inf"), float("inf")
    for _ in range(2):
        t_fast = min(t_fast, _best(lambda: fisher_dual(p, X, cfg, k=1, vectors=False), 2))
        t0 = time.perf_counter()
        Fntk = ntk_jacobian_contraction(p, X, cfg)
        t_ntk = min(t_ntk, time.perf_counter() - t0)
    Ffast = torch.from_numpy(fisher_dual(p, X, cfg, k=1).dual)
    err = float((Fntk - Ffast).abs().max() / Ffast.abs().max())
    out["ntk"] = {"M": M, "T": M, "fast_s": t_fast, "jacobian_contraction_s": t_ntk, "ratio": t_ntk / t_fast,
                  "max_rel_diff": err, "target_ratio": 100.0, "pass": t_ntk / t_fast >= 100.0}

    # 3. general vs fast where both apply: relu, L = 3, C = 1, M fixed, T swept (the ratio grows ~ C·T)
    fisher_dual(p, X, cfg.replace(norm="middle-bn"), route="general", k=1, vectors=False)  # warm torch.func
    rows = []
    Mg = a.general_width
    for Tg in [int(x) for x in a.general_samples.split(",")]:
        for norm in a.general_norms.split(","):
            cfg = MLPConfig("relu", 2.0, 0.0, 3, Mg, None, 1, Tg, norm)
            p, X = init_mlp(cfg, 0), sample_inputs(cfg, 1)
            tf = _best(lambda: fisher_dual(p, X, cfg, route="fast", k=1, vectors=False), 3)
            tg = _best(lambda: fisher_dual(p, X, cfg, route="general", k=1, vectors=False), 2)
            rows.append({"M": Mg, "T": Tg, "norm": norm, "fast_s": tf, "general_s": tg, "ratio": tg / tf})
    out["general_vs_fast"] = rows

    # 4. general route (middle-bn: the only exact route) vs the jacobian-contraction NTK at M = T
    if a.ntk_general:
        M = a.ntk_width
        cfg = MLPConfig("relu", 2.0, 0.0, 3, M, None, 1, M, "middle-bn")
        p, X = init_mlp(cfg, 0), sample_inputs(cfg, 1)
        t0 = time.perf_counter()
        Fg = torch.from_numpy(fisher_dual(p, X, cfg, route="general", k=1, vectors=False).dual)
        tg = time.perf_counter() - t0
        t0 = time.perf_counter()
        Fntk = ntk_jacobian_contraction(p, X, cfg)
        tn = time.perf_counter() - t0
        err = float((Fntk - Fg).abs().max() / Fg.abs().max())
        out["ntk_general"] = {"M": M, "T": M, "norm": "middle-bn", "general_s": tg, "jacobian_contraction_s": tn,
                              "ratio": tn / tg, "max_rel_diff": err}
    out["load_avg_1min_end"] = os.getloadavg()[0]
    if a.json:
        print(json.dumps(out))
        return
    b = out.get("big")
    if b:
        print(f"[1] relu L=3 M=T={b['M']} none: dual + λ_max {b['seconds']:.1f} s wall, {b['cpu_seconds']:.1f} s CPU "
            f"(load {b['load_avg_1min']:.1f} on {out['cpu_count']} cores; target < 30 s), peak RSS "
            f"{b['peak_rss_gib']:.2f} GiB (target < 2; {b['rss_before_gib']:.2f} GiB before the build)  "
            f"{'PASS' if b['pass'] else 'FAIL'}")
    n = out["ntk"]
    print(f"[2] M=T={n['M']}: fast {n['fast_s'] * 1e3:.0f} ms, torch.func jacobian-contraction NTK "
          f"{n['jacobian_contraction_s']:.2f} s, ratio {n['ratio']:.0f}x (target >= 100x), max rel diff "
          f"{n['max_rel_diff']:.1e}  {'PASS' if n['pass'] else 'FAIL'}")
    print(f"[3] general route / fast route (relu (2, 0), L=3, C=1, M={a.general_width}):")
    for r in rows:
        print(f"    M={r['M']:5d} T={r['T']:5d} {r['norm']:8s} fast {r['fast_s'] * 1e3:8.1f} ms  general "
              f"{r['general_s'] * 1e3:9.1f} ms  ratio {r['ratio']:6.1f}x (target <= 10x)")
    first = [r for r in rows if r["norm"] == rows[0]["norm"]]
    if len(first) > 1:
        import math
        r0, r1 = first[0], first[-1]
        slope = math.log(r1["ratio"] / r0["ratio"]) / math.log(r1["T"] / r0["T"])
        print(f"    ratio ~ T^{slope:.2f} between T={r0['T']} and T={r1['T']} (exact coupled route: ~C·T)")
    g = out.get("ntk_general")
    if g:
        print(f"[4] M=T={g['M']} middle-bn: general {g['general_s']:.2f} s, torch.func jacobian-contraction NTK "
              f"{g['jacobian_contraction_s']:.2f} s, ratio {g['ratio']:.1f}x, max rel diff {g['max_rel_diff']:.1e}")
    print(f"torch threads: {out['threads']} for [1], {out['ratio_threads']} for [2]-[4]; cpu count: "
          f"{out['cpu_count']}; load average {out['load_avg_1min_start']:.1f} at [2], {out['load_avg_1min_end']:.1f} at the end")


if __name__ == "__main__":
    main()
