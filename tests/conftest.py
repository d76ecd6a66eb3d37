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


def hand_mix(h, perm, lam):
    """``lam*h + (1-lam)*h[perm]`` written out by hand (lam [B] broadcast over trailing dims)."""
    w = lam.to(h.dtype).view((-1,) + (1,) * (h.ndim - 1))
    return w * h + (1 - w) * h[perm]


class HandHook:
    """An independent reference: a forward hook that mixes the first output of a module (or part
    ``select`` of a tuple output) by ``hand_mix``; later runs pass through. ``with HandHook(...):``"""

    def __init__(self, module, perm, lam, select=None):
        self.module, self.perm, self.lam, self.select, self.runs = module, perm, lam, select, 0

    def __call__(self, module, args, out):
        self.runs += 1
        if self.runs > 1:
            return None
        if self.select is None:
            return hand_mix(out, self.perm, self.lam)
        parts = list(out)
        parts[self.select] = hand_mix(parts[self.select], self.perm, self.lam)
        return type(out)(parts)

    def __enter__(self):
        self.handle = self.module.register_forward_hook(self)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def grads(model):
    """Parameter gradients of ``model`` by name (zeros where a parameter got none), then cleared."""
    out = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out
