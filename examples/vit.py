"""A small vision transformer (patches, class token, pre-norm encoder) analyzed at initialization.

Fused attention has no forward-mode derivative on the CPU; :func:`normfield.analyze`
detects it and forms the Jacobian products with the math attention kernel (same
numbers), so the whole-batch Fisher/NTK of a transformer comes out as for any
other model (Karakida et al. 2019, eqs. (8), (10), (23)).

Run:  python examples/vit.py [--dim 128] [--depth 8] [--batch 64]
CLI:  normfield analyze examples/vit.py:make_model --input-shape 3,32,32 --batch 64 --dtype float32
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn


class ViT(nn.Module):
    def __init__(self, dim: int = 128, depth: int = 8, heads: int = 4, patch: int = 4, image: int = 32,
                 in_channels: int = 3, classes: int = 10, mlp: int = 2) -> None:
        super().__init__()
        self.patch = nn.Conv2d(in_channels, dim, patch, stride=patch)
        tokens = (image // patch) ** 2 + 1
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, mlp * dim, dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.patch(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1) + self.pos
        return self.head(self.norm(self.encoder(h))[:, 0])


def make_model(dim: int = 128, depth: int = 8, heads: int = 4, patch: int = 4, image: int = 32,
               classes: int = 10) -> nn.Module:
    """Factory for ``normfield analyze examples/vit.py:make_model`` (≈ 1.1M parameters by default)."""
    return ViT(dim, depth, heads, patch, image, classes=classes)


def main() -> None:
    import normfield as nf

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    model = make_model(a.dim, a.depth)
    x = torch.randn(a.batch, 3, 32, 32, generator=torch.Generator().manual_seed(a.seed + 1))
    t0 = time.perf_counter()
    res = nf.analyze(model, x, dtype="float32", progress=True)
    print(res.summary())
    print(f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
