"""Figure 1: decision regions of the 4-layer ReLU MLP on a two-arm spiral, under ERM and under
mixing at each depth k = 0 (input) .. 3, from the same initial weights and data order."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from ...checks import (ALPHA_MAX, STUDY_SEED_MAX, as_generator, check_int, check_real, check_seed, check_sizes,
                       plain_fields)
from .protocol import Flag, Study

__all__ = ["SpiralConfig", "STUDY", "run_spiral_figure"]


@dataclass(frozen=True)
class SpiralConfig:
    """Settings of Figure 1 (the paper gives none beyond '4 layer ReLU network')."""

    n: int = 1000
    noise: float = 0.05
    turns: float = 1.5
    hidden: tuple[int, ...] = (128, 128, 128)
    epochs: int = 200
    batch_size: int = 50
    lr: float = 1e-3
    alpha: float = 0.5
    resolution: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        plain_fields(self)  # numpy numbers as Python's, lists as tuples: it hashes and serialises
        for name in ("n", "epochs"):
            check_int(name, getattr(self, name), 1)
        check_int("batch_size", self.batch_size, 2)
        check_int("resolution", self.resolution, 2, 4096)
        check_seed("seed", self.seed, STUDY_SEED_MAX - 1)  # seed + 1 seeds the data order
        check_real("noise", self.noise, 0)
        check_real("turns", self.turns, 0, low_open=True)
        check_real("lr", self.lr, 0, low_open=True)
        check_real("alpha", self.alpha, 0, ALPHA_MAX, low_open=True)
        check_sizes("hidden", self.hidden)


def run_spiral_figure(cfg: SpiralConfig, out: str | Path) -> dict:
    """Train ERM and mixing at k = 0..depth, write ``spiral.png`` and ``manifest.json`` (settings,
    versions, the machine, and under ``derived`` the accuracies) into ``out``; return the settings
    and accuracies. The folder is held like a study's (:class:`ShardStore`: its lock until the last
    file is written; a folder of another study, or of other settings with a figure, is refused)."""
    from ..store import ShardStore
    from ..threads import thread_setting

    thread_setting()  # the environment is checked before anything is made
    with ShardStore(out, "spiral-figure", asdict(cfg)) as store:  # an unusable folder fails now, not after the training
        return _draw(cfg, store)


def _draw(cfg: SpiralConfig, store) -> dict:
    import torch

    from ...train import accuracy, train_classifier
    from ..models import mlp, mlp_layer
    from ..plots import plot_decision_grid
    from ..toy import spiral

    out = store.dir
    x, y = spiral(cfg.n, cfg.seed, noise=cfg.noise, turns=cfg.turns)
    lim = float(x.abs().max()) * 1.1
    axis = torch.linspace(-lim, lim, cfg.resolution)
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")
    points = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    panels, acc = [], {}
    depth = len(cfg.hidden)
    for k in [None, *range(depth + 1)]:
        model = mlp(2, cfg.hidden, generator=as_generator(cfg.seed))
        train_classifier(
            model, x, y, layers=None if k is None else mlp_layer(k, depth), alpha=cfg.alpha,
            epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
            generator=as_generator(cfg.seed + 1), num_classes=2,
        )
        name = "ERM" if k is None else ("input mixup (k = 0)" if k == 0 else f"manifold mixup, k = {k}")
        acc[name] = accuracy(model, x, y)
        with torch.no_grad():
            labels = model.eval()(points).argmax(-1).reshape(cfg.resolution, cfg.resolution)
        panels.append((f"{name}\ntrain acc {100 * acc[name]:.1f}%", None, labels.numpy()))
    plot_decision_grid(panels, x.numpy(), y.numpy(), (-lim, lim, -lim, lim), out / "spiral.png")
    store.record({"train_accuracy": acc})
    return {"config": asdict(cfg), "train_accuracy": acc}


STUDY = Study(
    name="spiral-figure",
    help="Figure 1: decision regions on a two-arm spiral, ERM and mixing at each depth",
    description="Figure 1 of the paper: the decision regions of a ReLU MLP on a two-arm spiral, trained with ERM "
                "and with mixing at the input and after each hidden layer, from the same initial weights and data "
                "order. Writes spiral.png and manifest.json (settings, versions, the machine, the accuracies).",
    presets={"default": SpiralConfig()},
    flags=(
        Flag("n", int, "N", "spiral points"),
        Flag("noise", float, "S", "noise of the spiral points"),
        Flag("hidden", int, "W", "hidden widths of the MLP", "+"),
        Flag("epochs", int, "E", "training epochs"),
        Flag("batch_size", int, "B", "mini-batch size"),
        Flag("lr", float, "LR", "learning rate"),
        Flag("alpha", float, "A", f"mixing strength: lambda ~ Beta(A, A), 0 < A <= {ALPHA_MAX:g}"),
        Flag("resolution", int, "R", "pixels per side of each decision-region panel"),
        Flag("seed", int, "S", "seed of the data, the initial weights and the data order"),
    ),
    run=lambda cfg, out, progress=True: run_spiral_figure(cfg, out),
    brief=lambda res: res["train_accuracy"],
    out_help="output folder for spiral.png",
)
