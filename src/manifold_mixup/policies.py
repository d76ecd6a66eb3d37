"""Mixing-strength policies: where a number alpha is accepted, a policy may stand instead.

A policy answers "which alpha for these rows, now?". It learns the training clock in one way:
the training loop calls ``set_epoch(t)`` (t in epochs, fractional allowed: ``epoch + i / steps``)
before each batch; ``ManifoldMixup.set_epoch`` forwards it. Each policy records, per whole epoch,
the mean alpha it gave and the mean lambda drawn (``history()``), so a study can plot alpha over
training.

Policies (DESIGN.md):
- ``Constant(alpha)``.
- ``RampUp(half_life=25)``: alpha(t) = 1 - 2**(-t/h)  (0 -> 1).
- ``RampDown(half_life=25)``: alpha(t) = 2**(-t/h)   (1 -> 0).
- ``ConfMix(warmup_epochs=5, half=False, confidence="fresh")``: per sample
  alpha_i = K/(K-1) * (max softmax of the model at x_i - 1/K), clipped to [0, 1];
  lambda_i ~ Beta(alpha_i, alpha_i), or Beta(alpha_i/2, alpha_i/2) for half ConfMix
  (``HalfConfMix``); plain ERM (alpha = 0, lambda = 1) for the first ``warmup_epochs`` epochs.
  x_i is the row that keeps weight lambda_i.

Complete example loop (``mixer`` a ``ManifoldMixup``)::

    steps = len(loader)
    for epoch in range(epochs):
        for i, (x, y, idx) in enumerate(loader):
            mixer.set_epoch(epoch + i / steps)
            logits, targets = mixer(x, y, index=idx)   # index only for ConfMix(confidence="cached")
            loss = mm.soft_cross_entropy(logits, targets)
            opt.zero_grad(); loss.backward(); opt.step()
    mixer.policy.history()   # [{'epoch': 0, 'mean_alpha': ..., 'mean_lambda': ..., 'mean_partner_weight': ...}, ...]
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .mixing import check_alpha

__all__ = ["AlphaPolicy", "Constant", "RampUp", "RampDown", "ConfMix", "HalfConfMix", "as_policy", "confmix_alpha"]


class AlphaPolicy:
    """Base class. Subclasses implement ``alpha_at`` (or override ``alpha``)."""

    needs_confidence = False

    def __init__(self) -> None:
        self.epoch = 0.0
        self._sums: dict[int, list[float]] = {}
        self._pending: list[tuple[int, float | np.ndarray, np.ndarray]] = []  # summed in batches

    def set_epoch(self, epoch: float) -> None:
        """Tell the policy where training stands, in epochs (fractional allowed)."""
        if not math.isfinite(epoch) or epoch < 0:
            raise ValueError(f"epoch must be finite and >= 0; got {epoch}")
        self.epoch = float(epoch)

    def alpha_at(self, epoch: float) -> float:
        raise NotImplementedError

    def alpha(self, batch_size: int, confidence: Tensor | None = None) -> float | Tensor:
        """alpha for the next batch: a number, or a Tensor [batch_size] of per-sample values."""
        return self.alpha_at(self.epoch)

    def record(self, alpha: float | np.ndarray | Tensor, lam: np.ndarray | Tensor) -> None:
        """Add one batch to the per-epoch statistics (alpha as given to the rows, lambda drawn).
        Arrays are copied (the caller may reuse them) and summed a few hundred batches at a time."""
        lam = lam.detach().cpu().numpy() if isinstance(lam, Tensor) else lam
        alpha = alpha.detach().cpu().numpy() if isinstance(alpha, Tensor) else alpha
        self._keep(alpha.copy() if isinstance(alpha, np.ndarray) else alpha, np.array(lam, copy=True))

    def _keep(self, alpha: float | np.ndarray, lam: np.ndarray) -> None:
        """``record`` for arrays that nobody else writes to (the mixer's own): kept as they are,
        which keeps numpy out of most training steps."""
        self._pending.append((int(self.epoch), alpha, lam))
        if len(self._pending) >= 512:
            self._flush()

    def _flush(self) -> None:
        for epoch, alpha, lam in self._pending:
            lam = np.asarray(lam)
            n = lam.size
            a = float(np.mean(alpha)) if isinstance(alpha, np.ndarray) else float(alpha)
            s = self._sums.setdefault(epoch, [0.0, 0.0, 0.0, 0])
            s[0] += a * n
            s[1] += float(lam.sum(dtype=np.float64))
            s[2] += float(np.minimum(lam, 1 - lam).sum(dtype=np.float64))
            s[3] += n
        self._pending.clear()

    def history(self) -> list[dict]:
        """Per epoch: mean alpha, mean lambda, mean partner weight min(lambda, 1 - lambda)
        (0 = no mixing, 1/2 = even mixes; the mean of lambda itself is 1/2 whenever alpha > 0)
        and the number of rows seen."""
        self._flush()
        return [
            {"epoch": e, "mean_alpha": s[0] / s[3], "mean_lambda": s[1] / s[3], "mean_partner_weight": s[2] / s[3],
             "rows": s[3]}
            for e, s in sorted(self._sums.items())
        ]

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


def _check_half_life(half_life: float) -> float:
    if isinstance(half_life, bool) or not isinstance(half_life, (int, float)) or not math.isfinite(half_life) or half_life <= 0:
        raise ValueError(f"half_life must be a finite number of epochs > 0; got {half_life!r}")
    return float(half_life)


class RampUp(AlphaPolicy):
    """alpha(t) = 1 - 2**(-t / half_life): 0 at the start, 1/2 after one half-life, -> 1."""

    def __init__(self, half_life: float = 25.0) -> None:
        super().__init__()
        self.half_life = _check_half_life(half_life)

    def alpha_at(self, epoch: float) -> float:
        return 1.0 - 2.0 ** (-epoch / self.half_life)


class RampDown(AlphaPolicy):
    """alpha(t) = 2**(-t / half_life): 1 at the start, 1/2 after one half-life, -> 0."""

    def __init__(self, half_life: float = 25.0) -> None:
        super().__init__()
        self.half_life = _check_half_life(half_life)

    def alpha_at(self, epoch: float) -> float:
        return 2.0 ** (-epoch / self.half_life)


def confmix_alpha(confidence: Tensor, num_classes: int, *, check: bool = True) -> Tensor:
    """ConfMix's alpha_i = K/(K-1) * (confidence_i - 1/K), clipped to [0, 1].

    confidence: Tensor [B], the max softmax probability at x_i, each in [0, 1].
    A uniform prediction (1/K) gives 0, a one-hot prediction gives 1.
    check: refuse confidences outside [0, 1] or NaN (``False`` for softmax outputs).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"ConfMix needs num_classes K >= 2; got {num_classes!r}")
    if check:
        outside = ~((confidence >= 0) & (confidence <= 1))  # NaN fails both comparisons
        if outside.any():
            raise ValueError(f"confidences must lie in [0, 1]; got {confidence[outside][0].item()}")
    k = num_classes
    return (k / (k - 1) * (confidence - 1.0 / k)).clamp(0.0, 1.0)


