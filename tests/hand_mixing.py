"""The one hand-written mixing reference, independent of the library: the tests compare the mixer
with it, and ``benchmarks/mixing_overhead.py`` builds its hand-written twins from it.

Plain PyTorch only (no ``manifold_mixup`` import), so that an error in the library cannot hide in
the reference.
"""

from __future__ import annotations

import torch
from torch import nn


def hand_mix(h: torch.Tensor, perm: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``lam*h + (1-lam)*h[perm]`` written out by hand: h [B, ...], perm [B], lam [B] broadcast
    over h's trailing dims (and cast to h's dtype). Also mixes one-hot targets [B, K]."""
    w = lam.to(h.dtype).view((-1,) + (1,) * (h.ndim - 1))
    return w * h + (1 - w) * h[perm]


class HandHook:
    """A forward hook that mixes a module's output by ``hand_mix`` at its first run; later runs pass
    through. ``select``: None mixes the output itself; an int mixes that part of a tuple output; a
    str mixes that entry of a mapping output (a Hugging Face ``ModelOutput``) in place.

    ``with HandHook(module, perm, lam, select): logits = model(x)``
    """

    def __init__(self, module: nn.Module, perm: torch.Tensor, lam: torch.Tensor, select: int | str | None = None):
        self.module, self.perm, self.lam, self.select, self.runs = module, perm, lam, select, 0

    def __call__(self, module, args, out):
        self.runs += 1
        if self.runs > 1:
            return None
        if self.select is None:
            return hand_mix(out, self.perm, self.lam)
        if isinstance(self.select, str):
            out[self.select] = hand_mix(out[self.select], self.perm, self.lam)
            return out
        parts = list(out)
        parts[self.select] = hand_mix(parts[self.select], self.perm, self.lam)
        return type(out)(parts)

    def __enter__(self) -> HandHook:
        self.handle = self.module.register_forward_hook(self)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()
