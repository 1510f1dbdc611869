"""Benchmark: ``nf.analyze`` on a CIFAR ResNet-18 and a small ViT, as a multiple of one forward+backward.

Targets (all ratios measured in this one run, on the machine it runs on):

* ResNet-18 (CIFAR-style, 11.2M parameters at width 64), batch 128 of 3×32×32,
  float32, every default (Lanczos to 1e-4, trace to ±1 %, top-5, the layer
  Grams): at most 60× one forward+backward of the batch; with
  ``what_if="last-mean"`` at most 100×; λ_max within 1e-3 and tr F* within 3 %
  of a tightly converged reference (Lanczos to 1e-6; trace to a 0.1 % standard
  error, or exact where that is cheap);
* PyHessian-style power iteration (v ← F*v/‖F*v‖, Rayleigh quotient) on the
  same F* operator and start vector: at least 3× more Jacobian products than
  ``nf.analyze``'s Lanczos to reach the same λ_max accuracy;
* a ViT-style transformer (≈ 1M parameters, batch 64 of 3×32×32), float32,
  every default: at most 80× one forward+backward.

The baseline (median of 5 forward+backward passes after a warm-up) is measured
before and after each timed analysis, and the analysis is divided by the mean of
the two: the speed of a shared machine drifts by tens of percent over minutes.

``--quick`` runs the same parts at width 16, batch 32, 16×16 images (the ViT at
dim 64, depth 4, batch 32) for development; its ratios are labelled quick. The
optional ``--curvlinops`` part times curvlinops' GGN operator with
``scipy.sparse.linalg.eigsh`` for λ_max on the ResNet (with
``track_running_stats=False``, which that operator needs for train-mode BN).

Usage:  python benchmarks/bench_analyze.py [--quick] [--skip-vit] [--curvlinops] [--json]
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

import normfield as nf
from normfield.analyze._functional import ModelFunction, model_state_guard, select_parameters
from normfield.analyze.ntk import _operator

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def forward_backward_seconds(model, x, repeats: int = 5) -> float:
    """Median wall time of one forward+backward of the batch (train mode, sum of outputs as the loss),
    after one untimed warm-up pass (first-call allocations)."""
    times = []
    with model_state_guard(model):
        for i in range(repeats + 1):
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            model(x).sum().backward()
            if i:
                times.append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    return float(np.median(times))


def _log(msg: str) -> None:
    """Progress on stderr (the table and the JSON line go to stdout at the end)."""
    import sys

    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def timed(f):
    t0 = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t0


def power_iteration(model, x, ref: float, target: float, *, max_iter: int, seed: int = 0) -> dict:
    """PyHessian's power iteration on F*: products to reach |λ − ref| <= target·ref, and where
    PyHessian's own stop rule (relative change < 1e-3) would have stopped."""
    with model_state_guard(model):
        fn = ModelFunction.build(model, x, select_parameters(model, None), dtype=x.dtype, device=x.device)
        op, _, _ = _operator(fn)
        v = torch.as_tensor(np.random.default_rng(seed).standard_normal(op.n), dtype=x.dtype)
        v = v / v.norm()
        lam_prev, hit, pyh = None, None, None
        for it in range(1, max_iter + 1):
            w = op.gram(v)
            lam = float(v.double() @ w.double())
            if hit is None and abs(lam - ref) <= target * ref:
                hit = {"products": 2 * it, "lambda_max": lam}
            if pyh is None and lam_prev is not None and abs(lam - lam_prev) / abs(lam_prev) < 1e-3:
                pyh = {"products": 2 * it, "rel_error": abs(lam - ref) / ref}
            if hit is not None and pyh is not None:
                break
            lam_prev, v = lam, w / w.norm()
    return {"to_target": hit, "pyhessian_stop": pyh, "max_products": 2 * max_iter}


