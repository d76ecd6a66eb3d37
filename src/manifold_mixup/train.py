"""A reference trainer for any classifier, with data held in memory on the device.

``train_classifier`` runs the complete loop that ``policies`` documents: shuffled mini-batches
drawn from a ``torch.Generator``, the training clock passed to the alpha policy before each
batch, ``ManifoldMixup`` (or plain ERM when no layer is given), soft cross-entropy, and Adam or
SGD. No DataLoader: tensors are indexed directly, which costs nothing for in-memory data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .checks import OPTIMIZERS, SGD_MOMENTUM, check_choice, check_int, check_real
from .manifold import ManifoldMixup, eval_mode
from .mixing import soft_cross_entropy, soft_targets
from .policies import AlphaPolicy

#: momentum of the SGD optimiser of every trainer of the package (no dampening, no Nesterov)

__all__ = ["TrainResult", "train_classifier", "accuracy", "make_optimizer"]


@dataclass
class TrainResult:
    """Per-epoch records: ``epochs`` rows {epoch, loss, train_acc (under the mixed targets' argmax),
    test_acc (when test data is given)}; ``policy`` rows {epoch, mean_alpha, mean_lambda,
    mean_partner_weight, rows}."""

    epochs: list[dict] = field(default_factory=list)
    policy: list[dict] = field(default_factory=list)

    @property
    def final_test_acc(self) -> float | None:
        return self.epochs[-1].get("test_acc") if self.epochs else None


def make_optimizer(params, name: str, lr: float) -> torch.optim.Optimizer:
    """``torch.optim.Adam(lr)`` (the default of the studies) or ``torch.optim.SGD(lr, momentum=0.9)``
    (``SGD_MOMENTUM``; no dampening, no Nesterov): the same two optimisers as the vectorised trainer."""
    check_real("lr", lr, 0, low_open=True)
    if check_choice("optimizer", name, OPTIMIZERS) == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.SGD(params, lr=lr, momentum=SGD_MOMENTUM)


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 2048) -> float:
    """Top-1 accuracy of ``model`` in eval mode on (x [n, ...], y [n]); restores the mode."""
    with eval_mode(model):
        correct = sum(int((model(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum()) for i in range(0, len(x), batch_size))
    return correct / max(len(x), 1)


def train_classifier(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    layers: str | Sequence[str] | None = None,
    alpha: float | AlphaPolicy = 0.0,
    epochs: int = 20,
    batch_size: int = 50,
    lr: float = 1e-3,
    optimizer: str = "adam",
    generator: torch.Generator | None = None,
    x_test: Tensor | None = None,
    y_test: Tensor | None = None,
    num_classes: int | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train ``model`` in place on (x [n, ...], y [n]) and return per-epoch records.

    layers: where to mix (names from ``model.named_modules()`` or ``"input"``); None = plain ERM.
    alpha: a number or an ``AlphaPolicy`` (its clock is set to ``epoch + i / steps`` per batch).
    generator: the data order comes from it, and one draw from it seeds the mixing stream, so
    methods trained from equal generators see the same batches in every epoch.
    The data stay where they are (move them to the device first); the last partial batch is
    kept if it has at least 2 rows, dropped otherwise (mixing needs two rows).
    """
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"y has {y.shape[0]} rows but x has {n}")
    check_int("epochs", epochs, 1)
    check_int("batch_size", batch_size, 2)  # mixing pairs rows
    k = num_classes or int(y.max()) + 1
    # one draw seeds the mixing stream, for every method alike, so that runs from the same
    # generator see the same data order whether they mix or not (paired comparisons)
    mix_seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    mixer = None
    if layers is not None:
        mixer = ManifoldMixup(model, layers, alpha=alpha, generator=mix_seed, num_classes=k)
    opt = make_optimizer(model.parameters(), optimizer, lr)
    steps = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size) if min(i + batch_size, n) - i >= 2]
    result = TrainResult()
    model.train()
    try:
        for epoch in range(epochs):
            order = torch.randperm(n, generator=generator).to(x.device)
            total, correct, seen = 0.0, 0, 0
            for s, (a, b) in enumerate(steps):
                idx = order[a:b]
                xb, yb = x[idx], y[idx]
                if mixer is None:
                    logits = model(xb)
                    targets = soft_targets(yb, k)
                else:
                    mixer.set_epoch(epoch + s / len(steps))
                    logits, targets = mixer(xb, yb, index=idx)  # (sample indices: for policies that keep per-sample state)
                loss = soft_cross_entropy(logits, targets)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
                correct += int((logits.detach().argmax(-1) == targets.argmax(-1)).sum())
                seen += len(idx)
            row = {"epoch": epoch, "loss": total / seen, "train_acc": correct / seen}
            if x_test is not None and y_test is not None:
                row["test_acc"] = accuracy(model, x_test, y_test)
            result.epochs.append(row)
            if on_epoch is not None:
                on_epoch(row)
    finally:
        if mixer is not None:
            mixer.remove()
    if mixer is not None:
        result.policy = mixer.policy.history()
    return result
