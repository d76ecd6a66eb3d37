"""Test models and data shared by the test files."""

import torch
from torch import nn


class Residual(nn.Module):
    """A residual network with a branch: stem -> block (h + f(h)) -> head."""

    def __init__(self, width: int = 8, d: int = 4, k: int = 3):
        super().__init__()
        self.stem = nn.Linear(d, width)
        self.block = nn.Sequential(nn.Linear(width, width), nn.Tanh())
        self.head = nn.Linear(width, k)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = h + self.block(h)
        return self.head(h)


class LastStep(nn.Module):
    """An LSTM encoder (its output is a tuple: the states and (h, c)) and a head on the last step."""

    def __init__(self, d: int = 4, k: int = 2):
        super().__init__()
        self.enc = nn.LSTM(d, 4, batch_first=True)
        self.head = nn.Linear(4, k)

    def forward(self, x):
        out, _ = self.enc(x)
        return self.head(out[:, -1])


def data(b: int = 6, seed: int = 0, d: int = 4, k: int = 3):
    """Inputs [b, d] and class labels [b] in [0, k), from a seeded generator."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g), torch.randint(0, k, (b,), generator=g)
