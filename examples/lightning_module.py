"""Manifold Mixup in PyTorch Lightning's ``training_step`` (scikit-learn's 8x8 digits).

    pip install -e ".[lightning]"
    python examples/lightning_module.py --steps 200

The mixer wraps the network inside the LightningModule. Lightning wraps the whole module for
distributed training and calls ``training_step`` through that wrapper, so gradients are
synchronised as usual. The mixer is made in ``setup``, where ``torch.distributed`` is initialised
under a distributed strategy: each rank then draws from its own stream (the seed and the rank).
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import manifold_mixup as mm


class MixupClassifier(L.LightningModule):
    def __init__(self, alpha: float = 1.0, seed: int = 0, lr: float = 3e-3):
        super().__init__()
        self.save_hyperparameters()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
                nn.Linear(64, 10),
            )
        self.mixer = None

    def setup(self, stage: str) -> None:
        if self.mixer is None:  # "6" is the flatten before the first linear layer
            self.mixer = mm.ManifoldMixup(self.net, ["input", "6"], alpha=self.hparams.alpha,
                                          generator=torch.Generator().manual_seed(self.hparams.seed))

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.mixer.set_epoch(self.current_epoch + batch_idx / max(1, self.trainer.num_training_batches))
        logits, targets = self.mixer(x, y)
        loss = mm.soft_cross_entropy(logits, targets)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200, help="optimiser steps (default 200)")
    ap.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    ap.add_argument("--alpha", type=float, default=1.0, help="lambda ~ Beta(alpha, alpha) (default 1.0)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the weights, batches and mixing (default 0)")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error(f"--steps must be >= 1; got {args.steps}")
    if args.batch_size < 2:
        ap.error(f"--batch-size must be >= 2 (mixing pairs rows); got {args.batch_size}")

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))
    train, test = order[:1350], order[1350:]
    loader = DataLoader(TensorDataset(x[train], y[train]), batch_size=args.batch_size, shuffle=True,
                        drop_last=True, generator=torch.Generator().manual_seed(args.seed))

    module = MixupClassifier(alpha=args.alpha, seed=args.seed)
    trainer = L.Trainer(max_steps=args.steps, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, loader)

    module.eval()
    with torch.no_grad():
        acc = (module(x[test]).argmax(-1) == y[test]).float().mean().item()
    result = {"steps": trainer.global_step, "test_accuracy": round(acc, 4)}
    print(result)
    return result


if __name__ == "__main__":
    main()