def bench_resnet(a) -> dict:
    rn = _example("resnet18")
    torch.manual_seed(0)
    model = rn.make_model(a.width)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(a.batch, 3, a.image, a.image, generator=g)
    P = sum(p.numel() for p in model.parameters())
    # the machine's speed drifts over minutes: each timed analysis is divided by the mean of the
    # forward+backward measured just before and just after it
    fb = [forward_backward_seconds(model, x)]
    _log(f"ResNet-18 width {a.width}, P={P}, batch {a.batch}: forward+backward {fb[0]:.3f} s")
    res, t = timed(lambda: nf.analyze(model, x, dtype="float32"))
    fb.append(forward_backward_seconds(model, x))
    t_fb = 0.5 * (fb[0] + fb[1])
    _log(f"defaults: {t:.1f} s = {t / t_fb:.1f}x (forward+backward {fb[0]:.3f} s before, {fb[1]:.3f} s after), "
         f"{res.settings['products']} products ({res.fisher.method}, route {res.fisher.route})")
    if a.skip_what_if:
        res_w, t_w, t_fb_w = None, math.nan, math.nan
    else:
        res_w, t_w = timed(lambda: nf.analyze(model, x, dtype="float32", what_if="last-mean"))
        fb.append(forward_backward_seconds(model, x))
        t_fb_w = 0.5 * (fb[1] + fb[2])
        _log(f"what_if: {t_w:.1f} s = {t_w / t_fb_w:.1f}x (after: {fb[2]:.3f} s), "
             f"{res_w.settings['products']} products")
    n = res.fisher.samples * res.fisher.outputs
    ref_trace = "exact" if n <= 400 else "hutchinson"
    # reference: λ_max to a 1e-6 residual (the true error is ≈ r²/gap, far smaller), the trace exact or
    # to a 0.2 % standard error (5× tighter than the default's 1 %)
    ref, t_ref = timed(lambda: nf.analyze(model, x, dtype="float32", layers="none", tol=1e-6, k=1,
                                          trace=ref_trace, trace_rtol=2e-3, seed=7))
    _log(f"reference: {t_ref:.1f} s, lambda_max {ref.lambda_max:.7g}, trace {ref.fisher.trace:.6g}")
    lam_err = abs(res.lambda_max - ref.lambda_max) / ref.lambda_max
    tr_err = abs(res.fisher.trace - ref.fisher.trace) / ref.fisher.trace
    target = max(lam_err, 1e-4)
    pw = power_iteration(model, x, ref.lambda_max, target, max_iter=a.power_iter)
    _log(f"power iteration: {pw}")
    # nf.analyze's Lanczos products for λ_max alone to the same accuracy (k=1, same tolerance)
    lz1, t_lz1 = timed(lambda: nf.analyze(model, x, dtype="float32", layers="none", k=1,
                                          trace="exact" if n <= 64 else "hutchinson", probes=2))
    lanczos_products = lz1.fisher.products - 2
    _log(f"lambda_max alone: {lanczos_products} products, {lz1.lambda_max:.7g}")
    out = {
        "model": f"ResNet-18 width {a.width}", "P": P, "batch": a.batch, "image": a.image, "C": 10,
        "forward_backward_s": t_fb, "forward_backward_runs_s": fb, "analyze_s": t, "ratio": t / t_fb,
        "products": res.settings["products"], "analyze_what_if_s": t_w, "ratio_what_if": t_w / t_fb_w,
        "products_what_if": res_w.settings["products"] if res_w is not None else None,
        "lambda_max": res.lambda_max, "lambda_max_ref": ref.lambda_max, "lambda_max_rel_err": lam_err,
        "lambda_max_rel_error_estimate": res.fisher.lambda_max_rel_error,
        "trace": res.fisher.trace, "trace_stderr": res.fisher.trace_stderr, "trace_ref": ref.fisher.trace,
        "trace_ref_stderr": ref.fisher.trace_stderr, "trace_rel_err": tr_err, "trace_method": res.fisher.method,
        "route": res.fisher.route, "reference_s": t_ref,
        "lambda_max_last_mean": res_w.what_if["last-mean"].lambda_max if res_w is not None else None,
        "lanczos_products_lambda_max": lanczos_products, "lambda_max_alone_s": t_lz1, "power": pw,
    }
    hit = pw["to_target"]
    out["power_over_lanczos"] = (hit["products"] / lanczos_products) if hit else None
    # not there within max_products: the ratio is at least this
    out["power_over_lanczos_at_least"] = (hit or {"products": pw["max_products"]})["products"] / lanczos_products
    if a.curvlinops:
        out["curvlinops"] = bench_curvlinops(model, x, ref.lambda_max)
    return out


def bench_curvlinops(model, x, ref: float) -> dict:
    """curvlinops' GGN (MSE, sum) = 2 Jᵀ J, eigsh for λ_max; F* λ_max = GGN λ_max / (2T).

    eigsh gets nf.analyze's float32 default accuracy (ARPACK's tol: Ritz residual <= tol·|θ|, the
    same rule as nf.analyze's Lanczos), and its GGN products are counted.
    """
    import copy

    from curvlinops import GGNLinearOperator
    from scipy.sparse.linalg import LinearOperator, eigsh

    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.track_running_stats = False
            mod.running_mean = mod.running_var = mod.num_batches_tracked = None
    params = [p for p in m.parameters() if p.requires_grad]
    y = torch.zeros(x.shape[0], 10)
    op = GGNLinearOperator(m, torch.nn.MSELoss(reduction="sum"), params, [(x, y)], check_deterministic=False)
    sp = op.to_scipy() if hasattr(op, "to_scipy") else op
    count = [0]

    def mv(v):
        count[0] += 1
        return sp @ v

    counted = LinearOperator(sp.shape, matvec=mv, dtype=sp.dtype)
    t0 = time.perf_counter()
    w = eigsh(counted, k=1, which="LA", tol=1e-4, return_eigenvectors=False)
    t = time.perf_counter() - t0
    lam = float(w[0]) / (2 * x.shape[0])
    return {"seconds": t, "lambda_max": lam, "rel_err": abs(lam - ref) / ref, "ggn_products": count[0], "tol": 1e-4}


