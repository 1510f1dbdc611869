"""Benchmark of the Gram-chain engines (normfield.gram.chain).

Targets, ratios measured in one run:

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


def _time(fn, repeat: int = 1) -> tuple[float, float]:
    """Best (wall, CPU) seconds over ``repeat`` calls. CPU time (this process) is what the wall time
    would be on idle cores with 1 thread; on a shared machine the wall time is inflated by load."""
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        best = min(best, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best, best_cpu


_BIG = r"""
import json, sys, threading, time
import torch
torch.set_num_threads(int(sys.argv[3]))
from normfield.gram.chain import simulate_chain

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

simulate_chain("relu", 1000, 10, 2)  # warm up (imports, kernels)
base = rss()
peak = [base]
stop = threading.Event()
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], rss())
        time.sleep(0.005)
th = threading.Thread(target=sample, daemon=True)
th.start()
d, L = int(sys.argv[1]), int(sys.argv[2])
t0, c0 = time.perf_counter(), time.process_time()
r = simulate_chain("relu", d, 10, L, seeds=1, engine="fast")
dt, dc = time.perf_counter() - t0, time.process_time() - c0
stop.set(); th.join()
print(json.dumps({"seconds": dt, "cpu_seconds": dc, "rss_growth_bytes": peak[0] - base}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1, as the sweep runner uses per cell; on a shared machine "
                         "more threads than free cores make every small op wait for the pool)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n, L = 10, 20
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    results = {}
    widths = [500, 1000] if args.quick else [2000, 4000]
    for d in widths:
        for seeds in (1, 10):
            simulate_chain("relu", d, n, 2, seeds=seeds, engine="fast")  # warm-up
            tf, cf = _time(lambda: simulate_chain("relu", d, n, L, seeds=seeds, engine="fast"), repeat=5)
            te, ce = _time(lambda: simulate_chain("relu", d, n, L, seeds=seeds, engine="explicit"), repeat=1)
            results[(d, seeds)] = (tf, te, cf, ce)
            print(f"d={d:5d} n={n} depth={L} seeds={seeds:2d}: wall fast {tf * 1e3:8.2f} ms explicit "
                  f"{te * 1e3:9.1f} ms ratio {te / tf:6.1f}x | CPU fast {cf * 1e3:8.2f} ms explicit "
                  f"{ce * 1e3:9.1f} ms ratio {ce / cf:6.1f}x")
    d_big, L_big = (10_000, 100) if args.quick else (100_000, 1000)
    out = subprocess.run([sys.executable, "-c", _BIG, str(d_big), str(L_big), str(args.threads)], capture_output=True, text=True,
                         check=True)
    big = json.loads(out.stdout.strip().splitlines()[-1])
    dn = d_big * n * 8
    print(f"fast engine d={d_big} n={n} depth={L_big} 1 seed: wall {big['seconds']:.2f} s, CPU "
          f"{big['cpu_seconds']:.2f} s; peak RSS growth "
          f"{big['rss_growth_bytes'] / 2**20:.1f} MiB = {big['rss_growth_bytes'] / dn:.1f} x (d·n float64 = "
          f"{dn / 2**20:.1f} MiB)")
    if not args.quick:
        r2000, r4000 = results[(2000, 1)], results[(4000, 1)]
        print("targets (wall | CPU): ratio@2000 >= 100: {} | {}; ratio@4000 >= 300: {} | {}; "
              "big run < 30 s: {} | {}".format(
                  r2000[1] / r2000[0] >= 100, r2000[3] / r2000[2] >= 100, r4000[1] / r4000[0] >= 300,
                  r4000[3] / r4000[2] >= 300, big["seconds"] < 30, big["cpu_seconds"] < 30))


if __name__ == "__main__":
    main()
