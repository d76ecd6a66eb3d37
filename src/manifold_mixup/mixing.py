"""Mixing primitives: the mixing plan, mixing of tensors and targets, and the mixed loss.

A *mixing plan* for a batch of size B is a permutation ``perm`` (LongTensor [B]) and a
per-row coefficient ``lam`` (Tensor [B], in [0, 1]). Row i of a mixed tensor is
``lam[i] * h[i] + (1 - lam[i]) * h[perm[i]]``; targets mix the same way as one-hot or soft
rows, and the loss ``lam*CE(out, y) + (1-lam)*CE(out, y[perm])`` per row, averaged, equals
cross-entropy against the mixed soft target.

lambda is drawn from Beta(alpha, alpha); alpha = 0 means no mixing (lambda = 1 exactly).
Every draw takes the caller's ``torch.Generator`` (a CPU generator: plans are drawn on the CPU
and moved to the tensors' device).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MixPlan",
    "check_alpha",
    "sample_lambda",
    "draw_plan",
    "identity_plan",
    "mix",
    "soft_targets",
    "mix_targets",
    "soft_cross_entropy",
    "mixed_cross_entropy",
]


@dataclass(frozen=True)
class MixPlan:
    """How one batch is mixed: row i becomes ``lam[i] * h[i] + (1 - lam[i]) * h[perm[i]]``.

    perm: LongTensor [B], a permutation of 0..B-1.
    lam:  float Tensor [B], each in [0, 1]; per-batch mode repeats one value.
    """

    perm: Tensor
    lam: Tensor

    def __post_init__(self) -> None:
        if self.perm.ndim != 1 or self.lam.ndim != 1 or self.perm.shape != self.lam.shape:
            raise ValueError(
                f"MixPlan needs perm and lam of the same shape [B]; got perm {tuple(self.perm.shape)} "
                f"and lam {tuple(self.lam.shape)}"
            )

    @property
    def batch_size(self) -> int:
        return int(self.perm.shape[0])

    def to(self, device: torch.device | str) -> "MixPlan":
        return MixPlan(self.perm.to(device, non_blocking=True), self.lam.to(device, non_blocking=True))


def check_alpha(alpha: float | Tensor, name: str = "alpha") -> None:
    """Raise ValueError unless alpha (a number or a tensor of per-sample values) is finite and >= 0."""
    if isinstance(alpha, Tensor):
        if alpha.numel() and (not torch.isfinite(alpha).all() or (alpha < 0).any()):
            bad = alpha[~torch.isfinite(alpha) | (alpha < 0)][0].item()
            raise ValueError(f"{name} must be finite and >= 0 (0 means no mixing); got {bad}")
        return
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"{name} must be a number >= 0 or an alpha policy; got {type(alpha).__name__}")
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"{name} must be finite and >= 0 (0 means no mixing); got {alpha}")


def _numpy_rng(generator: torch.Generator | None) -> np.random.Generator:
    """A numpy generator seeded from one draw of the torch generator (torch has no seeded Beta)."""
    seed = torch.randint(0, 2**62, (1,), generator=generator).item()
    return np.random.default_rng(seed)


def sample_lambda(
    alpha: float | Tensor,
    batch_size: int,
    *,
    per_sample: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw lambda ~ Beta(alpha, alpha) for a batch: float32 Tensor [batch_size] on the CPU.

    alpha: a number, or a Tensor [batch_size] of per-sample values (per_sample must be True).
    Rows whose alpha is 0 get lambda = 1 exactly. per_sample=False draws one value for the batch.
    """
    check_alpha(alpha)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if isinstance(alpha, Tensor) and alpha.ndim > 0:
        if not per_sample:
            raise ValueError("per-sample alpha values need per_sample=True")
        if alpha.shape != (batch_size,):
            raise ValueError(f"alpha has shape {tuple(alpha.shape)}; expected [{batch_size}]")
        a = alpha.detach().to("cpu", torch.float64).numpy()
    else:
        a = np.full(batch_size if per_sample else 1, float(alpha))
    lam = np.ones_like(a)
    on = a > 0
    if on.any():
        lam[on] = _numpy_rng(generator).beta(a[on], a[on])
    out = torch.from_numpy(lam).to(torch.float32)
    return out if per_sample else out.expand(batch_size).clone()