def bench_vit(a) -> dict:
    vit = _example("vit")
    torch.manual_seed(0)
    model = vit.make_model(a.vit_dim, a.vit_depth, image=a.vit_image)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(a.vit_batch, 3, a.vit_image, a.vit_image, generator=g)
    fb = [forward_backward_seconds(model, x)]
    res, t = timed(lambda: nf.analyze(model, x, dtype="float32"))
    fb.append(forward_backward_seconds(model, x))
    t_fb = 0.5 * (fb[0] + fb[1])
    return {"model": f"ViT dim {a.vit_dim} depth {a.vit_depth}", "P": sum(p.numel() for p in model.parameters()),
            "batch": a.vit_batch, "forward_backward_s": t_fb, "forward_backward_runs_s": fb, "analyze_s": t,
            "ratio": t / t_fb,
            "products": res.settings["products"], "lambda_max": res.lambda_max,
            "lambda_max_rel_error_estimate": res.fisher.lambda_max_rel_error, "trace": res.fisher.trace,
            "trace_stderr": res.fisher.trace_stderr, "route": res.fisher.route, "method": res.fisher.method}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="width 16, batch 32, 16x16 images (development)")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--image", type=int, default=32)
    ap.add_argument("--power-iter", type=int, default=150)
    ap.add_argument("--skip-vit", action="store_true")
    ap.add_argument("--skip-resnet", action="store_true")
    ap.add_argument("--skip-what-if", action="store_true", help="the ResNet without the what_if='last-mean' run")
    ap.add_argument("--curvlinops", action="store_true")
    ap.add_argument("--json", action="store_true", help="only the JSON line")
    a = ap.parse_args()
    a.vit_dim, a.vit_depth, a.vit_batch, a.vit_image = 128, 8, 64, 32
    if a.quick:
        a.width, a.batch, a.image = 16, 32, 16
        a.vit_dim, a.vit_depth, a.vit_batch, a.vit_image = 64, 4, 32, 16
    out = {"quick": a.quick, "threads": torch.get_num_threads(), "torch": torch.__version__}
    if not a.skip_resnet:
        out["resnet18"] = bench_resnet(a)
    if not a.skip_vit:
        out["vit"] = bench_vit(a)
    if not a.json:
        label = " (quick)" if a.quick else ""
        if "resnet18" in out:
            r = out["resnet18"]
            print(f"{r['model']}{label}: P={r['P']}, batch {r['batch']}, {r['image']}x{r['image']}, "
                  f"{out['threads']} threads; one forward+backward {r['forward_backward_s']:.3f} s (runs: "
                  + ", ".join(f"{v:.3f}" for v in r["forward_backward_runs_s"]) + " s)")
            print(f"  analyze (defaults, layer Grams): {r['analyze_s']:.1f} s = {r['ratio']:.1f}x  [target <= 60x], "
                  f"{r['products']} products, route {r['route']}")
            print(f"  + what_if='last-mean':           {r['analyze_what_if_s']:.1f} s = {r['ratio_what_if']:.1f}x  "
                  f"[target <= 100x], {r['products_what_if']} products")
            print(f"  lambda_max {r['lambda_max']:.7g} vs reference {r['lambda_max_ref']:.7g}: rel. error "
                  f"{r['lambda_max_rel_err']:.2e} [target <= 1e-3] (estimate {r['lambda_max_rel_error_estimate']:.1e})")
            print(f"  tr F* {r['trace']:.6g} ± {r['trace_stderr']:.2g} vs reference {r['trace_ref']:.6g}: rel. error "
                  f"{100 * r['trace_rel_err']:.2f} % [target <= 3 %] ({r['trace_method']})")
            hit = r["power"]["to_target"]
            print(f"  lambda_max alone: Lanczos {r['lanczos_products_lambda_max']} products; power iteration "
                  + (f"{hit['products']} products to the same accuracy ({r['power_over_lanczos']:.1f}x) [target >= 3x]"
                     if hit else f"not there within {r['power']['max_products']} products (>= "
                     f"{r['power_over_lanczos_at_least']:.1f}x) [target >= 3x]"))
            if "curvlinops" in r:
                c = r["curvlinops"]
                print(f"  curvlinops GGN + eigsh (tol 1e-4): {c['seconds']:.1f} s, {c['ggn_products']} GGN products, "
                      f"lambda_max {c['lambda_max']:.7g}; nf.analyze lambda_max alone (k=1, 2 probes, no layers) "
                      f"{r['lambda_max_alone_s']:.1f} s [target: no slower]")
        if "vit" in out:
            v = out["vit"]
            print(f"{v['model']}{label}: P={v['P']}, batch {v['batch']}; forward+backward {v['forward_backward_s']:.3f} s; "
                  f"analyze {v['analyze_s']:.1f} s = {v['ratio']:.1f}x [target <= 80x], {v['products']} products, "
                  f"route {v['route']}")
    print(json.dumps(out, default=float))


if __name__ == "__main__":
    main()
