"""A CIFAR-style ResNet-18 (no torchvision needed) analyzed at initialization.

The ResNet-18 of He et al. (2016) as used on 32×32 images: a 3×3 stem
convolution (no max-pool), four stages of two basic blocks with 64·w, 128·w,
256·w, 512·w channels (w = ``width / 64``), global average pooling and a
linear head; 11.2M parameters at width 64. :func:`normfield.analyze` gives
the whole-batch Fisher/NTK statistics with train-mode batch norm (Karakida et
al. 2019, eqs. (8), (10), (23)) and the per-layer batch Gram conditioning
(Joudaki et al. 2023, eqs. (2), (10)).

Run:  python examples/resnet18.py [--width 64] [--batch 128] [--what-if]
CLI:  normfield analyze examples/resnet18.py:make_model --input-shape 3,32,32 --batch 128 --dtype float32
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the (1×1-projected) input, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, width: int = 64, in_channels: int = 3, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        blocks, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            for j in range(2):
                blocks.append(BasicBlock(cin, cout, stride=2 if (i > 0 and j == 0) else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(x))
        return self.fc(h.mean(dim=(2, 3)))


def make_model(width: int = 64, in_channels: int = 3, classes: int = 10) -> nn.Module:
    """Factory for ``normfield analyze examples/resnet18.py:make_model``."""
    return ResNet18(width, in_channels, classes)


def main() -> None:
    import normfield as nf

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--image", type=int, default=32)
    ap.add_argument("--what-if", action="store_true", help="also last-layer mean subtraction")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    model = make_model(a.width)
    x = torch.randn(a.batch, 3, a.image, a.image, generator=torch.Generator().manual_seed(a.seed + 1))
    t0 = time.perf_counter()
    res = nf.analyze(model, x, dtype="float32", what_if="last-mean" if a.what_if else None, progress=True)
    print(res.summary())
    print(f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
