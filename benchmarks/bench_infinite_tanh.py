"""Benchmark of the quasi-Monte Carlo routes of normfield.infinite: a tanh BN-MLP.

Target: the NNGP and NTK of Dense → BatchNorm (train) → tanh, repeated, at batch T = 32 and depth
10 (NTK parametrization, σ_w² = 2, σ_b² = 0.1, ε = 1e-5), with a stated error ≤ 1e-3, in ≤ 60 s
on 2 cores. The NTK's entries grow with depth (its Frobenius norm is ≈ 91 at depth 10), so each
kernel's stated error is judged relative to its Frobenius norm (as the exact relu chain's NTK is
held to its tolerance relative to its largest entry); the NNGP's absolute error is printed too.

tanh after batch norm has no closed form: each BatchNorm → tanh pair goes through
``normfield.infinite.qmc_bn`` (replicated scrambled-Sobol sampling with the Jacobian written out,
and the exact polynomial control variate of ``normfield.infinite.bn_poly``), carried through the
whole chain; the stated error is 3 × the standard error over the replicates in Frobenius norm, for
the NNGP and the NTK each. Each step is asked for ``tol/2`` (``kernel(..., tol=)`` is per step;
the chain's error grows by propagation). The same chain run with another seed gives an
independent estimate: the difference of the two runs is printed beside the stated errors (it
should be below √2 × the stated error of one run, most of the time: the stated error is three
standard errors).

Usage: python benchmarks/bench_infinite_tanh.py [--depth 10] [--batch 32] [--tol 1e-3]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from normfield.infinite import Activation, BatchNorm, Dense, kernel, serial

SW2, SB2, EPS = 2.0, 0.1, 1e-5


def chain(depth: int, width: int = 512):
    """Dense → BN → tanh, ``depth`` times (NTK parametrization: the kernels are O(1) at any width)."""
    blocks = []
    for _ in range(depth):
        blocks += [Dense(width, sw2=SW2, sb2=SB2, parametrization="ntk"), BatchNorm(eps=EPS, affine=False),
                   Activation("tanh")]
    return serial(*blocks)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--depth", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tol", type=float, default=1e-3)
    args = ap.parse_args()
    x = np.random.default_rng(0).standard_normal((args.batch, 16))
    net = chain(args.depth)
    runs = []
    for seed in (0, 1):
        t0 = time.perf_counter()
        res = kernel(net, x, tol=args.tol / 2, seed=seed)
        runs.append((time.perf_counter() - t0, res))
    (t, r), (_, r2) = runs
    st = r.state
    nK, nN = float(np.linalg.norm(r.nngp)), float(np.linalg.norm(r.ntk))
    rel = (st.nngp_error / nK, st.ntk_error / nN)
    out = {
        "T": args.batch, "depth": args.depth, "tol": args.tol,
        "seconds": round(t, 2),
        "nngp_error": st.nngp_error, "ntk_error": st.ntk_error,
        "nngp_rel_error": rel[0], "ntk_rel_error": rel[1],
        "nngp_norm": nK, "ntk_norm": nN,
        "nngp_diff_two_seeds": float(np.linalg.norm(r.nngp - r2.nngp)),
        "ntk_diff_two_seeds": float(np.linalg.norm(r.ntk - r2.ntk)),
        "points_per_step": [s.moments.points for lab, s in r.states if "Activation" in lab],
        "target_time_s": 60, "target_rel_error": args.tol,
        "met": bool(t <= 60 and max(rel) <= args.tol),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