def draw_plan(
    batch_size: int,
    alpha: float | Tensor,
    *,
    per_sample: bool = True,
    generator: torch.Generator | None = None,
) -> MixPlan:
    """Draw a mixing plan: a random permutation, then lambda ~ Beta(alpha, alpha) (CPU tensors)."""
    perm = torch.randperm(batch_size, generator=generator)
    lam = sample_lambda(alpha, batch_size, per_sample=per_sample, generator=generator)
    return MixPlan(perm, lam)


def identity_plan(batch_size: int, device: torch.device | str = "cpu") -> MixPlan:
    """The plan that mixes nothing: perm = 0..B-1, lam = 1."""
    return MixPlan(torch.arange(batch_size, device=device), torch.ones(batch_size, device=device))


def mix(h: Tensor, plan: MixPlan) -> Tensor:
    """Mix a batch-first tensor h [B, ...]: ``lam*h + (1-lam)*h[perm]``, in h's dtype and device."""
    if h.ndim == 0 or h.shape[0] != plan.batch_size:
        raise ValueError(
            f"cannot mix a tensor of shape {tuple(h.shape)} with a plan for a batch of {plan.batch_size}: "
            "the mixed tensor must be batch-first"
        )
    lam = plan.lam.to(device=h.device, dtype=h.dtype).reshape((-1,) + (1,) * (h.ndim - 1))
    # lerp(a, b, w) = a + w (b - a), one fused kernel; exact at w = 1 (gives b) and w = 0 (gives a)
    return torch.lerp(h[plan.perm.to(h.device)], h, lam)


def _check_labels(y: Tensor, num_classes: int) -> None:
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2; got {num_classes}")
    if y.dtype.is_floating_point:
        if y.ndim != 2 or y.shape[1] != num_classes:
            raise ValueError(f"soft targets must have shape [B, {num_classes}]; got {tuple(y.shape)}")
        return
    if y.ndim != 1:
        raise ValueError(f"class-index targets must have shape [B]; got {tuple(y.shape)}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        bad = y[(y < 0) | (y >= num_classes)][0].item()
        raise ValueError(f"labels must lie in [0, {num_classes}); got {bad}")


def soft_targets(y: Tensor, num_classes: int, label_smoothing: float = 0.0) -> Tensor:
    """Targets as float rows [B, K] summing to 1 (class indices become one-hot, then smoothed).

    y: LongTensor [B] of class indices in [0, K), or float [B, K] soft rows (returned smoothed).
    label_smoothing: eps in [0, 1); the row becomes (1 - eps) * row + eps / K.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1); got {label_smoothing}")
    _check_labels(y, num_classes)
    rows = y.float() if y.dtype.is_floating_point else F.one_hot(y, num_classes).float()
    if label_smoothing:
        rows = rows * (1 - label_smoothing) + label_smoothing / num_classes
    return rows


def mix_targets(y: Tensor, plan: MixPlan, num_classes: int, label_smoothing: float = 0.0) -> Tensor:
    """Mixed soft targets [B, K]: ``lam*t + (1-lam)*t[perm]`` of the (smoothed) target rows t."""
    if y.shape[0] != plan.batch_size:
        raise ValueError(f"targets have batch size {y.shape[0]} but the plan is for {plan.batch_size}")
    return mix(soft_targets(y, num_classes, label_smoothing), plan)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over rows of ``-sum_k targets[k] * log_softmax(logits)[k]``; logits and targets [B, K]."""
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ in shape")
    return -(targets * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def mixed_cross_entropy(logits: Tensor, y: Tensor, plan: MixPlan, label_smoothing: float = 0.0) -> Tensor:
    """The two-term loss ``lam*CE(out, y) + (1-lam)*CE(out, y[perm])`` per row, averaged.

    logits [B, K]; y LongTensor [B] of class indices. Equal to ``soft_cross_entropy`` against
    ``mix_targets(y, plan, K, label_smoothing)``.
    """
    _check_labels(y, logits.shape[-1])
    lam = plan.lam.to(logits.device, torch.float32)
    ce = lambda t: F.cross_entropy(logits.float(), t, reduction="none", label_smoothing=label_smoothing)  # noqa: E731
    return (lam * ce(y) + (1 - lam) * ce(y[plan.perm.to(y.device)])).mean()
