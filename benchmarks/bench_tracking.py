"""Benchmark: sharpness tracking during training, and a language model's cross-entropy Fisher.

Targets:

* **Warm starts.** The quick ResNet-18 of ``examples/track_resnet.py`` (width 8, 64 digits of 8×8,
  full-batch gradient descent on the squared loss at η = 0.6·2/λ_max(θ_0)), tracked every
  ``--every`` steps twice in the same run: warm-started (:class:`normfield.SharpnessTracker`'s
  default) and cold. After the first check, the median over checks of (warm λ_max products)/(cold
  λ_max products) is at most 1/3, and every warm λ_max lies within 2·tol·λ_max of the cold one
  (each run stops with an eigenvalue within tol·θ₁ of its Ritz value: Kahan's residual bound).
  Products are counted (one VJP or JVP each), so the ratio is the same on every machine; the
  seconds are printed too.
* **A GPT-2-style language model** (vocabulary 5000, sequence 32, batch 8, float32): λ_max of its
  cross-entropy Fisher over the vocabulary at every position (dual dimension T·S·V = 1.28M)
  through :class:`normfield.analyze.operator.CurvatureOperator`, never forming a T·S·V × T·S·V
  matrix or the Jacobian; peak memory reported as the growth of the process's maximum resident
  set (``resource.getrusage``) and the peak of Python allocations (``tracemalloc``, which sees the
  Lanczos basis but not torch's buffers).

Usage:  python benchmarks/bench_tracking.py [--steps 200] [--every 20] [--skip-lm] [--json]
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import tracemalloc

import numpy as np
import torch

from bench_analyze import _example  # examples/*.py loaded by path


def warm_against_cold(steps: int, every: int, samples: int = 64, width: int = 8, lr_factor: float = 0.6,
                      seed: int = 0) -> dict:
    """Train the quick ResNet-18 once, with a warm and a cold tracker side by side."""
    import normfield as nf

    ex = _example("track_resnet")
    x, labels = ex.digits_batch(samples)
    y = torch.nn.functional.one_hot(labels, 10).float()
    torch.manual_seed(seed)
    model = ex.make_model(width, in_channels=1, classes=10)
    kw = dict(loss="mse", every=every, trace="none", layers="none", seed=seed)
    warm, cold = nf.SharpnessTracker(model, x, **kw), nf.SharpnessTracker(model, x, warm=False, **kw)
    lr = None
    opt = None
    for step in range(steps + 1):
        if step == 0:
            lam0 = cold.step(0)["lambda_max"]
            lr = lr_factor * 2.0 / lam0
            warm.step(0, lr=lr)
            opt = torch.optim.SGD(model.parameters(), lr=lr)
        else:
            warm.step(step, lr=lr)
            cold.step(step, lr=lr)
        if step == steps:
            break
        opt.zero_grad()
        (0.5 * (model(x) - y).pow(2).sum(1).mean()).backward()
        opt.step()
    fw, fc = warm.frame, cold.frame
    ratio = (fw["lambda_products"] / fc["lambda_products"]).to_numpy()[1:]
    secs = (fw["seconds"] / fc["seconds"]).to_numpy()[1:]
    rel = (np.abs(fw["lambda_max"] - fc["lambda_max"]) / fc["lambda_max"]).to_numpy()
    tol = warm.tol
    return {"checks": len(fw), "lr": lr, "tol": tol, "median_product_ratio": float(np.median(ratio)),
            "median_seconds_ratio": float(np.median(secs)), "max_rel_diff": float(rel.max()),
            "within_2tol": bool(np.all(rel <= 2 * tol)), "warm_products": fw["lambda_products"].tolist(),
            "cold_products": fc["lambda_products"].tolist(), "eta_lambda": fw["eta_lambda"].round(4).tolist(),
            "target_met": bool(np.median(ratio) <= 1 / 3 and np.all(rel <= 2 * tol))}


def language_model(vocab: int = 5000, seq: int = 32, batch: int = 8, seed: int = 0) -> dict:
    """λ_max of a tiny GPT-2's cross-entropy Fisher over its vocabulary, with peak memory."""
    import transformers

    from normfield.analyze.operator import CurvatureOperator

    cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=seq, n_embd=32, n_layer=2, n_head=2,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(seed + 1))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tracemalloc.start()
    t0 = time.perf_counter()
    op = CurvatureOperator.build(model, inputs, loss="cross-entropy", outputs="logits", dtype="float32")
    lz = op.lanczos(1)
    seconds = time.perf_counter() - t0
    _, peak_py = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    dim = op.dim
    return {"vocab": vocab, "seq": seq, "batch": batch, "parameters": op.parameters, "dual_dim": dim,
            "dense_dual_bytes": float(dim) ** 2 * 4, "lambda_max": float(lz.eigenvalues[0]),
            "rel_residual": float(lz.relative_errors[0]), "lanczos_steps": int(lz.products),
            "products": op.products, "seconds": seconds, "peak_rss_growth_mb": (rss1 - rss0) / 1024,
            "peak_python_mb": peak_py / 2**20, "route": op.route_used}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--every", type=int, default=20)
    ap.add_argument("--skip-lm", action="store_true")
    ap.add_argument("--skip-tracking", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    out: dict = {}
    if not a.skip_tracking:
        r = warm_against_cold(a.steps, a.every)
        out["tracking"] = r
        print(f"tracking: {r['checks']} checks, lr {r['lr']:.4g}; warm/cold λ_max products, median "
              f"{r['median_product_ratio']:.3f} (target <= 0.333), seconds {r['median_seconds_ratio']:.3f}; "
              f"max |warm - cold|/cold {r['max_rel_diff']:.2e} (2·tol = {2 * r['tol']:.0e}); "
              f"{'MET' if r['target_met'] else 'MISSED'}")
        print(f"  warm products {r['warm_products']}\n  cold products {r['cold_products']}\n"
              f"  eta*lambda_max {r['eta_lambda']}")
    if not a.skip_lm:
        r = language_model()
        out["language_model"] = r
        print(f"GPT-2 LM (V={r['vocab']}, S={r['seq']}, T={r['batch']}, P={r['parameters']}): dual dim "
              f"{r['dual_dim']} (a dense dual would be {r['dense_dual_bytes'] / 2**40:.1f} TiB); λ_max "
              f"{r['lambda_max']:.5g} (residual {r['rel_residual']:.1e}) in {r['lanczos_steps']} steps, "
              f"{r['products']} products, {r['seconds']:.1f} s; peak RSS growth {r['peak_rss_growth_mb']:.0f} MB, "
              f"peak Python allocations {r['peak_python_mb']:.0f} MB; route {r['route']}")
    if a.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
