"""The products the Fisher dual is built from: the blocked Gram product against the plain one
(round-off), its exact symmetry (guaranteed by construction: one triangle, mirrored), the
sample-kernel factor and the triangular factor product."""

import numpy as np
import pytest
import torch

from normfield.fisher.products import factor_product, gram, mirror_lower, sample_factor


@pytest.mark.parametrize("n,m,block", [(5, 3, None), (70, 9, None), (300, 40, None), (131, 17, 32)])
def test_gram_is_exactly_symmetric_and_equals_the_full_product(n, m, block):
    A = torch.randn(n, m, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    G = gram(A, block)
    ref = A @ A.T
    # the same sums of m products in another blocking: round-off, |err| <= ~m·eps·|a||b| per entry
    torch.testing.assert_close(G, ref, rtol=0, atol=1e-13 * m * float(ref.abs().max()))
    assert torch.equal(G, G.T)  # guaranteed: the upper triangle is a copy of the lower one


def test_gram_numpy_path_is_exactly_symmetric():
    # NumPy's a @ a.T is BLAS syrk and copies the computed triangle into the other one
    A = torch.randn(1000, 4000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    G = gram(A)
    assert torch.equal(G, G.T)
    torch.testing.assert_close(G, A @ A.T, rtol=0, atol=1e-9 * float(G.abs().max()))


def test_mirror_lower_keeps_the_lower_triangle():
    d = torch.arange(16.0).reshape(4, 4)
    s = mirror_lower(d)
    assert torch.equal(torch.tril(s), torch.tril(d)) and torch.equal(s, s.T)


@pytest.mark.parametrize("T,M", [(6, 9), (12, 4)])
def test_sample_factor_and_triangular_product(T, M):
    g = torch.Generator().manual_seed(T)
    H = torch.randn(T, M, generator=g, dtype=torch.float64)
    Rt = sample_factor(H)
    assert Rt.shape == (min(T, M + 1), T)
    K = H @ H.T + 1.0
    torch.testing.assert_close(Rt.T @ Rt, K, rtol=0, atol=1e-12 * float(K.abs().max()))
    D = torch.randn(3, T, 5, generator=g, dtype=torch.float64)
    out = torch.empty(3, Rt.shape[0], 5, dtype=torch.float64)
    factor_product(Rt, D, out)
    ref = torch.matmul(Rt, D)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=0, atol=1e-12 * float(ref.abs().max()))
