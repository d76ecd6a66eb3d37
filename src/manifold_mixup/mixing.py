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

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

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


DENSE_MAX_BATCH = 64  # plans for batches up to this size carry a dense mixing matrix


def _exact_fp32_matmul() -> bool:
    """float32 matrix products are exact float32 (matmul precision "highest": no TF32 or bf16
    passes). Where only per-backend settings answer (newer torch raises), the answer is no."""
    try:
        return torch.get_float32_matmul_precision() == "highest"
    except RuntimeError:
        return False


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 takes no device type
        return torch.is_autocast_enabled() if device_type == "cuda" else torch.is_autocast_cpu_enabled()


@dataclass(frozen=True)
class MixPlan:
    """How one batch is mixed: row i becomes ``lam[i] * h[i] + (1 - lam[i]) * h[perm[i]]``.

    perm: LongTensor [B], a permutation of 0..B-1.
    lam:  float Tensor [B], each in [0, 1]; per-batch mode repeats one value.
    matrix: optional float32 Tensor [B, B], the same mix as a matrix (row i holds lam[i] at
      column i and 1 - lam[i] at column perm[i]). Plans drawn by the mixer carry it for small
      batches: one matrix product, forward and backward, costs less than the gather,
      interpolation and scatter it replaces (on the CPU in time, on a GPU in kernel launches).
      ``mix`` uses it for contiguous float32 tensors on the matrix's device outside autocast
      (and with float32 matmul precision "highest", so no TF32), and the gather + lerp form
      otherwise. The two forms agree to float32 rounding, except that a non-finite value in one
      row of h spreads to every row of the matrix form (0 * inf is NaN).
    """

    perm: Tensor
    lam: Tensor
    matrix: Tensor | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.perm.ndim != 1 or self.lam.ndim != 1 or self.perm.shape != self.lam.shape:
            raise ValueError(
                f"MixPlan needs perm and lam of the same shape [B]; got perm {tuple(self.perm.shape)} "
                f"and lam {tuple(self.lam.shape)}"
            )
        b = self.perm.shape[0]
        if self.matrix is not None and self.matrix.shape != (b, b):
            raise ValueError(f"MixPlan's matrix must have shape [{b}, {b}]; got {tuple(self.matrix.shape)}")

    @property
    def batch_size(self) -> int:
        return int(self.perm.shape[0])

    def to(self, device: torch.device | str) -> "MixPlan":
        device = torch.device(device)
        if self.perm.device == device and self.lam.device == self.perm.device:
            return self
        m = self.matrix
        nb = device.type == "cuda"  # a copy to the host must be complete before use
        return MixPlan(self.perm.to(device, non_blocking=nb), self.lam.to(device, non_blocking=nb),
                       None if m is None else m.to(device, non_blocking=nb))


def with_matrix(plan: MixPlan) -> MixPlan:
    """``plan`` with its dense matrix (on the plan's device), as the mixer's own plans have it, for
    a plan of at most ``DENSE_MAX_BATCH`` rows; otherwise the plan as it is. Replaying a recorded
    plan through it gives the same numbers as the original call."""
    if plan.matrix is not None or plan.batch_size > DENSE_MAX_BATCH:
        return plan
    perm = plan.perm.detach().cpu().numpy()[None]
    lam = plan.lam.detach().cpu().numpy()[None]
    m = torch.from_numpy(mixing_matrices(perm, lam)[0])
    return MixPlan(plan.perm, plan.lam, m.to(plan.perm.device))


