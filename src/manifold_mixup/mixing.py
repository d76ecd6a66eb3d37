"""Mixing primitives: the mixing plan, how plans are drawn, mixing of tensors and targets, the loss.

A *mixing plan* for a batch of size B is a permutation ``perm`` (LongTensor [B]) and a
per-row coefficient ``lam`` (Tensor [B], in [0, 1]). Row i of a mixed tensor is
``lam[i] * h[i] + (1 - lam[i]) * h[perm[i]]``; targets mix the same way as one-hot or soft
rows, and the loss ``lam*CE(out, y) + (1-lam)*CE(out, y[perm])`` per row, averaged, equals
cross-entropy against the mixed soft target.

lambda is drawn from Beta(alpha, alpha); alpha = 0 means no mixing (lambda = 1 exactly).
torch has no seeded Beta sampler, so every plan comes from one numpy PCG64 stream seeded once
from the caller's ``torch.Generator`` (one draw) or int seed: ``PlanStream``. The mixer and
``draw_plan`` both draw through it; the vectorised trainer has its own per-epoch draw
(``ensemble.epoch_plan``), fixed by the depth study's published numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .checks import ALPHA_MAX, SEED_MAX, check_int, check_real, check_seed

__all__ = [
    "MixPlan",
    "PlanStream",
    "check_alpha",
    "sample_lambda",
    "draw_plan",
    "mix",
    "check_class_targets",
    "target_rows",
    "soft_targets",
    "mix_targets",
    "soft_cross_entropy",
    "mixed_cross_entropy",
]



@dataclass(frozen=True)
class MixPlan:
    """How one batch is mixed: row i becomes ``lam[i] * h[i] + (1 - lam[i]) * h[perm[i]]``.

    Attributes:
        perm: LongTensor [B], a permutation of 0..B-1.
        lam: float Tensor [B], each in [0, 1]; per-batch mode repeats one value.
    """

    perm: Tensor
    lam: Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.perm, Tensor) or not isinstance(self.lam, Tensor):
            raise TypeError(f"MixPlan needs tensors perm and lam; got {type(self.perm).__name__} and {type(self.lam).__name__}")
        if self.perm.ndim != 1 or self.lam.ndim != 1 or self.perm.shape != self.lam.shape:
            raise ValueError(
                f"MixPlan needs perm and lam of the same shape [B]; got perm {tuple(self.perm.shape)} "
                f"and lam {tuple(self.lam.shape)}"
            )

    @property
    def batch_size(self) -> int:
        return int(self.perm.shape[0])

    def to(self, device: torch.device | str) -> "MixPlan":
        return MixPlan(self.perm.to(device), self.lam.to(device))

    def validate(self) -> "MixPlan":
        """Raise ValueError unless perm is a permutation of 0..B-1 and every lam is finite in [0, 1]
        (for plans that come from outside the library, e.g. a replayed run); returns the plan."""
        perm, lam = self.perm.detach(), self.lam.detach()
        if perm.dtype.is_floating_point or perm.dtype.is_complex or perm.dtype == torch.bool:
            raise ValueError(f"MixPlan.perm must be an integer tensor; got {perm.dtype}")
        b = perm.shape[0]
        if not torch.equal(torch.sort(perm.long().cpu()).values, torch.arange(b)):
            raise ValueError(f"MixPlan.perm must be a permutation of 0..{b - 1}; got {perm.tolist()}")
        if not lam.dtype.is_floating_point:
            raise ValueError(f"MixPlan.lam must be a float tensor; got {lam.dtype}")
        bad = ~((lam >= 0) & (lam <= 1))  # NaN fails both
        if bad.any():
            raise ValueError(f"MixPlan.lam must be finite and in [0, 1]; got {lam[bad][0].item()}")
        return self


def check_alpha(alpha: float | Tensor | np.ndarray, name: str = "alpha") -> None:
    """Raise unless alpha (a number, or per-sample values) is finite, >= 0 and <= ``ALPHA_MAX``."""
    if isinstance(alpha, (Tensor, np.ndarray)):
        a = alpha.detach().cpu().double().numpy() if isinstance(alpha, Tensor) else np.asarray(alpha, np.float64)
        bad = ~((a >= 0) & (a <= ALPHA_MAX))
        if bad.any():
            raise ValueError(f"{name} must be finite, >= 0 and <= {ALPHA_MAX:g} (0 means no mixing); got {a[bad][0]}")
        return
    if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number >= 0 or an alpha policy; got {type(alpha).__name__}")
    if not math.isfinite(alpha) or alpha < 0 or alpha > ALPHA_MAX:
        raise ValueError(f"{name} must be finite, >= 0 and <= {ALPHA_MAX:g} (0 means no mixing; Beta(alpha, alpha) "
                         f"is 1/2 to within 1e-6 at the limit); got {alpha}")


def _seed_of(generator: torch.Generator | int | None, name: str = "generator") -> int:
    """An int seed: the int itself, or one draw from a CPU torch.Generator (None: torch's default one)."""
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, (bool, np.bool_)):
        return check_seed(name, generator)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be a torch.Generator, an int seed in [0, {SEED_MAX}] or None; got {type(generator).__name__}")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"{name} must be a CPU torch.Generator (plans are drawn on the CPU); got one on {generator.device}")
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())


