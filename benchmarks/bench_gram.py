"""Benchmark of the Gram-chain engines (normfield.gram.chain).

Targets (issue 3, §5), ratios measured in one run:

1. fast vs explicit engine at n = 10, depth 20: >= 100x at d = 2000, >= 300x at d = 4000
   (one seed; also reported with 10 seeds, where the fast engine is vectorised over seeds).
2. fast engine at d = 10^5, n = 10, depth 1000, one seed: under 30 s; peak memory O(d n)
   (resident-set growth of a fresh subprocess, compared with one d×n float64 matrix).

Usage: python benchmarks/bench_gram.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from normfield.gram.chain import simulate_chain


def _time(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


_BIG = r"""
import resource, time, json, sys
import torch
from normfield.gram.chain import simulate_chain
simulate_chain("relu", 1000, 10, 2)  # warm up (imports, kernels)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
d, L = int(sys.argv[1]), int(sys.argv[2])
t0 = time.perf_counter()
r = simulate_chain("relu", d, 10, L, seeds=1, engine="fast")
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": dt, "rss_growth_bytes": (peak - base) * 1024, "final_dist_ok": bool(r.grams.size)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    args = ap.parse_args()
    n, L = 10, 20
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    results = {}
    widths = [500, 1000] if args.quick else [2000, 4000]
    for d in widths:
        for seeds in (1, 10):
            simulate_chain("relu", d, n, 2, seeds=seeds, engine="fast")  # warm-up
            tf = _time(lambda: simulate_chain("relu", d, n, L, seeds=seeds, engine="fast"), repeat=5)
            te = _time(lambda: simulate_chain("relu", d, n, L, seeds=seeds, engine="explicit"), repeat=1)
            results[(d, seeds)] = (tf, te)
            print(f"d={d:5d} n={n} depth={L} seeds={seeds:2d}: fast {tf * 1e3:8.2f} ms  explicit {te * 1e3:9.1f} ms  "
                  f"ratio {te / tf:7.1f}x")
    d_big, L_big = (10_000, 100) if args.quick else (100_000, 1000)
    out = subprocess.run([sys.executable, "-c", _BIG, str(d_big), str(L_big)], capture_output=True, text=True,
                         check=True)
    big = json.loads(out.stdout.strip().splitlines()[-1])
    dn = d_big * n * 8
    print(f"fast engine d={d_big} n={n} depth={L_big} 1 seed: {big['seconds']:.2f} s; peak RSS growth "
          f"{big['rss_growth_bytes'] / 2**20:.1f} MiB = {big['rss_growth_bytes'] / dn:.1f} x (d·n float64 = "
          f"{dn / 2**20:.1f} MiB)")
    if not args.quick:
        r2000, r4000 = results[(2000, 1)], results[(4000, 1)]
        print("targets: ratio@2000 >= 100: {}; ratio@4000 >= 300: {}; big run < 30 s: {}".format(
            r2000[1] / r2000[0] >= 100, r4000[1] / r4000[0] >= 300, big["seconds"] < 30))


if __name__ == "__main__":
    main()
