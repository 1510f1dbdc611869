"""SharpnessTracker and plot_tracking against brute-force routes.

Independent route: the explicit Jacobian of the outputs on the whole batch (torch.func.jacrev,
float64, train-mode batch norm on a deep copy that does not track statistics), the Gauss–Newton
matrix G = (1/N) Σ J_iᵀ Λ_i J_i formed as a P×P matrix (Λ = I for the squared loss,
diag p − ppᵀ per prediction for cross-entropy) and its eigenvalues by LAPACK; the Hessian by
torch.autograd.functional.hessian.

Tolerances: a Lanczos run stops when the residual r of its top Ritz pair is <= tol·θ, so an
eigenvalue lies within tol·θ (Kahan); with tol = 1e-8 (float64) the top Ritz value is within
1e-8·λ_max of λ_max once it has found it, so we allow 2e-8 relative against LAPACK (whose own
error is ~1e-15·‖G‖), and 2·tol (two runs, each within tol) between a warm and a cold run.
Exact traces agree to round-off: T·C VJP squared norms summed in float64, relative 1e-10.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import normfield as nf
from normfield.analyze.tracking import COLUMNS, STABILITY_LINE, SharpnessTracker, ritz_vectors
from normfield.core import krylov
from normfield.analyze.tracking_plots import plot_tracking
from normfield.errors import NormfieldError

TOL = 1e-8


def _net(seed: int = 0, classes: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 12), nn.BatchNorm1d(12), nn.Tanh(), nn.Linear(12, 12), nn.ReLU(),
                         nn.Linear(12, classes)).double()


def _batch(T: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.randn(T, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _brute_force(model: nn.Module, x: torch.Tensor, loss: str) -> np.ndarray:
    """Eigenvalues (ascending) of the explicit P×P Gauss–Newton matrix, float64."""
    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.track_running_stats = False
    params = {n: p.detach().clone() for n, p in m.named_parameters()}
    bufs = {n: b.detach().clone() for n, b in m.named_buffers()}

    def f(p):
        return torch.func.functional_call(m, {**p, **bufs}, (x,))

    out = f(params)
    T, C = out.shape
    jac = torch.func.jacrev(f)(params)
    J = torch.cat([jac[n].reshape(T * C, -1) for n in params], 1)
    if loss == "mse":
        G = J.T @ J / T
    else:
        p = torch.softmax(out, -1)
        lam = torch.block_diag(*[torch.diag(pi) - torch.outer(pi, pi) for pi in p])
        G = J.T @ lam @ J / T
    return np.linalg.eigvalsh(G.numpy())


def _state(model: nn.Module) -> dict:
    return {"p": {n: p.detach().clone() for n, p in model.named_parameters()},
            "b": {n: b.clone() for n, b in model.named_buffers()},
            "g": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
            "flags": [m.training for m in model.modules()], "rng": torch.get_rng_state()}


def _same(a: dict, b: dict) -> bool:
    tensors = all(torch.equal(a[k][n], b[k][n]) for k in ("p", "b") for n in a[k])
    grads = all((x is None and y is None) or (x is not None and y is not None and torch.equal(x, y))
                for x, y in zip(a["g"].values(), b["g"].values()))
    return tensors and grads and a["flags"] == b["flags"] and torch.equal(a["rng"], b["rng"])


@pytest.mark.parametrize("loss", ["mse", "cross-entropy"])
def test_first_check_matches_the_explicit_gauss_newton_matrix(loss):
    net, x = _net(), _batch()
    tracker = SharpnessTracker(net, x, loss=loss, trace="exact", layers="none")
    row = tracker.step(0, lr=0.05)
    w = _brute_force(net, x, loss)
    assert row["lambda_max"] == pytest.approx(w[-1], rel=2 * TOL)
    assert row["trace"] == pytest.approx(w.sum(), rel=1e-10)
    assert row["eta_lambda"] == pytest.approx(0.05 * row["lambda_max"], rel=1e-15)
    assert row["converged"] and not row["warm"] and row["products"] > row["lambda_products"] > 0


def test_hutchinson_trace_within_four_standard_errors():
    # the estimator is unbiased with the reported standard error; |z| > 4 has probability 6e-5 (seeded)
    net, x = _net(), _batch()
    row = SharpnessTracker(net, x, trace="hutchinson", trace_rtol=0.02, layers="none").step(0)
    exact = _brute_force(net, x, "mse").sum()
    assert 0 < row["trace_stderr"] <= 0.02 * row["trace"] * 1.0001
    assert abs(row["trace"] - exact) <= 4 * row["trace_stderr"]


def _train(net, x, y, steps, lr, trackers=()):
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    for s in range(steps + 1):
        for t in trackers:
            t.step(s, lr=lr)
        if s == steps:  # the last check sees the parameters after `steps` updates
            break
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    return net


def test_warm_start_keeps_lambda_max_of_a_cold_run_through_training():
    net, x = _net(classes=4), _batch(12)
    y = torch.randint(0, 4, (12,), generator=torch.Generator().manual_seed(2))
    warm = SharpnessTracker(net, x, loss="cross-entropy", every=3, trace="none", layers="none")
    cold = SharpnessTracker(net, x, loss="cross-entropy", every=3, trace="none", layers="none", warm=False)
    _train(net, x, y, 12, 0.5, (warm, cold))
    fw, fc = warm.frame, cold.frame
    assert list(fw["step"]) == list(range(0, 13, 3))
    assert fw["warm"].tolist() == [False] + [True] * (len(fw) - 1)
    assert not fc["warm"].any()
    np.testing.assert_allclose(fw["lambda_max"], fc["lambda_max"], rtol=2 * TOL)
    # and both against LAPACK at the last check
    assert fw["lambda_max"].iloc[-1] == pytest.approx(_brute_force(net, x, "cross-entropy")[-1], rel=2 * TOL)
    # each check counts its own products; the warm start is cheaper over the run (counted, deterministic)
    assert (fw["lambda_products"] == 2 * fw["lanczos_steps"]).all() and (fc["lambda_products"] > 0).all()
    assert fw["lambda_products"].iloc[1:].sum() < fc["lambda_products"].iloc[1:].sum()


def test_a_check_leaves_the_model_and_the_training_run_untouched():
    net, x = _net(), _batch()
    y = torch.randint(0, 3, (10,), generator=torch.Generator().manual_seed(3))
    net.train()
    net(x).sum().backward()  # some .grad to keep
    before = _state(net)
    SharpnessTracker(net, x, loss="cross-entropy").step(0, lr=0.1)
    assert _same(before, _state(net))
    # a seeded run with a tracker trains bit for bit like one without
    a, b = _net(seed=5), _net(seed=5)
    torch.manual_seed(7)
    _train(a, x, y, 6, 0.3)
    torch.manual_seed(7)
    _train(b, x, y, 6, 0.3, (SharpnessTracker(b, x, every=2),))
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_step_only_measures_every_k_and_the_frame_is_tidy():
    net, x = _net(), _batch()
    tracker = SharpnessTracker(net, x, every=4, trace="none", layers=["1", "2"])
    rows = [tracker.step(s, lr=0.1) for s in range(9)]
    assert [r is None for r in rows] == [s % 4 != 0 for s in range(9)]
    df = tracker.frame
    assert list(df["step"]) == [0, 4, 8]
    assert {"lambda_max", "trace", "eta_lambda", "products", "gram_top_fraction:1", "gram_effective_rank:2"} \
        <= set(df.columns)
    assert df["trace"].isna().all()
    lf = tracker.layer_frame
    assert len(lf) == 6 and set(lf["layer"]) == {"1", "2"}
    assert STABILITY_LINE == 2.0
    # later checks reuse the product route the first one chose (no second probe of the routes)
    assert tracker.operator.route == tracker.operator.route_used == "forward"


def test_gram_columns_match_the_layer_output_gram():
    net, x = _net(), _batch()
    row = SharpnessTracker(net, x, layers=["2"], trace="none").step(0)
    # train-mode batch norm: the batch statistics, as in the tracker (no running-stat update here)
    m = copy.deepcopy(net)
    m[1].track_running_stats = False
    with torch.no_grad():
        H = m[2](m[1](m[0](x)))
    G = (H @ H.T / H.shape[1]).numpy()
    w = np.linalg.eigvalsh(G)[::-1]
    p = w / w.sum()
    assert row["gram_top_fraction:2"] == pytest.approx(w[0] / np.trace(G), rel=1e-12)
    assert row["gram_effective_rank:2"] == pytest.approx(math.exp(-np.sum(p[p > 0] * np.log(p[p > 0]))), rel=1e-10)


def test_hessian_curvature_against_autograd_hessian():
    net, x = _net(), _batch()
    net.eval()  # running statistics: the Hessian of a per-sample model
    y = torch.randint(0, 3, (10,), generator=torch.Generator().manual_seed(4))
    row = SharpnessTracker(net, x, loss="hessian", targets=y, trace="none", layers="none").step(0)
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    bufs = dict(net.named_buffers())

    def loss_of(flat):
        ps, i = {}, 0
        for n, s in zip(names, shapes):
            k = int(np.prod(s))
            ps[n] = flat[i:i + k].reshape(s)
            i += k
        return nn.functional.cross_entropy(torch.func.functional_call(net, {**ps, **bufs}, (x,)), y)

    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    H = torch.autograd.functional.hessian(loss_of, flat).numpy()
    assert row["lambda_max"] == pytest.approx(np.linalg.eigvalsh(0.5 * (H + H.T))[-1], rel=2 * TOL)


def test_a_diverged_run_gives_a_nan_row_then_a_cold_start():
    net, x = _net(), _batch()
    tracker = SharpnessTracker(net, x, every=1, trace="none", layers="none")
    tracker.step(0)
    saved = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    row = tracker.step(1, lr=0.1)
    assert math.isnan(row["lambda_max"]) and row["products"] == 0
    with torch.no_grad():
        net[0].weight.copy_(saved)
    assert tracker.step(2)["warm"] is False


def test_changed_parameter_set_is_refused_naming_model():
    net, x = _net(), _batch()
    tracker = SharpnessTracker(net, x)
    net[5] = nn.Linear(12, 4).double()
    with pytest.raises(NormfieldError) as e:
        tracker.step(0)
    assert e.value.argument == "model" and "5.weight" in str(e.value)


@pytest.mark.parametrize("kw, arg", [({"every": 0}, "every"), ({"loss": "l1"}, "loss"), ({"trace": "x"}, "trace"),
                                     ({"tol": 2.0}, "tol"), ({"trace_rtol": -1.0}, "trace_rtol"),
                                     ({"loss": "hessian", "trace": "exact"}, "trace"),
                                     ({"warm_random": 0}, "warm_random"), ({"warm_k": 0}, "warm_k")])
def test_bad_arguments_name_the_argument(kw, arg):
    with pytest.raises(NormfieldError) as e:
        SharpnessTracker(_net(), _batch(), **kw)
    assert e.value.argument == arg


def test_bad_step_calls_name_the_argument():
    tracker = SharpnessTracker(_net(), _batch(), layers="none", trace="none")
    for call, arg in ((lambda: tracker.step(-1), "step"), (lambda: tracker.step(0, lr=-0.1), "lr"),
                      (lambda: SharpnessTracker("net", _batch()), "model"),
                      (lambda: SharpnessTracker(_net(), [_batch(), _batch()]), "inputs")):
        with pytest.raises(NormfieldError) as e:
            call()
        assert e.value.argument == arg


def test_plot_tracking_draws_the_frame(tmp_path):
    net, x = _net(), _batch()
    tracker = SharpnessTracker(net, x, every=1, trace="hutchinson", trace_rtol=0.05, layers=["2", "4"])
    y = torch.randint(0, 3, (10,), generator=torch.Generator().manual_seed(3))
    _train(net, x, y, 2, 0.2, (tracker,))
    fig = plot_tracking(tracker.frame, path=tmp_path / "track.png")
    assert (tmp_path / "track.png").stat().st_size > 0
    axs = fig.axes
    lam_line = axs[0].lines[0]
    np.testing.assert_allclose(lam_line.get_ydata(), tracker.frame["lambda_max"])
    np.testing.assert_allclose(axs[0].lines[1].get_ydata(), 2 / 0.2)
    assert len(axs[2].lines) == 2 and len(axs[3].lines) == 2
    assert nf.plot_tracking is plot_tracking and nf.SharpnessTracker is SharpnessTracker
    for bad in (pd.DataFrame(), tracker.frame.iloc[:0], "frame"):
        with pytest.raises(NormfieldError) as e:
            plot_tracking(bad)
        assert e.value.argument == "df"


def test_ritz_vectors_of_a_finished_run_against_lapack():
    # a run stopped at an invariant subspace (all n steps) has exact Ritz pairs: the top m Ritz
    # vectors are the top m eigenvectors (up to sign), to round-off
    rng = np.random.default_rng(0)
    B = rng.standard_normal((12, 12))
    A = B @ B.T
    lz = krylov.lanczos(lambda v: A @ v, 12, 1, tol=1e-12, max_steps=12, seed=1)
    assert lz.stopped == "invariant" and lz.products == 12
    w, V = np.linalg.eigh(A)
    Y = ritz_vectors(lz, 3)
    assert Y.shape == (12, 3)
    np.testing.assert_allclose(np.abs(np.sum(Y * V[:, ::-1][:, :3], 0)), 1.0, atol=1e-8)
    assert list(SharpnessTracker(_net(), _batch(), layers="none").frame.columns) == list(COLUMNS)
