"""Benchmark: sharpness tracking during training, and a language model's cross-entropy Fisher.

Targets:

* **Warm starts.** The quick ResNet-18 of ``examples/track_resnet.py`` (width 8, 64 digits of 8×8,
  full-batch gradient descent on the squared loss at η = 0.6·2/λ_max(θ_0)), tracked every
  ``--every`` steps twice in the same run: warm-started (:class:`normfield.SharpnessTracker`'s
  default) and cold. After the first check, the median over checks of (warm λ_max products)/(cold
  λ_max products) is at most 1/3, and every warm λ_max lies within 2·tol·λ_max of the cold one
  (each run stops with an eigenvalue within tol·θ₁ of its Ritz value: Kahan's residual bound).
  Products are counted (one VJP or JVP each), so the ratio is the same on every machine; the
  seconds are printed too. ``--tol`` sets both trackers' tol, ``--warm-k`` and ``--warm-random``
  the warm tracker's.
* **Where a warm start's cost goes** (``--limits``, :func:`warm_start_limits`): on the same run, how
  far the top eigenvector moves between checks, and the λ_max products of Lanczos from the previous
  check's vector, from the current exact eigenvector plus the random share, cold, and from a block
  of the previous check's top two Ritz vectors.
* **A GPT-2-style language model** (vocabulary 5000, sequence 32, batch 8, float32): λ_max of its
  cross-entropy Fisher over the vocabulary at every position (dual dimension T·S·V = 1.28M)
  through :class:`normfield.analyze.operator.CurvatureOperator`, never forming a T·S·V × T·S·V
  matrix or the Jacobian; peak memory reported as the growth of the process's maximum resident
  set (``resource.getrusage``) and the peak of Python allocations (``tracemalloc``, which sees the
  Lanczos basis but not torch's buffers).

Usage:  python benchmarks/bench_tracking.py [--steps 200] [--every 20] [--tol 1e-4] [--warm-k 1]
        [--warm-random 0.25] [--limits] [--skip-tracking] [--skip-lm] [--json]
Prints a table (and with ``--json`` one JSON line).
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
                      seed: int = 0, tol: float | None = None, **warm_kw) -> dict:
    """Train the quick ResNet-18 once, with a warm and a cold tracker side by side (both at ``tol``,
    default the tracker's; ``warm_kw`` go to the warm tracker only)."""
    import normfield as nf

    ex = _example("track_resnet")
    x, labels = ex.digits_batch(samples)
    y = torch.nn.functional.one_hot(labels, 10).float()
    torch.manual_seed(seed)
    model = ex.make_model(width, in_channels=1, classes=10)
    kw = dict(loss="mse", every=every, trace="none", layers="none", seed=seed, tol=tol)
    warm, cold = nf.SharpnessTracker(model, x, **kw, **warm_kw), nf.SharpnessTracker(model, x, warm=False, **kw)
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


def _block_krylov_products(op, V0: np.ndarray, tol: float, max_matvecs: int = 200) -> int:
    """Products of a block Krylov run (Rayleigh–Ritz on span{V, AV, A²V, ...}, full reorthogonalisation,
    Saad, *Numerical Methods for Large Eigenvalue Problems*, §6.2.1 and §4.3) from the block V0 until the
    top Ritz pair's residual ‖AQy − θQy‖ (exact, from the stored AQ) is at most tol·θ."""
    start = op.products
    Q, AQ, X = np.zeros((op.dim, 0)), np.zeros((op.dim, 0)), V0
    while Q.shape[1] < max_matvecs:
        for _ in range(2):
            X = X - Q @ (Q.T @ X)
        X, R = np.linalg.qr(X)
        X = X[:, np.abs(np.diag(R)) > 1e-10 * np.abs(R).max()]
        AX = np.stack([op.matvec(X[:, j]) for j in range(X.shape[1])], 1)
        Q, AQ = np.hstack([Q, X]), np.hstack([AQ, AX])
        th, S = np.linalg.eigh(0.5 * (Q.T @ AQ + AQ.T @ Q))
        y = S[:, -1]
        if np.linalg.norm(AQ @ y - th[-1] * (Q @ y)) <= tol * th[-1]:
            break
        X = AX
    return op.products - start


def warm_start_limits(steps: int, every: int, samples: int = 64, width: int = 8, lr_factor: float = 0.6,
                      seed: int = 0, tol: float | None = None, warm_random: float | None = None) -> dict:
    """Where a warm start's cost goes, on the same training run as :func:`warm_against_cold`.

    At each check after the first: the top eigenvector u (a reference Lanczos run at tol/10) against the
    previous check's u₀ (|u₀ᵀu|, and ‖Pu‖ for P the projector on the previous reference run's whole
    Krylov basis, the best any Rayleigh–Ritz start from the previous check's subspace can reach), λ₂/λ₁,
    and the λ_max products at ``tol`` of Lanczos from: u₀ plus the tracker's random share (its warm
    start), u itself plus that share or 1/25 of it (a start no information from the previous check can
    beat), a cold start, and a block start [u₀ + share, second Ritz vector of the previous run]."""
    import normfield as nf
    from normfield.analyze.operator import WARM_RANDOM
    from normfield.analyze.tracking import SharpnessTracker, ritz_vectors
    from normfield.core import krylov

    ex = _example("track_resnet")
    x, labels = ex.digits_batch(samples)
    y = torch.nn.functional.one_hot(labels, 10).float()
    torch.manual_seed(seed)
    model = ex.make_model(width, in_channels=1, classes=10)
    tracker = nf.SharpnessTracker(model, x, loss="mse", every=every, trace="none", layers="none", seed=seed, tol=tol)
    op, tol = tracker.operator, tracker.tol
    share = WARM_RANDOM if warm_random is None else warm_random
    rows, prev, opt = [], None, None

    def products(v0) -> int:
        start = op.products
        krylov.lanczos(op.matvec, op.dim, 1, tol=tol, v0=v0, seed=seed)
        return op.products - start

    for step in range(steps + 1):
        if step % every == 0:
            op.refresh()
            ref = krylov.lanczos(op.matvec, op.dim, 2, tol=tol / 10, seed=seed + 1)
            SharpnessTracker._keep_route(op)
            u = ref.eigenvectors[:, 0]
            if prev is not None:
                r = np.random.default_rng([seed, step]).standard_normal(op.dim)
                r /= np.linalg.norm(r)
                u0, basis, R0 = prev
                rows.append({
                    "step": step, "lambda2_over_lambda1": float(ref.eigenvalues[1] / ref.eigenvalues[0]),
                    "overlap_previous": float(abs(u0 @ u)), "in_previous_basis": float(np.linalg.norm(basis @ u)),
                    "warm": products(u0 + share * r), "exact": products(u + share * r),
                    "exact_small_share": products(u + share / 25 * r), "cold": products(None),
                    "block2": _block_krylov_products(op, np.stack([u0 + share * r, R0[:, 1]], 1), tol)})
            prev = (u, ref.basis, ritz_vectors(ref, 2))
            if step == 0:
                opt = torch.optim.SGD(model.parameters(), lr=lr_factor * 2.0 / float(ref.eigenvalues[0]))
        if step == steps:
            break
        opt.zero_grad()
        (0.5 * (model(x) - y).pow(2).sum(1).mean()).backward()
        opt.step()
    return {"tol": tol, "warm_random": share, "checks": rows}


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
    ap.add_argument("--tol", type=float, default=None, help="the trackers' tol (default: the tracker's)")
    ap.add_argument("--warm-k", type=int, default=None, help="the warm tracker's warm_k (default: the tracker's)")
    ap.add_argument("--warm-random", type=float, default=None,
                    help="the warm tracker's warm_random (default: the tracker's)")
    ap.add_argument("--limits", action="store_true",
                    help="also print where a warm start's cost goes (warm_start_limits; about a minute)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    out: dict = {}
    if not a.skip_tracking:
        warm_kw = {k: v for k, v in (("warm_k", a.warm_k), ("warm_random", a.warm_random)) if v is not None}
        r = warm_against_cold(a.steps, a.every, tol=a.tol, **warm_kw)
        out["tracking"] = r
        print(f"tracking: {r['checks']} checks, lr {r['lr']:.4g}, tol {r['tol']:.0e}; warm/cold λ_max products, "
              f"median {r['median_product_ratio']:.3f} (target <= 0.333), seconds {r['median_seconds_ratio']:.3f}; "
              f"max |warm - cold|/cold {r['max_rel_diff']:.2e} (2·tol = {2 * r['tol']:.0e}); "
              f"{'MET' if r['target_met'] else 'MISSED'}")
        print(f"  warm products {r['warm_products']}\n  cold products {r['cold_products']}\n"
              f"  eta*lambda_max {r['eta_lambda']}")
    if a.limits:
        r = warm_start_limits(a.steps, a.every, tol=a.tol, warm_random=a.warm_random)
        out["limits"] = r
        print(f"warm-start limits (tol {r['tol']:.0e}, random share {r['warm_random']:g}; λ_max products):")
        print("  step  λ2/λ1  |u0·u|  |P_basis u|  warm  exact+share  exact+share/25  cold  block-2")
        for c in r["checks"]:
            print(f"  {c['step']:4d}  {c['lambda2_over_lambda1']:.3f}  {c['overlap_previous']:.3f}  "
                  f"{c['in_previous_basis']:11.3f}  {c['warm']:4d}  {c['exact']:11d}  {c['exact_small_share']:14d}  "
                  f"{c['cold']:4d}  {c['block2']:7d}")
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
