"""Manifold Mixup in a plain PyTorch loop, on your own small residual CNN (scikit-learn's 8x8 digits).

    python examples/plain_pytorch.py --steps 300

The mixer is told the names of the modules whose outputs may be mixed (from
``model.named_modules()``); everything else is an ordinary training loop.
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import manifold_mixup as mm


class Block(nn.Module):
    """conv-BN-ReLU-conv-BN plus the identity, then ReLU."""

    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return torch.relu(x + self.body(x))


class SmallResNet(nn.Module):
    def __init__(self, classes: int = 10, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.block1 = Block(width)
        self.block2 = Block(width)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes))

    def forward(self, x):
        return self.head(self.block2(self.block1(self.stem(x))))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300, help="optimiser steps (default 300)")
    ap.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    ap.add_argument("--alpha", type=float, default=1.0, help="lambda ~ Beta(alpha, alpha) (default 1.0)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the split, weights, batches and mixing (default 0)")
    args = ap.parse_args(argv)
    if args.steps < 1:
        ap.error(f"--steps must be >= 1; got {args.steps}")
    if args.batch_size < 2:
        ap.error(f"--batch-size must be >= 2 (mixing pairs rows); got {args.batch_size}")

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [n, 1, 8, 8] in [0, 1]
    y = torch.tensor(digits.target)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, stratify=y, random_state=args.seed)

    g = torch.Generator().manual_seed(args.seed)
    with torch.random.fork_rng(devices=[]):  # the weights come from the seed, the global stream is left alone
        torch.manual_seed(args.seed)
        model = SmallResNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    mixer = mm.ManifoldMixup(model, ["input", "block1", "block2"], alpha=args.alpha,
                             generator=torch.Generator().manual_seed(args.seed + 1))

    model.train()
    step = 0
    while step < args.steps:
        order = torch.randperm(len(x_train), generator=g)
        for i in range(0, len(order) - args.batch_size + 1, args.batch_size):
            idx = order[i:i + args.batch_size]
            logits, targets = mixer(x_train[idx], y_train[idx])  # mixed at one of the layers, drawn per batch
            loss = mm.soft_cross_entropy(logits, targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == args.steps:
                break

    model.eval()
    with torch.no_grad():
        acc = (model(x_test).argmax(-1) == y_test).float().mean().item()
    result = {"steps": step, "last_loss": round(loss.item(), 4), "test_accuracy": round(acc, 4)}
    print(result)
    return result


if __name__ == "__main__":
    main()
