"""The paper's models, with layer names that say where mixing happens.

- ``mlp(K)``: the depth study's ReLU MLP 2-512-512-512-K as an ``nn.Sequential`` whose modules
  are named ``fc1, relu1, fc2, relu2, fc3, relu3, out``; mixing at layer k >= 1 mixes the output
  of ``relu{k}`` (``mlp_layer(k)``), k = 0 is input mixup.
- ``paper_cnn(input_shape, K)``: Table 2's CNN (conv 3x3 32, ReLU, max-pool 2; conv 3x3 64, ReLU,
  max-pool 2; flatten; FC 64, ReLU; FC K), sized from the input shape; manifold mixing right
  before the first fully connected layer is the output of ``flatten`` (``PAPER_CNN_MIX_LAYER``).
- ``small_resnet(input_shape, K)``: a small residual CNN (skip connections) for tests and
  benchmarks of mixing on non-sequential models.

Initialisation takes an explicit ``torch.Generator`` and follows PyTorch's default for
``nn.Linear`` (weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))), so the vectorised
trainer can draw the very same weights from the same seed.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .constants import PAPER_CNN_MIX_LAYER

__all__ = [
    "mlp",
    "mlp_layer",
    "mlp_init",
    "paper_cnn",
    "PAPER_CNN_MIX_LAYER",
    "small_resnet",
]


def mlp_layer(k: int, depth: int = 3) -> str:
    """Name of the module whose output is mixed at layer k (0 = input mixup)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= depth:
        raise ValueError(f"mixing layer k must be an integer in 0..{depth} (0 = input); got {k!r}")
    return "input" if k == 0 else f"relu{k}"


def _check_sizes(in_features: int, hidden: Sequence[int], num_classes: int) -> list[int]:
    if num_classes < 2:
        raise ValueError(f"num_classes K must be >= 2; got {num_classes}")
    sizes = [in_features, *hidden, num_classes]
    if any((not isinstance(s, int)) or s < 1 for s in sizes):
        raise ValueError(f"layer sizes must be positive integers; got {sizes}")
    return sizes


def mlp_init(sizes: Sequence[int], generator: torch.Generator | None = None) -> list[tuple[Tensor, Tensor]]:
    """PyTorch-default initial (weight [out, in], bias [out]) pairs for an MLP with these sizes.

    The draws are, per layer in order: weight then bias, each U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    """
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = 1.0 / math.sqrt(fan_in)
        w = torch.rand(fan_out, fan_in, generator=generator) * (2 * bound) - bound
        b = torch.rand(fan_out, generator=generator) * (2 * bound) - bound
        params.append((w, b))
    return params


def mlp(
    num_classes: int,
    hidden: Sequence[int] = (512, 512, 512),
    in_features: int = 2,
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """The paper's ReLU MLP in_features-hidden...-K, initialised from ``generator``."""
    sizes = _check_sizes(in_features, hidden, num_classes)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for j, (w, b) in enumerate(mlp_init(sizes, generator), start=1):
        lin = nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        last = j == len(sizes) - 1
        layers["out" if last else f"fc{j}"] = lin
        if not last:
            layers[f"relu{j}"] = nn.ReLU()
    return nn.Sequential(layers)


def paper_cnn(input_shape: Sequence[int], num_classes: int = 10,
              generator: torch.Generator | None = None) -> nn.Sequential:
    """Table 2's CNN for inputs [C, H, W] (3x3 convolutions with padding 1, two 2x2 max-pools).

    generator: draws the initial weights with PyTorch's default scheme for ``Conv2d``/``Linear``
    (kaiming-uniform weights, biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))); without one a fresh
    unseeded generator is used. The global random state is neither read nor changed.
    """
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) with positive sizes; got {tuple(input_shape)}")
    c, h, w = input_shape
    if h < 4 or w < 4:
        raise ValueError(f"paper_cnn needs H, W >= 4 for its two 2x2 pools; got {h}x{w}")
    if num_classes < 2:
        raise ValueError(f"num_classes K must be >= 2; got {num_classes}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None; got {type(generator).__name__}")
    flat = 64 * (h // 4) * (w // 4)
    with torch.device("meta"):  # no draw from the global generator
        model = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(c, 32, 3, padding=1)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(32, 64, 3, padding=1)), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(2)),
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(flat, 64)), ("relu3", nn.ReLU()),
            ("fc2", nn.Linear(64, num_classes)),
        ]))
    model = model.to_empty(device="cpu")
    g = generator
    if g is None:
        g = torch.Generator()
        g.seed()  # a non-deterministic seed for this generator only
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=g)
                bound = 1 / math.sqrt(m.weight[0].numel())
                m.bias.uniform_(-bound, bound, generator=g)
    return model


class _Block(nn.Module):
    """conv-BN-ReLU-conv-BN plus a skip (1x1 conv when the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
        )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.skip(x))


class SmallResNet(nn.Module):
    """stem -> block1 -> block2 -> pool -> dropout -> fc. Mixable layers: stem, block1, block2, pool."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, dropout: float = 0.1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.block1 = _Block(width, width, 1)
        self.block2 = _Block(width, 2 * width, 2)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.drop(self.pool(self.block2(self.block1(self.stem(x))))))


def small_resnet(input_shape: Sequence[int], num_classes: int = 10, width: int = 16) -> SmallResNet:
    """A small residual CNN with BatchNorm and dropout, for inputs [C, H, W]."""
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W); got {tuple(input_shape)}")
    return SmallResNet(input_shape[0], num_classes, width)
