"""BN-MLP training (Joudaki et al. 2023, §6.2): measurements, determinism, checkpoint/resume."""

import math

import numpy as np
import pytest
import torch

from normfield.errors import NormfieldError
from normfield.train.bn_mlp import (CHECKPOINT_NAME, BNMLP, BNMLPConfig, class_entropy, gram_eigenvalues,
                                    train_bn_mlp)
from normfield.train.data import Dataset


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _toy(n=300, d=8, c=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, size=n)
    x = rng.standard_normal((n, d)) + 1.5 * np.eye(c, d)[y]  # separable-ish clusters
    return Dataset("toy", "train", x.astype(np.float32), y.astype(np.int64), tuple("abc"[:c]), "test")


SMALL = dict(depth=4, width=16, batch_size=32, epochs=3, gram_every=2, gram_batch=24, eval_samples=200, lr=0.05)


def test_class_entropy_exact_cases():
    assert class_entropy(np.arange(8) % 4, 4) == pytest.approx(2.0, abs=1e-15)  # uniform: log2 C
    assert class_entropy(np.zeros(10, int), 5) == 0.0  # collapse
    # p = (1/2, 1/4, 1/4): H = 1.5 bits exactly
    assert class_entropy(np.array([0, 0, 1, 2]), 3) == pytest.approx(1.5, abs=1e-15)


def test_gram_eigenvalues_identities():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(12, 40, generator=g)
    ev = gram_eigenvalues(h)
    assert ev.shape == (12,) and np.all(np.diff(ev) <= 0)
    h64 = h.double()
    # sum of eigenvalues = trace(H Hᵀ/d) = ||H||_F²/d; the top one = ||H||_2²/d (float64 rounding)
    assert ev.sum() == pytest.approx(float((h64 ** 2).sum() / 40), rel=1e-12)
    assert ev[0] == pytest.approx(float(torch.linalg.matrix_norm(h64, ord=2) ** 2 / 40), rel=1e-12)


