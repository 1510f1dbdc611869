"""Outcome classes, loss-history shape and end-of-training sharpness of the lr grid (Karakida et al. 2019, §3.4)."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from normfield.core.seeding import derive_seed
from normfield.errors import NormfieldError
from normfield.fisher.networks import MLPConfig, init_mlp, mlp_forward
from normfield.train.lr_grid import LRGridSettings, lr_grid_cell, summarize_lr_grid
from normfield.train.outcomes import (CONVERGED_FRACTION, classify_run, constant_loss, loss_shape,
                                      output_diagnostics)
from normfield.train.students import train_student_plain, train_students


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _problem(M=10, T=24, seed=0, norm="none"):
    cfg = MLPConfig(activation="relu", sw2=4.0, sb2=1.0, depth=3, width=M, outputs=1, samples=T, norm=norm)
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(T, M, generator=g, dtype=torch.float64)
    y = mlp_forward(init_mlp(cfg, seed + 1, torch.float64, "cpu"), X, cfg).reshape(T, -1)
    return cfg, init_mlp(cfg, seed + 2, torch.float64, "cpu"), X, y


@pytest.mark.parametrize("norm", ["none", "last-mean"])
def test_loss_history_equals_plain_autograd(norm):
    cfg, student, X, y = _problem(norm=norm)
    lrs = [1e-3, 3e-2, 0.3, 50.0]
    run = train_students(student, X, y, lrs, steps=40, norm=norm)
    for k, lr in enumerate(lrs):
        ref = train_student_plain(student, X, y, lr, steps=40, norm=norm)
        a, b = run.losses[k], ref.losses[0]
        assert np.array_equal(np.isnan(a), np.isnan(b))  # same stopping step
        ok = np.isfinite(b)
        np.testing.assert_allclose(a[ok], b[ok], rtol=1e-9)  # float64 round-off over 40 steps
        assert a[0] == run.initial_loss[k]


def _jacobian_lambda_max(params, X, cfg):
    """Top eigenvalue of J Jᵀ / T, J the (T × P) Jacobian of the outputs by brute-force autograd."""
    flat = [p.detach().clone() for pair in params for p in pair]

    def f(*theta):
        ps = [(theta[2 * i], theta[2 * i + 1]) for i in range(len(theta) // 2)]
        return mlp_forward(ps, X, cfg).reshape(-1)

    J = torch.cat([j.reshape(X.shape[0], -1) for j in torch.autograd.functional.jacobian(f, tuple(flat))], dim=1)
    return float(torch.linalg.eigvalsh(J @ J.T / X.shape[0])[-1])


@pytest.mark.parametrize("norm", ["none", "last-mean"])
def test_lambda_max_end_equals_bruteforce_jacobian(norm):
    # The row's λ_max(end) is the trained student's sharpness: rebuild the cell's student from its
    # seeds, train it the same way, and take J Jᵀ / T from an autograd Jacobian.
    s = LRGridSettings(widths=(8,), lrs=(0.01, 0.2), norms=(norm,), steps=30, samples=20, depth=3)
    cell = s.cells(0)[0]
    rows = lr_grid_cell(cell)
    cfg = MLPConfig(activation="relu", sw2=4.0, sb2=1.0, depth=3, width=8, outputs=1, samples=20, norm=norm)
    gx = torch.Generator().manual_seed(derive_seed(cell["seed"], 8, 0))
    X = torch.randn(20, 8, generator=gx, dtype=torch.float64)
    y = mlp_forward(init_mlp(cfg, derive_seed(cell["seed"], 8, 1), torch.float64, "cpu"), X, cfg).reshape(20, -1)
    student = init_mlp(cfg, derive_seed(cell["seed"], 8, 2), torch.float64, "cpu")
    assert rows[0]["lambda_max"] == pytest.approx(_jacobian_lambda_max(student, X, cfg), rel=1e-10)
    run = train_students(student, X, y, list(s.lrs), steps=30, norm=norm, return_params=True)
    for k, row in enumerate(rows):
        assert row["outcome"] != "exploded"
        lam = _jacobian_lambda_max(run.student(k), X, cfg)
        assert row["lambda_max_end"] == pytest.approx(lam, rel=1e-9)
        assert row["eta_lambda_end"] == pytest.approx(row["lr"] * lam, rel=1e-9)


def test_cells_keep_the_seed_arithmetic_and_refuse_collisions():
    s = LRGridSettings(widths=(8, 16), lrs=(0.1,), replicates=(0, 3))
    cells = s.cells(2)
    assert [c["seed"] for c in cells] == [2000, 2003, 2000, 2003] * 2
    assert [(c["norm"], c["width"]) for c in cells][:4] == [("none", 8)] * 2 + [("none", 16)] * 2
    # derive_seed is the SeedSequence hash the grid has always used
    ss = np.random.SeedSequence([2003, 16, 1]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1)
    assert derive_seed(2003, 16, 1) == int(ss)
    with pytest.raises(NormfieldError, match="seeds"):
        LRGridSettings(widths=(8,), lrs=(0.1,), replicates=(1000,))
    with pytest.raises(NormfieldError, match="widths"):
        LRGridSettings(widths=(), lrs=(0.1,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.steps = 3


def test_constant_loss_is_half_the_label_variance():
    y = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0]], dtype=torch.float64)
    # per column variance (biased) 8/3 each; E_const = ½ Σ_k Var_k = 8/3
    assert constant_loss(y) == pytest.approx(8.0 / 3.0, rel=1e-15)


def test_collapse_detectors():
    T, M = 30, 6
    g = torch.Generator().manual_seed(1)
    X = torch.randn(T, M, generator=g, dtype=torch.float64)
    y = torch.randn(T, 1, generator=g, dtype=torch.float64)
    W = torch.randn(M, M, generator=g, dtype=torch.float64)
    out = (torch.randn(1, M, generator=g, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))
    dead = [(W, torch.full((M,), -1e3, dtype=torch.float64)), out]  # every ReLU unit off on every input
    d = output_diagnostics(dead, X, y, activation="relu")
    assert d["dead_unit_fraction"] == 1.0 and d["all_dead_layer"] == 1.0 and d["output_var_ratio"] == 0.0
    e_const = constant_loss(y)
    assert classify_run(e_const, 2 * e_const, e_const, all_dead_layer=True,
                        output_var_ratio=d["output_var_ratio"]) == ("collapsed", "both")
    # tanh with a zero first layer: no unit is zero, yet every sample gets the same output
    flat = [(torch.zeros(M, M, dtype=torch.float64), torch.ones(M, dtype=torch.float64)), out]
    d = output_diagnostics(flat, X, y, activation="tanh")
    assert d["all_dead_layer"] == 0.0 and d["output_var_ratio"] <= 1e-30
    assert classify_run(e_const, 2 * e_const, e_const, all_dead_layer=False,
                        output_var_ratio=d["output_var_ratio"]) == ("collapsed", "output-variance")
    live = [(W, torch.zeros(M, dtype=torch.float64)), out]
    d = output_diagnostics(live, X, y, activation="relu")
    assert d["dead_unit_fraction"] < 1.0 and d["output_var_ratio"] > 1e-3


def test_classify_run_thresholds():
    assert classify_run(math.inf, 1.0, 1.0, all_dead_layer=False, output_var_ratio=1.0) == ("exploded", "")
    assert classify_run(1.01e3, 1.0, 1.0, all_dead_layer=False, output_var_ratio=1.0) == ("exploded", "")
    # converged: a decade below both the initial and the constant-output loss
    assert classify_run(CONVERGED_FRACTION * 2.0, 5.0, 2.0, all_dead_layer=False,
                        output_var_ratio=1.0)[0] == "converged"
    assert classify_run(0.3, 50.0, 2.0, all_dead_layer=False, output_var_ratio=1.0)[0] == "unconverged"
    assert classify_run(0.3, 2.0, 50.0, all_dead_layer=False, output_var_ratio=1.0)[0] == "unconverged"


def test_loss_shape():
    assert loss_shape(np.array([4.0, 3.0, 1.0, 1.0, np.nan])) == {"loss_rose": False, "monotone": True,
                                                                   "peak_loss_ratio": 1.0}
    c = loss_shape(np.array([1.0, 3.0, 9.0, 2.0, 0.01]))  # catapult: up, then down below the start
    assert c["loss_rose"] and not c["monotone"] and c["peak_loss_ratio"] == 9.0
    j = loss_shape(np.array([1.0, 0.5, 0.5 + 1e-12, 0.1]))  # a round-off jitter is not a rise
    assert j["monotone"] and not j["loss_rose"]
    assert loss_shape(np.array([1.0, np.inf]))["peak_loss_ratio"] == math.inf


def test_grid_rows_carry_outcomes_and_summary_factors():
    s = LRGridSettings(widths=(8,), lrs=(1e-3, 0.05, 1e3), norms=("none",), steps=40, samples=16)
    rows = lr_grid_cell(s.cells(0)[0])
    assert [r["outcome"] for r in rows][-1] == "exploded"  # η = 1000 overflows at once
    assert all(r["outcome"] in ("converged", "collapsed", "exploded", "unconverged") for r in rows)
    assert math.isnan(rows[-1]["lambda_max_end"]) and math.isfinite(rows[0]["lambda_max_end"])
    import pandas as pd

    df = pd.DataFrame(rows).assign(norm="none", width=8, seed=0)
    summ = summarize_lr_grid(df).iloc[0]
    conv = df[df["outcome"] == "converged"]["lr"]
    if len(conv):
        assert summ["largest_converged_lr"] == conv.max()
        assert summ["converged_up_to_factor"] == pytest.approx(conv.max() / rows[0]["eta_emp"], rel=1e-15)
    assert summ["runs_exploded"] == 1 and sum(summ[f"runs_{o}"] for o in
                                              ("converged", "collapsed", "exploded", "unconverged")) == 3
