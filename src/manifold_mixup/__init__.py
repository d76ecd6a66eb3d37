"""Manifold Mixup and adaptive mixing (ConfMix) for any PyTorch model.

    import manifold_mixup as mm
    mixer = mm.ManifoldMixup(model, ["layer3"], alpha=2.0, generator=torch.Generator().manual_seed(0))
    logits, targets = mixer(x, y)
    loss = mm.soft_cross_entropy(logits, targets)

The names below are what a user of the mixer needs; the library's modules are ``mixing``,
``manifold``, ``policies``, ``confidence``, ``checkpointing``, ``train`` and ``checks`` (the one
vocabulary of setting checks, and the limits and choices every part shares). The paper's kit lives
in its own subpackage, ``manifold_mixup.paper``, which imports the library and is never imported by
it: ``paper.models`` (the paper's MLP and CNN), ``paper.toy`` (toy problems, Bayes risk, MMLB),
``paper.ensemble`` (the vectorised trainer), ``paper.data`` (digits, CIFAR-10, Fashion-MNIST),
``paper.studies`` and ``paper.cli``; ``mm.toy`` and the like reach them too.

Imports are lazy (PEP 562): ``import manifold_mixup`` does not import torch until a name is used,
so the command line starts, and stops on Ctrl-C, cleanly.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_NAMES = {
    "ManifoldMixup": "manifold",
    "LastPlan": "manifold",
    "eval_mode": "manifold",
    "MixPlan": "mixing",
    "draw_plan": "mixing",
    "sample_lambda": "mixing",
    "mix": "mixing",
    "mix_targets": "mixing",
    "soft_targets": "mixing",
    "soft_cross_entropy": "mixing",
    "mixed_cross_entropy": "mixing",
    "AlphaPolicy": "policies",
    "Constant": "policies",
    "RampUp": "policies",
    "RampDown": "policies",
    "ConfMix": "policies",
    "HalfConfMix": "policies",
    "confmix_alpha": "policies",
    "schedule": "policies",
    "train_classifier": "train",
    "TrainResult": "train",
    "accuracy": "train",
}
# the library's modules, and the paper's kit (``manifold_mixup.paper``), whose modules are also
# reachable as ``mm.toy`` and the like
_SUBMODULES = {name: name for name in ("mixing", "manifold", "policies", "train", "checkpointing", "confidence",
                                        "checks", "paper")}
_SUBMODULES.update({name: f"paper.{name}" for name in (
    "models", "toy", "ensemble", "data", "images", "digits", "cifar10", "fashion_mnist", "studies", "plots", "stats",
    "files", "store", "threads", "executors", "cli", "devices", "constants")})

__all__ = list(_NAMES)


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        value = getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{_SUBMODULES[name]}", __name__)
    else:
        raise AttributeError(f"module 'manifold_mixup' has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES) | set(_SUBMODULES))