def mixing_matrices(perm: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """float32 [n, B, B] matrices of plans given as perm int [n, B] and lam [n, B]: row i of plan s
    holds lam[s, i] at column i and 1 - lam[s, i] at column perm[s, i] (summed where they meet)."""
    n, b = perm.shape
    lam = np.asarray(lam, np.float32)
    m = np.zeros((n, b, b), np.float32)
    s, i = np.arange(n)[:, None], np.arange(b)
    m[s, i, i] = lam
    m[s, i, perm] += 1 - lam
    return m


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

    torch has no seeded Beta sampler, so lambda comes from numpy's PCG64, seeded once (from one
    draw of ``generator``, or from an int); the same seed gives the same sequence of plans.

    ``next_plan`` serves training steps from blocks drawn ahead: permutations come ``block`` at a
    time, and so do lambdas while alpha, the batch size and the mode stay the same from call to
    call (a changing alpha, as under a ramp, is drawn one batch at a time). A step then touches
    no numpy code at all, which on a busy CPU costs far more than the draws themselves. The
    sequence of plans depends only on the seed and on the sequence of calls.
    """

    def __init__(self, generator: torch.Generator | int | None = None, block: int = 64) -> None:
        if isinstance(generator, int):
            seed = generator
        else:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        if isinstance(block, bool) or not isinstance(block, int) or block < 1:
            raise ValueError(f"block must be an integer >= 1; got {block!r}")
        self.rng = np.random.default_rng(seed)
        self.block = block
        self._key: tuple | None = None  # (alpha, B, per_sample) of the last request
        self._block: list[tuple[MixPlan, np.ndarray]] = []  # plans drawn ahead, used in order
        self._pos = 0
        self._perms = np.zeros((0, 0), np.int64)  # permutations drawn ahead for single plans
        self._perm_t: Sequence[Tensor] = ()
        self._perm_pos = 0
        self._uniforms: list[float] = []  # for layer choices, drawn ahead, used from the end

    def lam(self, alpha: float | np.ndarray, batch_size: int, per_sample: bool = True) -> np.ndarray:
        """float64 [batch_size] lambdas; alpha a number or a float64 array [batch_size] (already checked)."""
        return self._lam_rows(alpha, 1, batch_size, per_sample)[0]

    def _lam_rows(self, alpha: float | np.ndarray, n: int, batch_size: int, per_sample: bool) -> np.ndarray:
        """float64 [n, batch_size] lambdas (an alpha array stands for one row)."""
        if isinstance(alpha, np.ndarray):
            return _beta_rows(self.rng, alpha)[None]
        alpha = float(alpha)
        if alpha == 0:
            return np.ones((n, batch_size))
        if not per_sample:
            return np.repeat(self.rng.beta(alpha, alpha, size=(n, 1)), batch_size, axis=1)
        # the same draws as Beta with an array of equal parameters, without building the array
        return self.rng.beta(alpha, alpha, size=(n, batch_size))

    def _plans(self, perms: np.ndarray, lams: np.ndarray, mixes: bool,
               device: torch.device | None = None) -> list[tuple[MixPlan, np.ndarray]]:
        """Plans from perm int64 [n, B] and lam float32 [n, B], with matrices for small batches,
        moved to ``device`` as whole blocks (one copy per block, not three per step)."""
        n, batch_size = perms.shape
        perm_t, lam_t = torch.from_numpy(perms), torch.from_numpy(lams)
        mats = torch.from_numpy(mixing_matrices(perms, lams)) if mixes and batch_size <= DENSE_MAX_BATCH else None
        if device is not None and device.type != "cpu":
            perm_t, lam_t = perm_t.to(device), lam_t.to(device)
            mats = None if mats is None else mats.to(device)
        mats = [None] * n if mats is None else mats.unbind(0)
        return [(MixPlan(p, l, m), lam) for p, l, m, lam in zip(perm_t.unbind(0), lam_t.unbind(0), mats, lams)]

    def _permutations(self, batch_size: int) -> np.ndarray:
        """``block`` permutations of 0..B-1 (int64 [block, B]), one numpy call."""
        return self.rng.permuted(np.broadcast_to(np.arange(batch_size), (self.block, batch_size)), axis=1)

    def _next_perm(self, batch_size: int) -> tuple[np.ndarray, Tensor]:
        """The next permutation (int64 [B], numpy and torch) from a block drawn ahead."""
        if self._perm_pos >= len(self._perm_t) or self._perms.shape[1] != batch_size:
            self._perms = self._permutations(batch_size)
            self._perm_t, self._perm_pos = torch.from_numpy(self._perms).unbind(0), 0
        i = self._perm_pos
        self._perm_pos += 1
        return self._perms[i], self._perm_t[i]

    def _single_plan(self, batch_size: int, alpha: float | np.ndarray, per_sample: bool) -> tuple[MixPlan, np.ndarray]:
        """One plan, lambdas drawn now (kept lean: it runs every step under ConfMix)."""
        perm, perm_t = self._next_perm(batch_size)
        if isinstance(alpha, np.ndarray):
            lam = (self.rng.beta(alpha, alpha) if alpha.min() > 0 else _beta_rows(self.rng, alpha)).astype(np.float32)
            mixes = True
        else:
            lam = self._lam_rows(alpha, 1, batch_size, per_sample)[0].astype(np.float32)
            mixes = alpha > 0
        m = None
        if mixes and batch_size <= DENSE_MAX_BATCH:
            m = torch.from_numpy(mixing_matrices(perm[None], lam[None])[0])
        return MixPlan(perm_t, torch.from_numpy(lam), m), lam

    def next_plan(self, batch_size: int, alpha: float | np.ndarray, per_sample: bool = True,
                  device: torch.device | None = None) -> tuple[MixPlan, np.ndarray]:
        """The next plan for a training step, and its lambdas as a numpy array.

        alpha: a checked number, or a float64 array [B] of per-sample values.
        While the request (alpha, B, per_sample) repeats, whole plans are drawn ``block`` at a
        time, and moved to ``device`` (if given) a block at a time; otherwise (per-sample alphas,
        an alpha that changes from call to call) lambdas are drawn per call and permutations come
        from a block of their own, and the plan is a CPU plan. The plans do not depend on
        ``device``: only where their tensors live.
        """
        if not isinstance(alpha, np.ndarray):
            key = (float(alpha), batch_size, bool(per_sample))
            if key == self._key:
                if self._pos >= len(self._block):
                    perms = self._permutations(batch_size)
                    lams = self._lam_rows(alpha, self.block, batch_size, per_sample).astype(np.float32)
                    self._block, self._pos = self._plans(perms, lams, alpha > 0, device), 0
                self._pos += 1
                return self._block[self._pos - 1]
            self._key, self._block, self._pos = key, [], 0  # a block once the request repeats
        return self._single_plan(batch_size, alpha, per_sample)

    def choice(self, probs: np.ndarray | Sequence[float], cumulative: bool = False) -> int:
        """An index drawn with the given probabilities (no draw when there is one choice).

        cumulative: ``probs`` already holds the running sums (callers drawing often pass them
        precomputed, as a list); the draw is the same either way.
        """
        if len(probs) == 1:
            return 0
        cum = probs if cumulative else np.cumsum(probs).tolist()
        return min(bisect.bisect_right(cum, self._uniform_block().pop()), len(probs) - 1)

    def _uniform_block(self) -> list[float]:
        """The uniforms left for layer choices, used from the end; a new block when none is left."""
        if not self._uniforms:
            self._uniforms = self.rng.random(self.block).tolist()[::-1]
        return self._uniforms

    def choices_ahead(self, cum: Sequence[float]) -> list[int]:
        """The choices that the next calls of ``choice(cum, cumulative=True)`` would make, up to
        the end of the current block of uniforms (drawing a block if none is left), in reverse
        order (pop from the end) and consumed: the same draws, made once per block."""
        last = len(cum) - 1
        out = [min(bisect.bisect_right(cum, u), last) for u in self._uniform_block()]
        self._uniforms = []
        return out


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


def _dense_allowed(device_type: str) -> bool:
    """The global conditions of ``mix``'s dense form: no autocast, exact float32 matmul (False for
    a device type that autocast does not know, such as "meta")."""
    try:
        return not _autocast_enabled(device_type) and _exact_fp32_matmul()
    except RuntimeError:
        return False


def mix(h: Tensor, plan: MixPlan) -> Tensor:
    """Mix a batch-first tensor h [B, ...]: ``lam*h + (1-lam)*h[perm]``, in h's dtype and device."""
    if h.ndim == 0 or h.shape[0] != plan.perm.shape[0]:
        raise ValueError(
            f"cannot mix a tensor of shape {tuple(h.shape)} with a plan for a batch of {plan.batch_size}: "
            "the mixed tensor must be batch-first"
        )
    m = plan.matrix
    if (m is not None and h.dtype == m.dtype and h.device == m.device and h.is_contiguous()
            and _dense_allowed(h.device.type)):
        return torch.mm(m, h) if h.ndim == 2 else torch.mm(m, h.view(h.shape[0], -1)).view(h.shape)
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
    f32 = torch.float32
    return F.cross_entropy(logits if logits.dtype == f32 else logits.float(), targets if targets.dtype == f32 else targets.float())


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
