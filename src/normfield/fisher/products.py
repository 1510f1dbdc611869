"""The matrix products every route of the Fisher dual is built from.

* :func:`gram` — ``A Aᵀ``, exactly symmetric by construction: only the lower block
  triangle is multiplied and the upper one is its mirror image (a syrk-like product,
  about half the flops of the full gemm).  Symmetry is then bit-exact on every BLAS
  kernel, not just to round-off.
* :func:`sample_factor` — a factor ``Rᵀ`` of the sample kernel ``H Hᵀ + 1`` (weights and
  biases, Karakida et al. 2019, (S.8)–(S.9)).
* :func:`factor_product` — ``Rᵀ D`` for a batch of cotangents, skipping the zero
  triangle of a triangular ``Rᵀ``.
"""

from __future__ import annotations

import torch

__all__ = ["gram", "mirror_lower", "sample_factor", "factor_product"]

#: CPU products at least this large (rows >= 1000 and rows × columns >= 4e6) go through NumPy,
#: whose ``a @ a.T`` is BLAS syrk (one triangle, copied into the other: exactly symmetric).
NUMPY_MIN_ROWS = 1000
NUMPY_MIN_SIZE = 4_000_000


def mirror_lower(d: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix whose lower triangle (diagonal included) is that of the square ``d``."""
    return torch.tril(d) + torch.tril(d, -1).mT


def gram(A: torch.Tensor, block: int | None = None) -> torch.Tensor:
    """``A Aᵀ`` (n × n) for ``A`` of shape (n, m), exactly symmetric.

    Large CPU products call NumPy, whose ``a @ a.T`` is BLAS syrk: one triangle is computed and
    NumPy copies it into the other (exactly symmetric; tested).  Small ones stay in torch, whose
    single OpenMP pool does not thrash on a busy machine (NumPy's OpenBLAS pthreads took ~20 ms for
    a 100×100 product under load, torch ~30 µs).  In torch the rows are split into ``k`` blocks (``block``
    rows each, default ``max(64, ⌈n/4⌉)``); block row ``i`` is multiplied against rows ``0..i``
    only (``(k+1)/2k`` of the gemm flops), its diagonal block is mirrored from its lower
    triangle and the blocks above the diagonal are copies of the transposed blocks below.
    """
    n = A.shape[0]
    if A.device.type == "cpu" and n >= NUMPY_MIN_ROWS and n * A.shape[1] >= NUMPY_MIN_SIZE:
        a = A.detach().contiguous().numpy()
        return torch.from_numpy(a @ a.T)  # syrk: one triangle, copied into the other by NumPy
    block = block or max(64, -(-n // 4))
    if n <= block:
        return mirror_lower(A @ A.T)
    out = torch.empty(n, n, dtype=A.dtype, device=A.device)
    for i0 in range(0, n, block):
        i1 = min(n, i0 + block)
        blk = A[i0:i1] @ A[:i1].T  # rows i0:i1, columns 0:i1 (one gemm per block row)
        out[i0:i1, :i0] = blk[:, :i0]
        out[:i0, i0:i1] = blk[:, :i0].T
        out[i0:i1, i0:i1] = mirror_lower(blk[:, i0:i1])
    return out


def sample_factor(H: torch.Tensor) -> torch.Tensor:
    """``Rᵀ`` with ``R Rᵀ = K = H Hᵀ + 1`` (T × T), ``R`` of ``r = min(T, M+1)`` columns.

    ``B = [H, 1]`` (T × (M+1)) gives ``K = B Bᵀ`` (Karakida et al. 2019, (S.8)–(S.9): weight and
    bias gradients).  For ``T <= M+1`` the QR factorisation ``Bᵀ = Q S`` (``S`` T × T upper
    triangular) gives ``K = Sᵀ Qᵀ Q S = Sᵀ S``, so ``Rᵀ = S`` (r = T); otherwise ``Rᵀ = Bᵀ``
    (r = M+1).  Exact up to round-off (Householder QR is backward stable)."""
    T, M = H.shape
    B = torch.cat([H, torch.ones(T, 1, dtype=H.dtype, device=H.device)], 1)
    if T <= M + 1:
        return torch.linalg.qr(B.T, mode="r")[1]
    return B.T.contiguous()


def factor_product(Rt: torch.Tensor, D: torch.Tensor, out: torch.Tensor, blocks: int = 4) -> None:
    """``out = Rt @ D`` for a batch ``D`` (b, T, M); when ``Rt`` is the upper-triangular QR factor
    (square) the zero lower triangle is skipped block-wise (a trmm-like product: (k+1)/2k of the
    flops for k row blocks)."""
    r, T = Rt.shape
    if r != T or T < 2 * blocks:
        torch.matmul(Rt, D, out=out)
        return
    e = [(i * T) // blocks for i in range(blocks + 1)]
    for i in range(blocks):
        torch.matmul(Rt[e[i]:e[i + 1], e[i]:], D[:, e[i]:], out=out[:, e[i]:e[i + 1]])
