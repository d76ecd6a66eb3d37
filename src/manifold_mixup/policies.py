"""Mixing-strength policies: where a number alpha is accepted, a policy may stand instead.

A policy answers "which alpha for these rows, now?" through one interface, which the mixer uses
for every policy alike (it knows no policy type):

- ``needs``: what the policy wants handed to ``alpha`` for the coming batch: a subset of
  ``{"confidence", "index"}`` (the model's max-softmax confidence at each clean row, computed by
  the mixer; the batch's sample indices, passed to the mixer as ``index=``).
- ``alpha(epoch, batch_size, *, confidence=None, index=None, num_classes=None)``: a number, or
  per-row values [B] (numpy or torch), each >= 0.
- ``beta_parameter(alpha)``: the Beta parameter actually drawn from (half ConfMix halves it).
- ``observe(index, logits, labels)``: after the forward, the batch's sample indices (or None),
  detached training logits and labels as given, for policies that keep statistics per sample.
- ``check(num_classes=..., per_sample=..., task=...)``: called when a mixer is made, to refuse
  settings the policy cannot work with before any training.

The training loop calls ``mixer.set_epoch(t)`` (t in epochs, fractional allowed:
``epoch + i / steps``) before each batch. Each policy records, per whole epoch, the mean alpha it
gave and the mean lambda drawn (``history()``), so a study can plot alpha over training.

Policies (DESIGN.md):
- ``Constant(alpha)``.
- ``RampUp(half_life=25)``: alpha(t) = 1 - 2**(-t/h)  (0 -> 1).
- ``RampDown(half_life=25)``: alpha(t) = 2**(-t/h)   (1 -> 0).
- ``ConfMix(warmup_epochs=5, half=False, confidence="fresh")``: per sample
  alpha_i = K/(K-1) * (max softmax of the model at x_i - 1/K), clipped to [0, 1];
  lambda_i ~ Beta(alpha_i, alpha_i), or Beta(alpha_i/2, alpha_i/2) for half ConfMix
  (``HalfConfMix``); plain ERM (alpha = 0, lambda = 1) for the first ``warmup_epochs`` epochs.
  x_i is the row that keeps weight lambda_i.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .checks import CONFIDENCES, SCHEDULES, check_choice, check_int, check_real
from .mixing import check_alpha

__all__ = ["AlphaPolicy", "Constant", "RampUp", "RampDown", "ConfMix", "HalfConfMix", "as_policy", "confmix_alpha", "schedule"]

NEEDS = frozenset({"confidence", "index"})


class AlphaPolicy:
    """Base class: subclasses implement ``alpha_at(epoch)``, or ``alpha`` (and ``needs``,
    ``observe``) for adaptive policies. The state of a policy is its instance attributes:
    ``state_dict`` copies them, so keep them picklable."""

    needs: frozenset[str] = frozenset()

    def __init__(self) -> None:
        self.epoch = 0.0
        self._sums: dict[int, list[float]] = {}  # epoch -> [sum alpha, sum lambda, sum partner weight, rows]

    def set_epoch(self, epoch: float) -> None:
        """Tell the policy where training stands, in epochs (fractional allowed)."""
        if isinstance(epoch, Tensor) and epoch.numel() == 1:
            epoch = epoch.item()
        self.epoch = check_real("epoch", epoch, 0)

    def alpha_at(self, epoch: float) -> float:
        raise NotImplementedError(f"{type(self).__name__} must implement alpha_at(epoch) or alpha(...)")

    def alpha(self, epoch: float, batch_size: int, *, confidence: Tensor | None = None,
              index: Tensor | None = None, num_classes: int | None = None) -> float | np.ndarray | Tensor:
        """alpha for the next batch: a number, or per-row values [batch_size]."""
        return self.alpha_at(epoch)

    def beta_parameter(self, alpha: float | np.ndarray) -> float | np.ndarray:
        """The Beta parameter lambda is drawn from, given the batch's alpha."""
        return alpha

    def observe(self, index: Tensor | None, logits: Tensor, labels: Tensor) -> None:
        """Called after each mixed forward with the detached logits; does nothing by default."""

    def check(self, *, num_classes: int | None, per_sample: bool, task: str) -> None:
        """Raise ValueError if a mixer with these settings cannot use this policy (none by default)."""

    # -- records ----------------------------------------------------------------------------
    def record(self, alpha: float | np.ndarray, lam: np.ndarray) -> None:
        """Add one batch to the per-epoch statistics (alpha as given to the rows, lambda drawn)."""
        lam = np.asarray(lam, np.float64)
        s = self._sums.setdefault(int(self.epoch), [0.0, 0.0, 0.0, 0])
        s[0] += float(np.mean(alpha)) * lam.size
        s[1] += float(lam.sum())
        s[2] += float(np.minimum(lam, 1 - lam).sum())
        s[3] += lam.size

    def history(self) -> list[dict]:
        """Per epoch: mean alpha, mean lambda, mean partner weight min(lambda, 1 - lambda)
        (0 = no mixing, 1/2 = even mixes; the mean of lambda itself is 1/2 whenever alpha > 0)
        and the number of rows seen."""
        return [
            {"epoch": e, "mean_alpha": s[0] / s[3], "mean_lambda": s[1] / s[3], "mean_partner_weight": s[2] / s[3],
             "rows": s[3]}
            for e, s in sorted(self._sums.items())
        ]

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """A copy of the policy's state (its instance attributes, settings included), for checkpoints."""
        return {"policy": type(self).__qualname__, **copy.deepcopy(vars(self))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()`` of a policy of the same type (its settings come with it)."""
        name = type(self).__qualname__
        if state.get("policy") != name:
            raise ValueError(f"{name}.load_state_dict: the state is of a {state.get('policy')!r} policy")
        keys = set(state) - {"policy"}
        if keys != set(vars(self)):
            raise ValueError(f"{name}.load_state_dict: the state's keys {sorted(keys)} differ from the policy's "
                             f"{sorted(vars(self))}")
        vars(self).update(copy.deepcopy({k: v for k, v in state.items() if k != "policy"}))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k != "epoch")
        return f"{type(self).__name__}({args})"


class Constant(AlphaPolicy):
    """The same alpha throughout."""

    def __init__(self, alpha: float) -> None:
        super().__init__()
        check_alpha(alpha)
        self.value = float(alpha)

    def alpha_at(self, epoch: float) -> float:
        return self.value


class RampUp(AlphaPolicy):
    """alpha(t) = 1 - 2**(-t / half_life): 0 at the start, 1/2 after one half-life, -> 1."""

    def __init__(self, half_life: float = 25.0) -> None:
        super().__init__()
        self.half_life = check_real("half_life", half_life, 0, low_open=True)

    def alpha_at(self, epoch: float) -> float:
        return 1.0 - 2.0 ** (-epoch / self.half_life)


class RampDown(AlphaPolicy):
    """alpha(t) = 2**(-t / half_life): 1 at the start, 1/2 after one half-life, -> 0."""

    def __init__(self, half_life: float = 25.0) -> None:
        super().__init__()
        self.half_life = check_real("half_life", half_life, 0, low_open=True)

    def alpha_at(self, epoch: float) -> float:
        return 2.0 ** (-epoch / self.half_life)


def confmix_alpha(confidence: Tensor, num_classes: int, *, check: bool = True) -> Tensor:
    """ConfMix's alpha_i = K/(K-1) * (confidence_i - 1/K), clipped to [0, 1].

    confidence: Tensor [B], the max softmax probability at x_i, each in [0, 1].
    A uniform prediction (1/K) gives 0, a one-hot prediction gives 1.
    check: refuse confidences outside [0, 1] or NaN (``False`` for softmax outputs).
    """
    check_int("num_classes", num_classes, 2)
    if check:
        outside = ~((confidence >= 0) & (confidence <= 1))  # NaN fails both comparisons
        if outside.any():
            raise ValueError(f"confidences must lie in [0, 1]; got {confidence[outside][0].item()}")
    k = num_classes
    return (k / (k - 1) * (confidence - 1.0 / k)).clamp(0.0, 1.0)


class ConfMix(AlphaPolicy):
    """Per-sample alpha from the model's own confidence, after ``warmup_epochs`` of plain ERM.

    confidence: where the confidence at x_i comes from.
      - ``"fresh"`` (default): the current model's max softmax at the clean batch, no-grad and in
        eval mode (BatchNorm uses its running statistics and is not updated, dropout is off).
        The mixer computes it: by an extra forward pass, or, where the model is a plain chain up
        to the mixing point, from the clean hidden state (``manifold_mixup.confidence``).
      - ``"cached"``: the max softmax of row i's training output in the previous epoch, kept per
        sample index (the loop passes ``index=``; the mixer needs ``num_classes=K``). Exact for
        rows trained unmixed (the warm-up epochs, rows with alpha_i = 0); for mixed rows it is
        the confidence at the mixed point that row i dominates. Costs nothing extra. A sample
        never seen gets alpha 0.
    half: draw lambda_i ~ Beta(alpha_i/2, alpha_i/2) (half ConfMix). ``history()`` records
      alpha_i itself, before halving.

    Device synchronisation: ConfMix is the one exemption from the mixer's rule that a mixed step
    makes no device-to-host synchronisation after its first calls. The per-row alphas are set on
    the host, where the plan is drawn, so after the warm-up each call reads the batch's
    confidences back; cached ConfMix also reads the range of ``index`` (to grow its cache), on
    every call, warm-up included.
    """

    def __init__(self, warmup_epochs: float = 5, half: bool = False, confidence: str = "fresh") -> None:
        super().__init__()
        self.warmup_epochs = check_real("warmup_epochs", warmup_epochs, 0)
        check_choice("confidence", confidence, CONFIDENCES)
        self.half = bool(half)
        self.confidence = confidence
        self._cache: Tensor | None = None  # float32 [n_samples] max softmax, NaN where unseen

    @property
    def in_warmup(self) -> bool:
        return self.epoch < self.warmup_epochs

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        if self.confidence == "cached":
            return frozenset({"index"})  # read during the warm-up too: observe fills the cache
        return frozenset() if self.in_warmup else frozenset({"confidence"})

    def alpha(self, epoch: float, batch_size: int, *, confidence: Tensor | None = None,
              index: Tensor | None = None, num_classes: int | None = None) -> float | np.ndarray:
        if epoch < self.warmup_epochs:
            return 0.0
        if self.confidence == "cached":
            if num_classes is None:
                raise ValueError("ConfMix(confidence='cached') needs num_classes=K on the mixer")
            confidence = self.cached_confidence(index, num_classes)
        elif confidence is None:
            raise ValueError("ConfMix(confidence='fresh') needs the batch's confidences")
        alpha = confmix_alpha(confidence.detach().float().cpu(), num_classes, check=False)
        if alpha.isnan().any():  # softmax of non-finite logits
            raise ValueError("the model's confidences are NaN (non-finite logits?); ConfMix cannot set alpha from them")
        return alpha.double().numpy()

    def beta_parameter(self, alpha: float | np.ndarray) -> float | np.ndarray:
        return alpha / 2 if self.half else alpha

    def check(self, *, num_classes: int | None, per_sample: bool, task: str) -> None:
        if task != "classification":
            raise ValueError(f"ConfMix sets alpha from the model's confidence in one class: it needs "
                             f"task='classification'; got {task!r}")
        if not per_sample:
            raise ValueError("ConfMix sets alpha per sample: it needs per_sample=True")
        if self.confidence == "cached" and num_classes is None:
            # (otherwise the first call after the warm-up would fail, epochs into training)
            raise ValueError("ConfMix(confidence='cached') needs num_classes=K on the mixer (unseen samples get "
                             "confidence 1/K)")

    # -- cached confidences -------------------------------------------------------------
    def _grow(self, index: Tensor, device: torch.device) -> Tensor:
        """The cache, on ``device``, grown (with NaN, "unseen") to cover every index >= 0."""
        need = 0
        if index.numel():
            lo, hi = torch.aminmax(index)
            if int(lo) < 0:
                raise ValueError(f"sample indices must be >= 0; got {int(lo)}")
            need = int(hi) + 1
        cache = self._cache
        if cache is None or cache.shape[0] < need or cache.device != device:
            size = max(need, 1 if cache is None else cache.shape[0])
            grown = torch.full((size,), float("nan"), dtype=torch.float32, device=device)
            if cache is not None:
                grown[: cache.shape[0]] = cache.to(device)
            cache = self._cache = grown
        return cache

    def cached_confidence(self, index: Tensor, num_classes: int) -> Tensor:
        """Confidences [B] for sample indices; unseen samples get 1/K (so alpha 0)."""
        index = index.detach()
        cache = self._grow(index, index.device if self._cache is None else self._cache.device)
        got = cache[index.to(cache.device, torch.long)]
        return torch.nan_to_num(got, nan=1.0 / num_classes)

    def observe(self, index: Tensor | None, logits: Tensor, labels: Tensor) -> None:
        """Cached ConfMix: store the max softmax of the training output rows under their sample
        indices (an index repeated within one batch keeps one of its rows' values)."""
        if self.confidence != "cached" or index is None:
            return
        conf = torch.softmax(logits.detach().float(), -1).amax(-1)
        cache = self._grow(index.detach(), conf.device)
        cache.index_copy_(0, index.to(cache.device, torch.long), conf)


class HalfConfMix(ConfMix):
    """ConfMix with lambda_i ~ Beta(alpha_i/2, alpha_i/2)."""

    def __init__(self, warmup_epochs: float = 5, confidence: str = "fresh") -> None:
        super().__init__(warmup_epochs=warmup_epochs, half=True, confidence=confidence)


def as_policy(alpha: float | AlphaPolicy) -> AlphaPolicy:
    """A number becomes ``Constant(alpha)``; a policy is returned as it is."""
    if isinstance(alpha, AlphaPolicy):
        return alpha
    return Constant(alpha)


def schedule(name: str, *, alpha: float = 0.5, half_life: float = 25.0) -> AlphaPolicy:
    """The alpha schedule ``name`` (one of ``checks.SCHEDULES``): ``"constant"`` is
    ``Constant(alpha)``, ``"ramp-up"`` / ``"ramp-down"`` are ``RampUp(half_life)`` /
    ``RampDown(half_life)`` (which do not use ``alpha``). These depend on the epoch only, so the
    reference trainer and the paper's vectorised trainer can both follow them."""
    check_choice("schedule", name, SCHEDULES)
    if name == "constant":
        return Constant(alpha)
    return (RampUp if name == "ramp-up" else RampDown)(half_life)