class ConfMix(AlphaPolicy):
    """Per-sample alpha from the model's own confidence, after ``warmup_epochs`` of plain ERM.

    confidence: where the confidence at x_i comes from.
      - ``"fresh"`` (default): a no-grad forward of the current model on the clean batch, with the
        model switched to eval mode for that forward (BatchNorm uses its running statistics and
        is not updated, dropout is off), then switched back. Costs one extra forward pass, or,
        when the model is a plain ``nn.Sequential`` whose layers up to the mixing point do not
        depend on the mode, only a no-grad pass through the layers after it (``ManifoldMixup``
        then runs the layers before it once; the numbers are the same).
      - ``"cached"``: the max softmax of row i's training output in the previous epoch, kept per
        sample index (the loop passes ``index=``). Exact for rows trained unmixed (the warm-up
        epochs, rows with alpha_i = 0); for mixed rows it is the confidence at the mixed point
        that row i dominates. Costs nothing extra. A sample never seen gets alpha 0.
    half: draw lambda_i ~ Beta(alpha_i/2, alpha_i/2) (half ConfMix). ``history()`` records
      alpha_i itself, before halving.
    """

    needs_confidence = True

    def __init__(self, warmup_epochs: float = 5, half: bool = False, confidence: str = "fresh") -> None:
        super().__init__()
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, (int, float)) or not warmup_epochs >= 0:
            raise ValueError(f"warmup_epochs M must be a number >= 0; got {warmup_epochs!r}")
        if confidence not in ("fresh", "cached"):
            raise ValueError(f"confidence must be 'fresh' or 'cached'; got {confidence!r}")
        self.warmup_epochs = warmup_epochs
        self.half = bool(half)
        self.confidence = confidence
        self._cache: Tensor | None = None  # float32 [n_samples] max softmax, NaN where unseen

    @property
    def in_warmup(self) -> bool:
        return self.epoch < self.warmup_epochs

    def confmix_alpha(self, confidence: Tensor, num_classes: int, check: bool = True) -> Tensor:
        """alpha_i per row (before halving); zeros during warm-up. ``check=False`` skips the
        range check, for confidences the library computed itself (softmax outputs)."""
        if self.in_warmup:
            return torch.zeros(confidence.shape[0])
        confidence = confidence.detach().float()
        if check:
            return confmix_alpha(confidence.cpu(), num_classes)
        alpha = confmix_alpha(confidence, num_classes, check=False).cpu()
        if alpha.isnan().any():  # softmax of non-finite logits
            raise ValueError("the model's confidences are NaN (non-finite logits?); ConfMix cannot set alpha from them")
        return alpha

    def beta_parameter(self, alpha: Tensor) -> Tensor:
        """The Beta parameter actually used for lambda_i: alpha_i, or alpha_i/2 for half ConfMix."""
        return alpha / 2 if self.half else alpha

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

    def cached_alpha(self, index: Tensor, num_classes: int) -> np.ndarray:
        """alpha_i (before halving, float64 [B]) of the cached confidences at sample indices ``index``
        (a LongTensor [B]); the same numbers as ``confmix_alpha(cached_confidence(index, K), K)``,
        and the cache then covers ``index``; zeros during warm-up (the indices are not read then).
        A CPU cache is read in numpy: one array lookup and four array operations per step, where
        the torch path costs a dozen calls."""
        if self.in_warmup:
            return np.zeros(index.shape[0])
        cache = self._cache
        if (cache is None or not cache.is_cpu or not index.is_cpu or index.dtype != torch.long or index.ndim != 1
                or type(num_classes) is not int or num_classes < 2 or not index.shape[0]):
            return self._alpha_of(self.cached_confidence(index, num_classes), num_classes)
        idx = index.numpy()  # (sample indices carry no gradient)
        # a negative index reads as a huge unsigned one: one comparison checks both ends
        if int(idx.view(np.uint64).max()) >= cache.shape[0]:
            return self._alpha_of(self.cached_confidence(index, num_classes), num_classes)
        k = num_classes
        # float32 as in ``confmix_alpha`` (bit for bit); unseen samples (NaN) get alpha 0 (fmax)
        a = np.fmax((cache.numpy()[idx] - np.float32(1.0 / k)) * np.float32(k / (k - 1)), np.float32(0.0))
        return np.minimum(a, np.float32(1.0), out=a).astype(np.float64)

    @staticmethod
    def _alpha_of(confidence: Tensor, k: int) -> np.ndarray:
        return confmix_alpha(confidence, k, check=False).to("cpu", torch.float64).numpy()

    def cached_confidence(self, index: Tensor, num_classes: int) -> Tensor:
        """Confidences [B] for sample indices; unseen samples get 1/K (so alpha 0)."""
        index = index.detach()
        cache = self._grow(index, index.device if self._cache is None else self._cache.device)
        got = torch.index_select(cache, 0, index.to(cache.device, torch.long))
        return torch.nan_to_num(got, nan=1.0 / num_classes)

    def observe(self, index: Tensor, logits: Tensor, grown: bool = False) -> None:
        """Store max softmax of the training output rows under their sample indices (an index
        repeated within one batch keeps one of its rows' values: the last on the CPU, any on CUDA).
        grown: the cache already covers ``index`` on the logits' device (the mixer looked the
        same indices up before the forward), so the range check is not repeated."""
        logits = logits.detach()
        conf = torch.softmax(logits if logits.dtype == torch.float32 else logits.float(), -1).amax(-1)
        cache = self._cache
        if not (grown and cache is not None and cache.device == conf.device):
            cache = self._grow(index.detach(), conf.device)
        if index.dtype != torch.long or index.device != cache.device:
            index = index.to(cache.device, torch.long)
        cache.index_copy_(0, index, conf)


class HalfConfMix(ConfMix):
    """ConfMix with lambda_i ~ Beta(alpha_i/2, alpha_i/2)."""

    def __init__(self, warmup_epochs: float = 5, confidence: str = "fresh") -> None:
        super().__init__(warmup_epochs=warmup_epochs, half=True, confidence=confidence)


def as_policy(alpha: float | AlphaPolicy) -> AlphaPolicy:
    """A number becomes ``Constant(alpha)``; a policy is returned as it is."""
    if isinstance(alpha, AlphaPolicy):
        return alpha
    return Constant(alpha)