class PlanStream:
    """The one source of the mixer's random choices: a numpy PCG64 stream seeded once.

    seed: a torch.Generator (one draw from it), an int, or None. ``key`` (e.g. a DDP rank) gives
    a separate stream for each value: ``default_rng([seed, *key])``. Each call of ``plan`` draws,
    in this order, a permutation then the lambdas; ``choice`` draws one uniform. The same seed and
    the same sequence of calls give the same plans. Picklable, and its ``state`` round-trips.
    """

    def __init__(self, seed: torch.Generator | int | None = None, key: tuple[int, ...] = ()) -> None:
        s = _seed_of(seed)
        self.rng = np.random.default_rng([s, *key] if key else s)

    @property
    def state(self) -> dict:
        return self.rng.bit_generator.state

    @state.setter
    def state(self, value: dict) -> None:
        self.rng.bit_generator.state = value

    def choice(self, cum_weights: list[float]) -> int:
        """An index drawn with the probabilities whose running sums are given (no draw for one)."""
        if len(cum_weights) == 1:
            return 0
        u = self.rng.random()
        return min(int(np.searchsorted(cum_weights, u, side="right")), len(cum_weights) - 1)

    def lam(self, alpha: float | np.ndarray, batch_size: int, per_sample: bool = True) -> np.ndarray:
        """float64 [batch_size] lambdas ~ Beta(alpha, alpha) (alpha checked already: a number, or a
        float64 array [batch_size] per row); lambda = 1 exactly where alpha = 0."""
        if isinstance(alpha, np.ndarray):
            lam = np.ones(batch_size)
            on = alpha > 0
            if on.any():
                lam[on] = self.rng.beta(alpha[on], alpha[on])
            return lam
        alpha = float(alpha)
        if alpha == 0:
            return np.ones(batch_size)
        if not per_sample:
            return np.full(batch_size, self.rng.beta(alpha, alpha))
        return self.rng.beta(alpha, alpha, size=batch_size)

    def plan(self, batch_size: int, alpha: float | np.ndarray, per_sample: bool = True) -> MixPlan:
        """A permutation of 0..B-1 and lambdas ~ Beta(alpha, alpha) (float32), as CPU tensors."""
        perm = self.rng.permutation(batch_size)
        lam = self.lam(alpha, batch_size, per_sample).astype(np.float32)
        return MixPlan(torch.from_numpy(perm), torch.from_numpy(lam))


def _alpha_array(alpha: float | Tensor, batch_size: int, per_sample: bool) -> float | np.ndarray:
    check_alpha(alpha)
    check_int("batch_size", batch_size, 1)
    if isinstance(alpha, Tensor) and alpha.ndim > 0:
        if not per_sample:
            raise ValueError("per-sample alpha values need per_sample=True")
        if alpha.shape != (batch_size,):
            raise ValueError(f"alpha has shape {tuple(alpha.shape)}; expected [{batch_size}]")
        return alpha.detach().to("cpu", torch.float64).numpy()
    return float(alpha)


def sample_lambda(alpha: float | Tensor, batch_size: int, *, per_sample: bool = True,
                  generator: torch.Generator | int | None = None) -> Tensor:
    """lambda ~ Beta(alpha, alpha) for a batch: float32 Tensor [batch_size] on the CPU.

    alpha: a number, or a Tensor [batch_size] of per-sample values (per_sample must be True).
    Rows whose alpha is 0 get lambda = 1 exactly. per_sample=False draws one value for the batch.
    One draw of ``generator`` seeds a ``PlanStream``.
    """
    a = _alpha_array(alpha, batch_size, per_sample)
    return torch.from_numpy(PlanStream(generator).lam(a, batch_size, per_sample).astype(np.float32))


def draw_plan(batch_size: int, alpha: float | Tensor, *, per_sample: bool = True,
              generator: torch.Generator | int | None = None) -> MixPlan:
    """One mixing plan (CPU tensors), drawn as the mixer draws: a ``PlanStream`` seeded by one draw of
    ``generator``, then a permutation and lambdas ~ Beta(alpha, alpha)."""
    a = _alpha_array(alpha, batch_size, per_sample)
    return PlanStream(generator).plan(batch_size, a, per_sample)


