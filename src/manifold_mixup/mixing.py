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
    "PlanSampler",
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
    if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number >= 0 or an alpha policy; got {type(alpha).__name__}")
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"{name} must be finite and >= 0 (0 means no mixing); got {alpha}")


def _beta_rows(rng: np.random.Generator, a: np.ndarray) -> np.ndarray:
    """lambda_i ~ Beta(a_i, a_i) for a float64 array a >= 0; lambda_i = 1 exactly where a_i = 0."""
    lam = np.ones_like(a)
    on = a > 0
    if on.all():
        lam = rng.beta(a, a)
    elif on.any():
        lam[on] = rng.beta(a[on], a[on])
    return lam


class PlanSampler:
    """Draws mixing plans from one numpy stream seeded once from a torch generator.

    torch has no seeded Beta sampler, so lambda comes from numpy's PCG64. Seeding it once (from
    one draw of ``generator``, or from an int) and keeping it keeps a training step's random work
    to a few microseconds, while the same generator seed still gives the same sequence of plans.
    """

    def __init__(self, generator: torch.Generator | int | None = None) -> None:
        if isinstance(generator, int):
            seed = generator
        else:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        self.rng = np.random.default_rng(seed)

    def lam(self, alpha: float | np.ndarray, batch_size: int, per_sample: bool = True) -> np.ndarray:
        """float64 [batch_size] lambdas; alpha a number or a float64 array [batch_size] (already checked)."""
        if isinstance(alpha, np.ndarray):
            return _beta_rows(self.rng, alpha)
        if not per_sample:
            return np.repeat(_beta_rows(self.rng, np.array([float(alpha)])), batch_size)
        return _beta_rows(self.rng, np.full(batch_size, float(alpha)))

    def plan(self, batch_size: int, alpha: float | np.ndarray, per_sample: bool = True) -> MixPlan:
        """A permutation, then lambdas, as CPU tensors (int64 [B], float32 [B])."""
        perm = torch.from_numpy(self.rng.permutation(batch_size))
        lam = torch.from_numpy(self.lam(alpha, batch_size, per_sample).astype(np.float32))
        return MixPlan(perm, lam)

    def choice(self, probs: np.ndarray) -> int:
        """An index drawn with the given probabilities (no draw when there is one choice)."""
        if len(probs) == 1:
            return 0
        return min(int(np.searchsorted(np.cumsum(probs), self.rng.random(), side="right")), len(probs) - 1)


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
    Uses one draw of ``generator`` to seed the Beta sampler (see ``PlanSampler``).
    """
    check_alpha(alpha)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    if isinstance(alpha, Tensor) and alpha.ndim > 0:
        if not per_sample:
            raise ValueError("per-sample alpha values need per_sample=True")
        if alpha.shape != (batch_size,):
            raise ValueError(f"alpha has shape {tuple(alpha.shape)}; expected [{batch_size}]")
        alpha = alpha.detach().to("cpu", torch.float64).numpy()
    elif isinstance(alpha, Tensor):
        alpha = float(alpha)
    return torch.from_numpy(PlanSampler(generator).lam(alpha, batch_size, per_sample).astype(np.float32))


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
    lam = plan.lam.to(device=h.device, dtype=h.dtype).view((-1,) + (1,) * (h.ndim - 1))
    # lerp(a, b, w) = a + w (b - a), one fused kernel; exact at w = 1 (gives b) and w = 0 (gives a)
    return torch.lerp(torch.index_select(h, 0, plan.perm.to(h.device)), h, lam)


def _check_labels(y: Tensor, num_classes: int) -> None:
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2; got {num_classes}")
    if y.dtype.is_floating_point:
        if y.ndim != 2 or y.shape[1] != num_classes:
            raise ValueError(f"soft targets must have shape [B, {num_classes}]; got {tuple(y.shape)}")
        return
    if y.ndim != 1:
        raise ValueError(f"class-index targets must have shape [B]; got {tuple(y.shape)}")
    check_label_range(y, num_classes)


def check_label_range(y: Tensor, num_classes: int) -> None:
    """Raise ValueError naming the first label of y [B] outside [0, num_classes)."""
    if not y.numel():
        return
    lo, hi = torch.aminmax(y)
    if int(lo) < 0 or int(hi) >= num_classes:
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
    rows = y.float() if y.dtype.is_floating_point else F.one_hot(y.long(), num_classes).float()
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
    return F.cross_entropy(logits.float(), targets.float())


def mixed_cross_entropy(logits: Tensor, y: Tensor, plan: MixPlan, label_smoothing: float = 0.0) -> Tensor:
    """The two-term loss ``lam*CE(out, y) + (1-lam)*CE(out, y[perm])`` per row, averaged.

    logits [B, K]; y LongTensor [B] of class indices. Equal to ``soft_cross_entropy`` against
    ``mix_targets(y, plan, K, label_smoothing)``.
    """
    _check_labels(y, logits.shape[-1])
    y = y.long()
    lam = plan.lam.to(logits.device, torch.float32)
    ce = lambda t: F.cross_entropy(logits.float(), t, reduction="none", label_smoothing=label_smoothing)  # noqa: E731
    return (lam * ce(y) + (1 - lam) * ce(y[plan.perm.to(y.device)])).mean()
