"""Benchmark: the loss-aware curvature and whole data sets on the CIFAR ResNet-18 of examples/.

Targets (ratios measured in this one run):

* **cross-entropy vs squared-loss Fisher at the same accuracy** — ``nf.analyze`` with every default
  (Lanczos to 1e-4 in float32, trace to ±1 %, top-5) for ``loss="cross-entropy"`` and ``loss="mse"``:
  Jacobian products of the first over the second at most 1.2× (the cross-entropy factor B is applied
  inside the function, so a product costs the same; only the spectrum's shape changes the step count).
  Also λ_max alone (:meth:`CurvatureOperator.lanczos`, k = 1) for both.
* **pooled λ_max over a loader of 8 batches vs one batch's λ_max** — Lanczos on the parameter-space
  pooled Fisher (one JVP and one VJP per batch per product) against Lanczos on the first batch's dual,
  both to the same tolerance: products and wall time of the first over 8× the second, at most 1.1.

Passes are counted as Jacobian products (a VJP or a JVP of a whole batch, each about one
forward+backward); wall times are divided by a median forward+backward of one batch measured in
the same run.

``--quick`` (the default on a small machine): width 16, batch 32, 16×16 images; ``--full``: width 64,
batch 128, 32×32.

Usage:  python benchmarks/bench_curvature.py [--full] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import normfield as nf
from normfield.analyze import CurvatureOperator

from bench_analyze import _example, _log, forward_backward_seconds  # the shared baseline and loader


def _resnet(width: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return _example("resnet18").make_model(width)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="width 64, batch 128, 32x32 images")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--part", choices=["all", "loss", "pooled"], default="all",
                    help="run only the loss comparison or only the pooled data set part")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    width, batch, image = (64, 128, 32) if a.full else (16, 32, 16)
    model = _resnet(width)
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(batch, 3, image, image, generator=g) for _ in range(a.batches)]
    x = data[0]
    fb = forward_backward_seconds(model, x)
    _log(f"ResNet-18 width {width}, batch {batch}, {image}x{image}: forward+backward {fb:.3f} s")
    rows, out = [], {"config": {"width": width, "batch": batch, "image": image, "batches": a.batches,
                                "forward_backward_s": fb}}

    if a.part in ("all", "loss"):
        _loss_part(model, x, fb, rows, out)
    if a.part in ("all", "pooled"):
        _pooled_part(model, data, fb, rows, out)
    print(f"{'run':<36} {'products':>9} {'x fwd+bwd':>10} {'lambda_max':>12}")
    for name, p, r, lam in rows:
        print(f"{name:<36} {p:>9d} {r:>10.1f} {lam:>12.6g}")
    if "ce_over_mse_products_analyze" in out:
        print(f"cross-entropy / mse products: analyze {out['ce_over_mse_products_analyze']:.3f}, "
              f"lambda_max {out['ce_over_mse_products_lambda_max']:.3f}   (target <= 1.2)")
    if "pooled" in out:
        B = a.batches
        print(f"pooled {B} batches / ({B} x one batch): products "
              f"{out['pooled']['products_ratio_over_B_times_one']:.3f}, "
              f"time {out['pooled']['seconds_ratio_over_B_times_one']:.3f}   (target <= 1.1)")
    print(json.dumps(out) if a.json else "")


def _loss_part(model, x, fb, rows, out) -> None:
    """Cross-entropy vs mse Fisher at the same accuracy: every default, then λ_max alone."""
    for loss in ("mse", "cross-entropy"):
        t0 = time.perf_counter()
        res = nf.analyze(model, x, loss=loss, layers="none")
        dt = time.perf_counter() - t0
        f = res.fisher
        out[f"analyze_{loss}"] = {"products": res.settings["products"], "seconds": dt, "lambda_max": f.lambda_max,
                                  "lambda_max_rel_error": f.lambda_max_rel_error, "trace": f.trace,
                                  "trace_rel_stderr": f.trace_stderr / f.trace if f.trace else None}
        rows.append((f"analyze {loss} (defaults)", res.settings["products"], dt / fb, f.lambda_max))
        _log(f"analyze {loss}: {res.settings['products']} products, {dt:.1f} s, lambda_max {f.lambda_max:.6g}")
    for loss in ("mse", "cross-entropy"):
        op = CurvatureOperator.build(model, x, loss=loss)
        t0 = time.perf_counter()
        lz = op.lanczos(1, 1e-4)
        dt = time.perf_counter() - t0
        out[f"lambda_max_{loss}"] = {"products": op.products, "seconds": dt, "lambda_max": float(lz.eigenvalues[0])}
        rows.append((f"lambda_max {loss} (k=1, 1e-4)", op.products, dt / fb, float(lz.eigenvalues[0])))
        _log(f"lambda_max {loss}: {op.products} products, {dt:.1f} s")
    out["ce_over_mse_products_analyze"] = out["analyze_cross-entropy"]["products"] / out["analyze_mse"]["products"]
    out["ce_over_mse_products_lambda_max"] = (out["lambda_max_cross-entropy"]["products"]
                                              / out["lambda_max_mse"]["products"])



def _pooled_part(model, data, fb, rows, out) -> None:
    """Pooled λ_max (parameter space) over the batches against the first batch's λ_max (dual)."""
    x = data[0]
    one = CurvatureOperator.build(model, x, loss="cross-entropy")
    t0 = time.perf_counter()
    l1 = one.lanczos(1, 1e-4)
    t1 = time.perf_counter() - t0
    pooled = CurvatureOperator.build(model, data, loss="cross-entropy")
    t0 = time.perf_counter()
    lp = pooled.lanczos(1, 1e-4)
    tp = time.perf_counter() - t0
    B = len(data)
    out["pooled"] = {"one_batch_products": one.products, "one_batch_seconds": t1, "one_batch_steps": l1.products,
                     "pooled_products": pooled.products, "pooled_seconds": tp, "pooled_steps": lp.products,
                     "pooled_lambda_max": float(lp.eigenvalues[0]), "one_batch_lambda_max": float(l1.eigenvalues[0]),
                     "products_ratio_over_B_times_one": pooled.products / (B * one.products),
                     "seconds_ratio_over_B_times_one": tp / (B * t1), "converged": bool(lp.converged)}
    rows.append(("lambda_max one batch (ce)", one.products, t1 / fb, float(l1.eigenvalues[0])))
    rows.append((f"lambda_max pooled {B} batches (ce)", pooled.products, tp / fb, float(lp.eigenvalues[0])))
    _log(f"pooled: {pooled.products} products ({lp.products} steps) vs one batch {one.products} ({l1.products} steps)")


if __name__ == "__main__":
    main()
