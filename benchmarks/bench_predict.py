"""Benchmark: ``nf.predict`` against ``nf.analyze`` and against a Monte Carlo of every layer map.

Four models, 3 hidden layers of width 4096, batch T = 16 of N(0, 1) inputs in R^32, one output, weights
W ~ N(0, σ_w²/fan_in) and biases b ~ N(0, σ_b²) (σ_w² = 2 for relu, 1.5 for tanh; σ_b² = 0.05):

* ``bn-relu``:  (Linear → BatchNorm1d → ReLU) × 3 → Linear   (middle batch norm)
* ``bn-tanh``:  (Linear → BatchNorm1d → Tanh) × 3 → Linear
* ``tanh``:     (Linear → Tanh) × 3 → Linear
* ``preln-res``: Linear → 3 × [x + Linear(ReLU(Linear(LayerNorm(x))))] → Linear

Targets:

* λ_max(F*) predicted (``nf.predict`` with the law stated, ``init=``) within 3 % of the mean of the
  measured λ_max (``nf.analyze``) over ``--seeds`` independently initialised nets (default 4); the
  standard error of that mean is printed beside it;
* every hidden layer's predicted Gram within 0.02 (Frobenius) of an independent Monte Carlo route:
  each layer's map is pushed through its finite per-unit form with ``2**24`` draws (``--draws``) of the
  per-unit law it reads, built from the previous layer's *predicted* Gram. A Dense layer's output is
  N(0, Σ) with Σ = σ_w² G_prev + σ_b² (exactly Gaussian at infinite width), batch norm acts on one
  draw over the batch, an activation elementwise, and layer norm over the 2**24 units per sample
  (a finite layer norm of that width). The residual stream stays Gaussian (a sum of independent
  Dense outputs), Σ_stream = Σ_in + Σ_blocks Σ_fc2. The Monte Carlo standard error of each Gram
  (Frobenius) is printed; it is about 4e-3 at 2**24 draws.

Usage:  python benchmarks/bench_predict.py [--seeds 4] [--width 4096] [--draws 24] [--json]
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
from torch import nn

import normfield as nf
from normfield.infinite.predict import predict

SW2 = {"relu": 2.0, "tanh": 1.5}
SB2 = 0.05
D_IN, T, DEPTH = 32, 16, 3


class Block(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.ln, self.fc1, self.act, self.fc2 = nn.LayerNorm(w), nn.Linear(w, w), nn.ReLU(), nn.Linear(w, w)

    def forward(self, x):
        return x + self.fc2(self.act(self.fc1(self.ln(x))))


class PreLN(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.inp = nn.Linear(D_IN, w)
        self.blocks = nn.Sequential(*[Block(w) for _ in range(DEPTH)])
        self.out = nn.Linear(w, 1)

    def forward(self, x):
        return self.out(self.blocks(self.inp(x)))


def make(kind: str, width: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    act = nn.Tanh if "tanh" in kind else nn.ReLU
    if kind == "preln-res":
        net = PreLN(width)
    else:
        layers, fan = [], D_IN
        for _ in range(DEPTH):
            layers.append(nn.Linear(fan, width))
            if kind.startswith("bn"):
                layers.append(nn.BatchNorm1d(width))
            layers.append(act())
            fan = width
        net = nn.Sequential(*layers, nn.Linear(width, 1))
    sw2 = SW2["tanh" if "tanh" in kind else "relu"]
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0, math.sqrt(sw2 / m.in_features))
                m.bias.normal_(0, math.sqrt(SB2))
    return net.double()


# -- the independent route: Monte Carlo of each layer's finite per-unit map ---------------------------------

def _factor(S: np.ndarray) -> torch.Tensor:
    w, U = np.linalg.eigh(0.5 * (S + S.T))
    return torch.from_numpy(U * np.sqrt(np.clip(w, 0, None)))


def mc_gram(Sigma: np.ndarray, ops: list, draws: int, seed: int, chunk: int = 2**20) -> tuple[np.ndarray, float]:
    """E[f(h) f(h)ᵀ] for h ~ N(0, Σ) (T,) pushed through ``ops`` (per-unit maps), and its standard error
    (Frobenius) from the spread of the per-chunk means (batch means, ``draws/chunk`` independent chunks).
    An op "ln" normalises over all the draws (the units) per sample: (h_t − μ_t)/√(v_t + ε)."""
    g = torch.Generator().manual_seed(seed)
    L = _factor(Sigma)
    n_T = Sigma.shape[0]
    grams, s1, s2 = [], torch.zeros(n_T, dtype=torch.float64), torch.zeros(n_T, dtype=torch.float64)
    for i in range(0, draws, chunk):
        z = torch.randn(min(chunk, draws - i), n_T, generator=g, dtype=torch.float64) @ L.T
        for op in ops:
            if op == "bn":  # train-mode batch norm of one unit over the batch (biased variance, eps 1e-5)
                z = z - z.mean(1, keepdim=True)
                z = z / torch.sqrt((z ** 2).mean(1, keepdim=True) + 1e-5)
            elif op == "relu":
                z = torch.relu(z)
            elif op == "tanh":
                z = torch.tanh(z)
        grams.append((z.T @ z / z.shape[0]).numpy())
        s1 += z.sum(0)
        s2 += (z ** 2).sum(0)
    Gs = np.stack(grams)
    if "ln" in ops:
        mu = (s1 / draws).numpy()
        v = (s2 / draws).numpy() - mu ** 2
        Gs = (Gs - np.outer(mu, mu)) / np.sqrt(np.outer(v + 1e-5, v + 1e-5))
    se = float(np.linalg.norm(Gs.std(axis=0, ddof=1)) / math.sqrt(len(Gs)))
    return Gs.mean(axis=0), se


def mc_check(kind: str, pred, x: torch.Tensor, draws: int) -> list[dict]:
    """Each hidden hooked layer's predicted Gram against the Monte Carlo of its map (module docstring)."""
    tr, G = pred.translation, pred.grams
    x_gram = (x @ x.T / x.shape[1]).numpy()
    rows = []
    seed = 1
    prev = None  # the predicted Gram the next Dense reads
    Sigma, ops = None, []
    stream = None
    for lf in tr.leaves:
        lay = lf.layer
        name = type(lay).__name__
        if lf.name.endswith(".ln"):
            # the residual stream is N(0, Σ_stream); layer norm over its units
            Sigma, ops = stream, ["ln"]
        elif name == "Dense":
            base = x_gram if prev is None else prev
            Sigma, ops = lay.sw2 * base + lay.sb2, []
        elif name == "BatchNorm":
            ops = ops + ["bn"]
        elif name == "Activation":
            ops = ops + [lay.act.name]
        if lf.name == "inp":
            stream = G["inp"]
        if lf.name.endswith(".fc2"):
            stream = stream + G[lf.name]
        if name == "Dense" and lay.width == 1:  # the output layer
            break
        Gmc, se = mc_gram(Sigma, ops, draws, seed)
        seed += 1
        rows.append({"model": kind, "layer": lf.name, "type": lf.type,
                     "dist": float(np.linalg.norm(G[lf.name] - Gmc)), "mc_se": se,
                     "norm": float(np.linalg.norm(G[lf.name]))})
        prev = G[lf.name]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--width", type=int, default=4096)
    ap.add_argument("--draws", type=int, default=24, help="log2 of the Monte Carlo draws per layer")
    ap.add_argument("--models", default="bn-relu,bn-tanh,tanh,preln-res")
    ap.add_argument("--part", default="both", choices=["both", "lambda", "grams"],
                    help="only the λ_max comparison or only the Monte Carlo of the layer maps")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"],
                    help="dtype of the measurement (nf.analyze); float32 halves its time, its 1e-4 accuracy "
                         "is far below the seed spread")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    x = torch.randn(T, D_IN, dtype=torch.float64, generator=torch.Generator().manual_seed(2024))
    out = []
    gram_rows = []
    for kind in a.models.split(","):
        sw2 = SW2["tanh" if "tanh" in kind else "relu"]
        net = make(kind, a.width, 0)
        t0 = time.perf_counter()
        pred = predict(net, x, init={"sw2": sw2, "sb2": SB2})
        t_pred = time.perf_counter() - t0
        lams, t_an = [], []
        for s in range(a.seeds if a.part != "grams" else 0):
            net = make(kind, a.width, s)
            t0 = time.perf_counter()
            lams.append(nf.analyze(net, x, k=1, layers="none", dtype=a.dtype).lambda_max)
            t_an.append(time.perf_counter() - t0)
        lams = np.array(lams) if lams else np.array([math.nan])
        se = lams.std(ddof=1) / math.sqrt(len(lams)) if len(lams) > 1 else math.nan
        t0 = time.perf_counter()
        rows = mc_check(kind, pred, x, 2 ** a.draws) if a.part != "lambda" else [
            {"model": kind, "layer": "", "type": "", "dist": math.nan, "mc_se": math.nan, "norm": math.nan}]
        t_mc = time.perf_counter() - t0
        gram_rows += rows
        out.append({"model": kind, "lambda_max_pred": pred.lambda_max, "lambda_max_meas": float(lams.mean()),
                    "meas_se": se, "rel_diff": float(lams.mean() / pred.lambda_max - 1),
                    "pred_error": pred.error, "within_tol": pred.within_tol,
                    "max_gram_dist": max(r["dist"] for r in rows), "max_mc_se": max(r["mc_se"] for r in rows),
                    "t_predict_s": t_pred, "t_analyze_s": float(np.mean(t_an)) if t_an else math.nan,
                    "t_mc_s": t_mc})
        print(json.dumps(out[-1]), flush=True)
    print()
    print(f"{'model':>10} {'pred':>10} {'meas':>10} {'±SE':>8} {'rel':>8} {'Gram dist':>10} {'MC SE':>8} "
          f"{'predict s':>9} {'analyze s':>9}")
    for r in out:
        print(f"{r['model']:>10} {r['lambda_max_pred']:10.4g} {r['lambda_max_meas']:10.4g} {r['meas_se']:8.2g} "
              f"{r['rel_diff']:+8.3%} {r['max_gram_dist']:10.3g} {r['max_mc_se']:8.2g} {r['t_predict_s']:9.2f} "
              f"{r['t_analyze_s']:9.1f}")
    for r in gram_rows if a.part != "lambda" else []:
        print(f"  {r['model']:>10} {r['layer']:>14} {r['type']:>12}  ‖ΔG‖_F = {r['dist']:.4f} "
              f"(MC SE {r['mc_se']:.4f}, ‖G‖_F = {r['norm']:.3f})")
    print(json.dumps({"models": out, "grams": gram_rows}))


if __name__ == "__main__":
    main()