def mix(h: Tensor, plan: MixPlan) -> Tensor:
    """Mix a batch-first tensor h [B, ...]: ``lam*h + (1-lam)*h[perm]``, in h's dtype and device.
    A row whose lambda is exactly 1 is exactly h's row: its partner is not read (a NaN or inf
    there stays there)."""
    if h.ndim == 0 or h.shape[0] != plan.perm.shape[0]:
        raise ValueError(
            f"cannot mix a tensor of shape {tuple(h.shape)} with a plan for a batch of {plan.batch_size}: "
            "the mixed tensor must be batch-first"
        )
    low = h.dtype in (torch.float16, torch.bfloat16)  # mixed in float32: lambda keeps its precision
    hh = h.float() if low else h
    lam = plan.lam.to(device=h.device, dtype=hh.dtype).view((-1,) + (1,) * (h.ndim - 1))
    # lerp(a, b, w) = a + w (b - a): one fused kernel, exact at w = 1 (gives b) and w = 0 (gives a)
    # for finite rows; where lam = 1 the row is taken as it is, so a non-finite partner stays out
    out = torch.where(lam == 1, hh, torch.lerp(hh[plan.perm.to(h.device)], hh, lam))
    return out.to(h.dtype) if low else out


def check_label_range(y: Tensor, num_classes: int) -> None:
    """Raise ValueError naming the first label of y [B] outside [0, num_classes)."""
    if not y.numel():
        return
    lo, hi = torch.aminmax(y)
    if int(lo) < 0 or int(hi) >= num_classes:
        bad = y[(y < 0) | (y >= num_classes)][0].item()
        raise ValueError(f"labels must lie in [0, {num_classes}); got {bad}")


def check_soft_rows(y: Tensor, num_classes: int | None = None, tol: float | None = None, *, values: bool = True) -> None:
    """Raise ValueError unless y [B, K] holds finite, non-negative rows that sum to 1 (within tol;
    by default 1e-3, or K times 4 ulps of y's dtype where that is larger, as for bfloat16).
    ``values=False`` checks the shape only (no read of the tensor's values)."""
    if y.ndim != 2 or (num_classes is not None and y.shape[1] != num_classes):
        want = f"[B, {num_classes}]" if num_classes is not None else "[B, K]"
        raise ValueError(f"soft targets must have shape {want}; got {tuple(y.shape)}")
    if not values:
        return
    bad = ~(y >= 0) | ~torch.isfinite(y)
    if bad.any():
        raise ValueError(f"soft targets must be finite and >= 0; got {y[bad][0].item()}")
    if tol is None:
        tol = max(1e-3, 4 * y.shape[1] * torch.finfo(y.dtype).eps)
    s = y.double().sum(1)
    off = (s - 1).abs() > tol
    if off.any():
        i = int(off.nonzero()[0])
        raise ValueError(f"soft target rows must sum to 1 (within {tol}); row {i} sums to {s[i].item():.6g}")


def check_class_targets(y: Tensor, num_classes: int | None, *, values: bool = True) -> None:
    """Raise ValueError unless y is soft rows [B, K] (``check_soft_rows``) or class indices [B] in
    [0, num_classes); with num_classes None, the shapes and rows only (K is not known yet).
    ``values=False`` checks shapes only (no read of the tensor's values: no device sync)."""
    if num_classes is not None:
        check_int("num_classes", num_classes, 2)
    if y.dtype.is_floating_point:
        check_soft_rows(y, num_classes, values=values)
        return
    if y.ndim != 1:
        raise ValueError(f"class-index targets must have shape [B]; got {tuple(y.shape)}")
    if num_classes is not None and values:
        check_label_range(y, num_classes)


def target_rows(y: Tensor, num_classes: int, label_smoothing: float = 0.0) -> Tensor:
    """Float rows [B, K] of checked targets: soft rows as they are, class indices one-hot; then
    ``(1 - eps) * row + eps / K`` for label smoothing eps."""
    rows = y.float() if y.dtype.is_floating_point else F.one_hot(y.long(), num_classes).float()
    if label_smoothing:
        rows = rows * (1 - label_smoothing) + label_smoothing / num_classes
    return rows


def soft_targets(y: Tensor, num_classes: int, label_smoothing: float = 0.0) -> Tensor:
    """Targets as float rows [B, K] summing to 1 (class indices become one-hot, then smoothed).

    y: LongTensor [B] of class indices in [0, K), or float [B, K] soft rows (returned smoothed).
    label_smoothing: eps in [0, 1); the row becomes (1 - eps) * row + eps / K.
    """
    check_real("label_smoothing", label_smoothing, 0, 1, high_open=True)
    check_class_targets(y, num_classes)
    return target_rows(y, num_classes, label_smoothing)


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
    check_class_targets(y, logits.shape[-1])
    y = y.long()
    lam = plan.lam.to(logits.device, torch.float32)
    ce = lambda t: F.cross_entropy(logits.float(), t, reduction="none", label_smoothing=label_smoothing)  # noqa: E731
    return (lam * ce(y) + (1 - lam) * ce(y[plan.perm.to(y.device)])).mean()
