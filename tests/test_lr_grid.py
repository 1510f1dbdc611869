"""Batched teacher–student GD (Karakida et al. 2019, §3.4, eq. (23))."""

import math

import numpy as np
import pytest
import torch

from normfield.errors import NormfieldError
from normfield.train.lr_grid import log_lrs, summarize_lr_grid
from normfield.train.students import train_student_plain, train_students


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mlp(sizes, g, sw2=4.0, sb2=1.0):
    return [(torch.randn(b, a, generator=g, dtype=torch.float64) * math.sqrt(sw2 / a),
             torch.randn(b, generator=g, dtype=torch.float64) * math.sqrt(sb2)) for a, b in zip(sizes[:-1], sizes[1:])]


def _problem(M=12, T=40, L=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = [M] * L + [1]
    student, teacher = _mlp(sizes, g), _mlp(sizes, g)
    X = torch.randn(T, M, generator=g, dtype=torch.float64)
    h = X
    for W, b in teacher[:-1]:
        h = torch.relu(h @ W.T + b)
    y = h @ teacher[-1][0].T + teacher[-1][1]
    return student, X, y


@pytest.mark.parametrize("sample_space", [False, True])
@pytest.mark.parametrize("norm", ["none", "last-mean"])
def test_batched_equals_plain_autograd(norm, sample_space):
    # Independent route: hand-written batched backward vs torch autograd, one student at a time.
    # Both are float64 GD on the same loss; after 60 steps the trajectories agree to rounding
    # (differences ~1e-16 relative per operation, amplified at most by the stable dynamics).
    student, X, y = _problem()
    lrs = [1e-4, 1e-3, 1e-2, 3e-2, 1.0, 10.0]  # the last two explode
    run = train_students(student, X, y, lrs, steps=60, norm=norm, sample_space=sample_space)
    for k, lr in enumerate(lrs):
        ref = train_student_plain(student, X, y, lr, steps=60, norm=norm)
        assert run.exploded[k] == ref.exploded[0]
        assert run.steps_run[k] == ref.steps_run[0]
        if not run.exploded[k]:
            assert run.final_loss[k] == pytest.approx(ref.final_loss[0], rel=1e-9)
    assert run.exploded[-1] and not run.exploded[0]
    assert np.all(run.initial_loss == run.initial_loss[0])


def test_dropping_exploded_students_does_not_change_survivors():
    student, X, y = _problem(seed=3)
    alone = train_students(student, X, y, [1e-3, 5e-3], steps=40)
    mixed = train_students(student, X, y, [1e-3, 100.0, 5e-3, 1e3], steps=40)
    assert mixed.exploded[1] and mixed.exploded[3]
    np.testing.assert_allclose(mixed.final_loss[[0, 2]], alone.final_loss, rtol=1e-12)


@pytest.mark.parametrize("sample_space", [False, True])
@pytest.mark.parametrize("norm", ["none", "last-mean"])
def test_stability_edge_is_exactly_2_over_lambda_max_for_a_quadratic_loss(norm, sample_space):
    # One linear layer (L = 1): E is quadratic with Hessian H = (1/T) AᵀA, A = [X̃, 1], where
    # X̃ = X (no norm) or X centred over samples (mean subtraction, eq. (15)). GD multiplies the
    # error along H's top eigenvector by (1 − ηλ_max): it converges iff η < 2/λ_max (eq. (23)).
    # At η = 0.9·2/λ the factor is |1−1.8| = 0.8; at η = 1.1·2/λ it is 1.2, so in 400 steps the loss
    # grows by 1.2^800 ≈ 1e63 (> stop_loss) unless the top component is exactly 0 (probability 0).
    g = torch.Generator().manual_seed(5)
    T, M = 50, 6
    X = torch.randn(T, M, generator=g, dtype=torch.float64)
    params = [(torch.randn(1, M, generator=g, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))]
    y = torch.randn(T, 1, generator=g, dtype=torch.float64)
    Xt = X - X.mean(0) if norm == "last-mean" else X
    A = torch.cat([Xt, torch.ones(T, 1, dtype=torch.float64)], dim=1)
    lam = float(torch.linalg.eigvalsh(A.T @ A / T)[-1])
    run = train_students(params, X, y, [0.9 * 2 / lam, 1.1 * 2 / lam], steps=400, norm=norm,
                         sample_space=sample_space)
    assert not run.exploded[0] and run.exploded[1]
    assert run.final_loss[0] < run.initial_loss[0]


def test_bad_input():
    student, X, y = _problem()
    with pytest.raises(NormfieldError, match="norm"):
        train_students(student, X, y, [0.1], steps=1, norm="bn")
    with pytest.raises(NormfieldError, match="lrs"):
        train_students(student, X, y, [-0.1], steps=1)
    with pytest.raises(NormfieldError, match="lrs"):
        train_students(student, X, y, [], steps=1)
    with pytest.raises(NormfieldError, match="X"):
        train_students(student, X[:, :3], y, [0.1], steps=1)
    with pytest.raises(NormfieldError, match="y"):
        train_students(student, X, y[:5], [0.1], steps=1)
    with pytest.raises(NormfieldError, match="steps"):
        train_students(student, X, y, [0.1], steps=-1)
    with pytest.raises(NormfieldError, match="params"):
        train_students([(torch.zeros(3, 4), torch.zeros(2))], X, y, [0.1], steps=1)


def test_log_lrs():
    v = log_lrs(1e-3, 1.0, 4)
    assert len(v) == 13 and v[0] == pytest.approx(1e-3) and v[-1] == pytest.approx(1.0)
    assert np.allclose(np.diff(np.log10(v)), 0.25)
    with pytest.raises(NormfieldError, match="lr_min"):
        log_lrs(0.0, 1.0)


def test_summarize_takes_min_over_seeds():
    import pandas as pd

    df = pd.DataFrame({
        "norm": ["none"] * 6, "width": [10] * 6, "seed": [0, 0, 0, 1, 1, 1], "lr": [0.1, 1.0, 10.0] * 2,
        "final_loss": [1.0, 2e3, np.inf, 0.5, 5.0, np.inf], "eta_emp": [0.5] * 3 + [1.5] * 3,
        "eta_theory": [0.7] * 6,
    })
    s = summarize_lr_grid(df).iloc[0]
    assert s["largest_stable_lr"] == 1.0  # seed 1 survives at η = 1 (Fig. S.2: min over trials)
    assert s["smallest_exploded_lr"] == 10.0 and s["eta_emp"] == 1.0 and s["eta_theory"] == 0.7


@pytest.mark.parametrize("sample_space", [False, True])
def test_return_params_gives_the_trained_students(sample_space):
    # The kept parameters reproduce the reported final loss (survivor) and the frozen loss (exploded);
    # in sample space W_1, b_1 are rebuilt from the accumulated η δ_1 (a different route to the same numbers).
    student, X, y = _problem(seed=7)
    run = train_students(student, X, y, [1e-3, 1e3], steps=15, return_params=True, sample_space=sample_space)
    assert run.exploded[1] and not run.exploded[0]
    p = run.student(0)
    h = X
    for W, b in p[:-1]:
        h = torch.relu(h @ W.T + b)
    f = h @ p[-1][0].T + p[-1][1]
    assert float(((f - y) ** 2).sum() / (2 * X.shape[0])) == pytest.approx(run.final_loss[0], rel=1e-12)
    with pytest.raises(NormfieldError, match="return_params"):
        train_students(student, X, y, [1e-3], steps=1).student(0)


def test_chunked_stack_equals_one_stack():
    # Students are independent: splitting the stack changes nothing but float rounding.
    student, X, y = _problem(seed=11)
    lrs = [1e-4, 1e-3, 3e-3, 1e-2, 50.0]
    one = train_students(student, X, y, lrs, steps=30, max_batch=8, return_params=True)
    two = train_students(student, X, y, lrs, steps=30, max_batch=2, return_params=True)
    np.testing.assert_array_equal(one.exploded, two.exploded)
    np.testing.assert_array_equal(one.steps_run, two.steps_run)
    ok = ~one.exploded
    np.testing.assert_allclose(one.final_loss[ok], two.final_loss[ok], rtol=1e-12)
    assert two.params[0][0].shape[0] == len(lrs)
    with pytest.raises(NormfieldError, match="max_batch"):
        train_students(student, X, y, lrs, steps=1, max_batch=0)


@pytest.mark.parametrize("norm", ["none", "last-mean"])
def test_sample_space_first_layer_equals_weight_space(norm):
    # U_1 ← U_1 − η δ_1ᵀ(XXᵀ + 11ᵀ) is the same GD step as W_1 ← W_1 − η δ_1ᵀX, b_1 ← b_1 − η δ_1ᵀ1:
    # equal up to float64 rounding, including the rebuilt final W_1 and b_1, and the frozen exploded student.
    student, X, y = _problem(M=30, T=20, seed=13)  # T < 2·M_0: the default picks sample space
    lrs = [1e-3, 1e-2, 5e-2, 1e3]
    a = train_students(student, X, y, lrs, steps=50, norm=norm, return_params=True, sample_space=False)
    b = train_students(student, X, y, lrs, steps=50, norm=norm, return_params=True)
    np.testing.assert_array_equal(a.exploded, b.exploded)
    np.testing.assert_array_equal(a.steps_run, b.steps_run)
    assert a.exploded[-1] and not a.exploded[:-1].any()
    np.testing.assert_allclose(a.final_loss[:-1], b.final_loss[:-1], rtol=1e-10)
    for (Wa, ba), (Wb, bb) in zip(a.params, b.params):
        np.testing.assert_allclose(Wb.numpy(), Wa.numpy(), rtol=0, atol=1e-10 * float(Wa.abs().max()))
        np.testing.assert_allclose(bb.numpy(), ba.numpy(), rtol=0, atol=1e-10 * float(ba.abs().max()))
    with pytest.raises(NormfieldError, match="sample_space"):
        train_students(student, X, y, lrs, steps=1, sample_space="yes")


def test_same_seed_is_bitwise_deterministic():
    student, X, y = _problem(M=30, T=20, seed=17)
    lrs = [1e-3, 1e-2, 1e3]
    a = train_students(student, X, y, lrs, steps=30, return_params=True)
    b = train_students(student, X, y, lrs, steps=30, return_params=True)
    np.testing.assert_array_equal(a.final_loss, b.final_loss)
    for (Wa, ba), (Wb, bb) in zip(a.params, b.params):
        assert torch.equal(Wa, Wb) and torch.equal(ba, bb)


@pytest.mark.parametrize("sample_space", [False, True])
def test_smooth_activation_equals_plain_autograd(sample_space):
    # The generic (non-ReLU) path keeps u and uses the activation's derivative.
    student, X, y = _problem(M=16, T=12, seed=19)
    lrs = [1e-3, 3e-2]
    run = train_students(student, X, y, lrs, steps=40, activation="tanh", sample_space=sample_space)
    for k, lr in enumerate(lrs):
        ref = train_student_plain(student, X, y, lr, steps=40, activation="tanh")
        assert run.final_loss[k] == pytest.approx(ref.final_loss[0], rel=1e-9)
