"""Benchmark: the batched learning-rate grid against a one-student-at-a-time loop.

Target: training all learning rates of one width together is at least 3× faster than a
plain loop over learning rates, measured in the same run.

One column of Karakida et al. 2019 Fig. 2: a ReLU student (L = 3, (σ_w², σ_b²) = (4, 1))
of width M on T Gaussian inputs and a teacher's labels, K log-spaced learning rates,
full-batch GD. Three ways, same initialization, same stopping rule (a run stops when
its loss passes 1e10 or stops being finite):

  plain    — for each η: autograd forward/backward, θ ← θ − η∇E (``train_student_plain``);
  loop-K1  — for each η: the batched engine with K = 1 (hand-written backward, no batching);
  batched  — all K learning rates in one stack (``train_students``).

The three must agree (float64): same explosions, and final losses equal to 1e-9 of the
initial loss — checked and printed.

Each comparison runs at every torch thread count in ``--threads`` (default 1 and 2: the
sweep runner pins one thread per cell; two covers a two-core machine), then a table of
the speedups per thread count.

Usage:  python benchmarks/bench_train.py [--widths 32,64,128] [--threads 1,2] [--skip-k1] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from normfield.fisher.networks import MLPConfig, init_mlp, mlp_forward
from normfield.train.lr_grid import log_lrs
from normfield.train.students import train_student_plain, train_students


def bench_column(width: int, samples: int, steps: int, norm: str, lrs: list[float], repeats: int,
                 skip_k1: bool = False) -> dict:
    """Time the three ways on one (width, norm) column; check they agree."""
    cfg = MLPConfig(activation="relu", sw2=4.0, sb2=1.0, depth=3, width=width, outputs=1, samples=samples,
                    norm=norm)
    g = torch.Generator().manual_seed(width)
    X = torch.randn(samples, width, generator=g, dtype=torch.float64)
    student, teacher = init_mlp(cfg, 2 * width + 1), init_mlp(cfg, 2 * width + 2)
    with torch.no_grad():
        y = mlp_forward(teacher, X, cfg)

    def t_best(fn):
        best, out = float("inf"), None
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t0)
        return best, out

    train_student_plain(student, X, y, lrs[0], steps=2, norm=norm)  # warm-up (first-call set-up costs)
    train_students(student, X, y, lrs, steps=2, norm=norm)
    t_plain, plain = t_best(lambda: [train_student_plain(student, X, y, lr, steps=steps, norm=norm) for lr in lrs])
    if skip_k1:
        t_k1, k1 = math.nan, None
    else:
        t_k1, k1 = t_best(lambda: [train_students(student, X, y, [lr], steps=steps, norm=norm) for lr in lrs])
    t_bat, bat = t_best(lambda: train_students(student, X, y, lrs, steps=steps, norm=norm))
    f_plain = np.array([r.final_loss[0] for r in plain])
    f_k1 = np.array([r.final_loss[0] for r in k1]) if k1 is not None else np.full(len(lrs), np.nan)
    ok = ~bat.exploded
    # agreement: float64 rounding differs between the three (summation order), and losses that
    # reach the rounding floor (mean subtraction interpolates to ~1e-30) differ relatively a lot
    # while absolutely negligible; compare on the scale of the initial loss.
    scale = float(bat.initial_loss[0])
    dev_plain = float(np.max(np.abs(bat.final_loss[ok] - f_plain[ok]))) / scale if ok.any() else 0.0
    dev_k1 = float(np.max(np.abs(bat.final_loss[ok] - f_k1[ok]))) / scale if ok.any() else 0.0
    if skip_k1:  # strict JSON: null, not NaN
        t_k1 = dev_k1 = None
    return {
        "width": width, "norm": norm, "exploded": int(bat.exploded.sum()),
        "plain_s": t_plain, "loop_k1_s": t_k1, "batched_s": t_bat,
        "same_explosions": bool(np.array_equal(bat.exploded, np.array([r.exploded[0] for r in plain]))),
        "max_diff_vs_plain_over_initial_loss": dev_plain,
        "max_diff_vs_k1_over_initial_loss": dev_k1,
    }


def run_grid(threads: int, a, lrs: list[float]) -> dict:
    """All columns at one torch thread count."""
    torch.set_num_threads(threads)
    widths = [int(w) for w in a.widths.split(",")]
    norms = [n for n in a.norms.split(",") if n]
    cols = [bench_column(w, a.samples, a.steps, n, lrs, a.repeats, a.skip_k1) for n in norms for w in widths]
    keys = ("plain_s", "batched_s") + (() if a.skip_k1 else ("loop_k1_s",))
    tot = {k: sum(c[k] for c in cols) for k in keys}
    res = {"threads": torch.get_num_threads(), "columns": cols, **{f"total_{k}": v for k, v in tot.items()},
           "speedup_vs_plain": tot["plain_s"] / tot["batched_s"],
           "all_agree": all(c["same_explosions"] and c["max_diff_vs_plain_over_initial_loss"] < 1e-9 for c in cols)}
    if not a.skip_k1:
        res["speedup_vs_loop_k1"] = tot["loop_k1_s"] / tot["batched_s"]
    res["target_met"] = bool(res["speedup_vs_plain"] >= 3.0)
    return res


def print_grid(res: dict, a, n_lrs: int) -> None:
    k1 = not a.skip_k1
    print(f"LR grid: T={a.samples}, {a.steps} GD steps, {n_lrs} learning rates per column, "
          f"{res['threads']} torch thread(s)")
    print(f"{'norm':>9} {'M':>5} {'expl':>4} {'plain s':>8} " + (f"{'K=1 s':>8} " if k1 else "")
          + f"{'batched s':>9} {'x plain':>7} " + (f"{'x K=1':>6} " if k1 else "") + "agree")
    for c in res["columns"]:
        print(f"{c['norm']:>9} {c['width']:>5} {c['exploded']:>4} {c['plain_s']:8.2f} "
              + (f"{c['loop_k1_s']:8.2f} " if k1 else "")
              + f"{c['batched_s']:9.2f} {c['plain_s'] / c['batched_s']:7.2f} "
              + (f"{c['loop_k1_s'] / c['batched_s']:6.2f} " if k1 else "")
              + f"{c['same_explosions'] and c['max_diff_vs_plain_over_initial_loss'] < 1e-9}")
    print(f"total: plain {res['total_plain_s']:.2f} s, "
          + (f"K=1 loop {res['total_loop_k1_s']:.2f} s, " if k1 else "")
          + f"batched {res['total_batched_s']:.2f} s -> {res['speedup_vs_plain']:.2f}x vs plain "
          f"(target >= 3x: {'met' if res['target_met'] else 'NOT met'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", default="32,64,128", help="default: widths of the quick-scale grid")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--norms", default="none,last-mean")
    ap.add_argument("--per-decade", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1, help="best of N timings per method")
    ap.add_argument("--threads", default="1,2",
                    help="comma-separated torch thread counts, each a full comparison (default 1,2: the "
                         "sweep runner pins 1 per cell; 2 = both cores of a two-core machine). Multi-threaded runs "
                         "on a loaded machine wait for time slices: read them with the load average")
    ap.add_argument("--skip-k1", action="store_true", help="skip the K = 1 loop of the engine")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    lrs = log_lrs(1e-4, 10.0, a.per_decade)
    grids = [run_grid(int(t), a, lrs) for t in a.threads.split(",") if t]
    if not a.json:
        for g in grids:
            print_grid(g, a, len(lrs))
            print()
        print("speedup of the batched grid over the plain loop (same thread count):")
        print(f"{'norm':>9} {'M':>5} " + " ".join(f"{str(g['threads']) + ' thr':>7}" for g in grids))
        for i, c in enumerate(grids[0]["columns"]):
            print(f"{c['norm']:>9} {c['width']:>5} "
                  + " ".join(f"{g['columns'][i]['plain_s'] / g['columns'][i]['batched_s']:7.2f}" for g in grids))
        print(f"{'total':>15} " + " ".join(f"{g['speedup_vs_plain']:7.2f}" for g in grids))
    print(json.dumps({"samples": a.samples, "steps": a.steps, "learning_rates": len(lrs), "grids": grids}))


if __name__ == "__main__":
    main()