def test_measure_mode_is_batchnorm_with_batch_stats_and_leaves_running_stats():
    cfg = BNMLPConfig(**{**SMALL, "depth": 3})
    model = BNMLP(8, 3, cfg, torch.Generator().manual_seed(1)).double()
    x = torch.randn(20, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    h = model.penultimate(x)
    for k, v in model.state_dict().items():  # running means/vars and counters untouched
        assert torch.equal(v, before[k]), k
    # independent route: BN by hand, (u − mean)/sqrt(biased var + eps)·γ + β, then ReLU
    ref = x
    for lin, bn in zip(model.linears[:-1], model.norms):
        u = ref @ lin.weight.T + lin.bias
        u = (u - u.mean(0)) / torch.sqrt(u.var(0, unbiased=False) + bn.eps) * bn.weight + bn.bias
        ref = torch.relu(u)
    torch.testing.assert_close(h, ref, rtol=1e-12, atol=1e-12)


def test_init_law_matches_torch_default():
    # W ~ U(±1/sqrt(fan_in)): mean 0, variance 1/(3 fan_in); 400·16 entries → the sample
    # variance's relative s.e. is sqrt(Var(w²))/(E w² sqrt(n)) = sqrt(4/5)/sqrt(6400) ≈ 0.011; allow 5 s.e.
    cfg = BNMLPConfig(depth=2, width=400, batchnorm=False)
    m = BNMLP(16, 3, cfg, torch.Generator().manual_seed(0))
    w = m.linears[0].weight.detach().double()
    assert float(w.abs().max()) <= 1 / 4
    assert float(w.var()) == pytest.approx(1 / (3 * 16), rel=5 * 0.011)


def test_same_seed_same_numbers():
    data = _toy()
    cfg = BNMLPConfig(**SMALL)
    a = train_bn_mlp(data, cfg, progress=False)
    b = train_bn_mlp(data, cfg, progress=False)
    assert a.metrics.equals(b.metrics) and a.eigenvalues.equals(b.eigenvalues)
    c = train_bn_mlp(data, BNMLPConfig(**{**SMALL, "seed": 1}), progress=False)
    assert not a.metrics["loss"].equals(c.metrics["loss"])


def test_metrics_schedule_and_ranges():
    data = _toy()
    r = train_bn_mlp(data, BNMLPConfig(**SMALL), progress=False)
    m = r.metrics
    assert list(m["epoch"]) == [0, 1, 2, 3]
    assert math.isnan(m["train_loss"][0]) and m["train_loss"][1:].notna().all()
    assert ((m["entropy"] >= 0) & (m["entropy"] <= math.log2(3) + 1e-12)).all()
    assert sorted(r.eigenvalues["epoch"].unique()) == [0, 2, 3]  # init, every 2nd, end
    assert (r.eigenvalues.groupby("epoch").size() == 24).all()
    assert m.loc[m["epoch"] == 1, "log_eig_std"].isna().all()
    assert m["loss"].iloc[-1] < m["loss"].iloc[0]  # lr 0.05 on separable clusters: it learns


def test_killed_and_resumed_run_is_bitwise_identical(tmp_path):
    data = _toy()
    cfg = BNMLPConfig(**SMALL)
    full = train_bn_mlp(data, cfg, checkpoint_dir=tmp_path / "a", progress=False)

    class Killed(Exception):
        pass

    def kill_after_1(epoch, row):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        train_bn_mlp(data, cfg, checkpoint_dir=tmp_path / "b", progress=False, on_epoch_end=kill_after_1)
    assert (tmp_path / "b" / CHECKPOINT_NAME).exists()
    assert not list((tmp_path / "b").glob("*.tmp*"))  # atomic writes leave no temp file
    resumed = train_bn_mlp(data, cfg, checkpoint_dir=tmp_path / "b", progress=False)
    assert resumed.resumed_from == 1
    assert full.metrics.equals(resumed.metrics) and full.eigenvalues.equals(resumed.eigenvalues)
    for (k, v), (k2, v2) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    # a finished run re-run is read back without training
    again = train_bn_mlp(data, cfg, checkpoint_dir=tmp_path / "b", progress=False)
    assert again.resumed_from == 3 and again.metrics.equals(full.metrics)


def test_resume_refuses_other_settings_and_corrupt_checkpoint(tmp_path):
    data = _toy()
    cfg = BNMLPConfig(**{**SMALL, "epochs": 1})
    train_bn_mlp(data, cfg, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(NormfieldError, match="other settings"):
        train_bn_mlp(data, BNMLPConfig(**{**SMALL, "epochs": 1, "lr": 0.1}), checkpoint_dir=tmp_path, progress=False)
    # resume=False starts afresh and overwrites
    train_bn_mlp(data, BNMLPConfig(**{**SMALL, "epochs": 1, "lr": 0.1}), checkpoint_dir=tmp_path,
                 resume=False, progress=False)
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"garbage")
    with pytest.raises(NormfieldError, match="corrupt"):
        train_bn_mlp(data, cfg, checkpoint_dir=tmp_path, progress=False)


@pytest.mark.parametrize("field, value, name", [
    ("width", 1, "width"), ("lr", -1.0, "lr"), ("batch_size", 1, "batch_size"),
    ("dtype", "float16", "dtype"), ("activation", "nope", "activation"), ("epochs", -1, "epochs"),
])
def test_bad_config(field, value, name):
    with pytest.raises(NormfieldError, match=name):
        train_bn_mlp(_toy(), BNMLPConfig(**{**SMALL, field: value}), progress=False)


def test_batch_larger_than_data():
    with pytest.raises(NormfieldError, match="batch_size"):
        train_bn_mlp(_toy(n=20), BNMLPConfig(**SMALL), progress=False)


def test_class_probabilities_theory_quadrature_and_special_cases():
    from normfield.gram.bn_theory import class_probabilities_theory

    a = np.random.default_rng(0).standard_normal((7, 6))
    p = class_probabilities_theory(a, 2.0)
    assert np.abs(p.sum(axis=1) - 1).max() < 1e-10  # 80 Gauss–Hermite nodes on a smooth integrand
    assert np.allclose(class_probabilities_theory(a, 0.0), 1 / 6, atol=1e-12)  # no offset: uniform
    # two classes: p_0 = P(e_0 − e_1 > −√r (a_0 − a_1)) = Φ(√r (a_0 − a_1)/√2), exact
    from scipy.stats import norm

    a2 = np.array([[0.3, -0.5]])
    assert class_probabilities_theory(a2, 1.7)[0, 0] == pytest.approx(norm.cdf(np.sqrt(1.7) * 0.8 / np.sqrt(2)),
                                                                      abs=1e-12)


def test_class_probabilities_theory_against_monte_carlo():
    # Independent route: simulate argmax(√r a + e) directly. With N = 200,000 samples each
    # frequency has s.e. sqrt(p(1−p)/N) <= 0.0011; allow 4.5 s.e. per class (6 classes: the
    # chance of any false alarm is < 6·7e-6).
    from normfield.gram.bn_theory import class_probabilities_theory

    rng = np.random.default_rng(1)
    a = rng.standard_normal(6)
    r, N = 0.46, 200_000
    z = np.sqrt(r) * a + rng.standard_normal((N, 6))
    freq = np.bincount(z.argmax(axis=1), minlength=6) / N
    p = class_probabilities_theory(a[None, :], r)[0]
    assert np.all(np.abs(freq - p) <= 4.5 * np.sqrt(p * (1 - p) / N))


def test_entropy_theory_limits():
    from normfield.gram.bn_theory import entropy_at_init_theory

    t = entropy_at_init_theory("relu", 128, 10, 256, draws=400, seed=0)
    assert 0 < t["mean"] < t["log2_C"] and t["sd"] > 0 and t["stderr"] == pytest.approx(t["sd"] / 20)
    # ReLU at the BN fixed point: off-diagonal J(−1/(n−1))/2 over diagonal 1/2 (Karakida S.70)
    from normfield.gram.fixed_point import fixed_point

    fp = fixed_point("relu", 128)
    assert t["ratio"] == pytest.approx((fp.off_diagonal + 1 / 256) / (fp.diagonal - fp.off_diagonal), rel=1e-12)
    # identity activation: G* has zero off-diagonal mean up to −1/(n−1): the offset is only the bias
    ti = entropy_at_init_theory("identity", 128, 10, 10**6, draws=200, seed=0)
    assert ti["mean"] > t["mean"]
    with pytest.raises(NormfieldError, match="num_classes"):
        entropy_at_init_theory("relu", 128, 1, 256)


@pytest.mark.heavy
def test_entropy_theory_against_real_bn_networks():
    # R = 24 freshly initialised BN-MLPs (depth 10, width 512) on Gaussian inputs: the mean of
    # their init entropies has s.e. sd/sqrt(R); allow 4 s.e. plus 3 MC s.e. of the theory.
    from normfield.gram.bn_theory import entropy_at_init_theory

    R, C = 24, 10
    cfg = BNMLPConfig(depth=10, width=512, batchnorm=True)
    x = torch.randn(1280, 64, generator=torch.Generator().manual_seed(0))
    hs = []
    for s in range(R):
        m = BNMLP(64, C, cfg, torch.Generator().manual_seed(100 + s))
        with torch.no_grad():
            pred = torch.cat([m.measure_logits(x[i:i + 128]).argmax(1) for i in range(0, 1280, 128)])
        hs.append(class_entropy(pred.numpy(), C))
    t = entropy_at_init_theory("relu", 128, C, 512, draws=4000, seed=1)
    assert abs(np.mean(hs) - t["mean"]) <= 4 * t["sd"] / np.sqrt(R) + 3 * t["stderr"]
