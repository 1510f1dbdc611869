"""A wide MLP with batch norm in the middle: (Linear → BatchNorm1d → ReLU) × depth → Linear.

Used by docs/predict.md: ``normfield predict examples/bn_mlp.py:make_model --input-shape 32 --batch 16``
and the same with ``normfield analyze ... --theory``.
"""

from __future__ import annotations

from torch import nn


def make_model(width: int = 1024, depth: int = 2, d_in: int = 32, outputs: int = 1) -> nn.Module:
    """The network in float64, torch's default initialization (seed it with ``torch.manual_seed`` first)."""
    layers: list[nn.Module] = []
    fan = d_in
    for _ in range(depth):
        layers += [nn.Linear(fan, width), nn.BatchNorm1d(width), nn.ReLU()]
        fan = width
    return nn.Sequential(*layers, nn.Linear(fan, outputs)).double()
