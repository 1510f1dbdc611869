"""normfield on a torchvision-style ResNet block (no torchvision needed).

A small ResNet (stem conv-BN-ReLU, two basic blocks written here the way
torchvision writes ``BasicBlock``, global average pooling, linear head) at
initialization, analyzed with :func:`normfield.analyze`:

* λ_max and m_λ of the Fisher/NTK over the whole batch (train-mode BN couples
  the samples; the batch is differentiated together),
* the learning-rate bound 2/λ_max and what last-layer mean subtraction does to it
  (Karakida et al. 2019, Thm 3.3),
* per-layer batch Gram conditioning and, for BN→ReLU layers, the distance to the
  BN fixed point G* (Joudaki et al. 2023, eq. (10)).

Run:  python examples/resnet_block.py [--width 16] [--batch 32]
CLI:  normfield analyze examples/resnet_block.py:make_model --input-shape 3,8,8 --batch 16 --what-if last-mean
"""

from __future__ import annotations

import argparse

import torch
from torch import nn


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock``: conv3x3-BN-ReLU-conv3x3-BN, plus the (projected) input, ReLU."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        return self.relu(out + identity)


class TinyResNet(nn.Module):
    """Stem + two basic blocks + average pool + linear classifier."""

    def __init__(self, width: int = 16, in_channels: int = 3, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv3x3(in_channels, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)
        for m in self.modules():  # torchvision's initialization
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def make_model(width: int = 16, in_channels: int = 3, classes: int = 10) -> nn.Module:
    """Factory for ``normfield analyze examples/resnet_block.py:make_model``."""
    return TinyResNet(width, in_channels, classes)


def main() -> None:
    import normfield as nf

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--image", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.manual_seed(a.seed)
    model = make_model(a.width).double()
    x = torch.randn(a.batch, 3, a.image, a.image, generator=torch.Generator().manual_seed(a.seed + 1),
                    dtype=torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = nf.analyze(model, x, what_if="last-mean", method="lanczos", k=5, progress=True)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # model untouched
    print(res.summary())
    cols = ["layer", "type", "condition_number", "effective_rank", "top_fraction", "fixed_point", "dist_fixed_point"]
    print(res.layers[cols].to_string(index=False))


if __name__ == "__main__":
    main()
