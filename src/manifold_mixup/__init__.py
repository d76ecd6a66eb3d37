"""Manifold Mixup and adaptive mixing (ConfMix) for any PyTorch model.

    import manifold_mixup as mm
    mixer = mm.ManifoldMixup(model, ["layer3"], alpha=2.0, generator=torch.Generator().manual_seed(0))
    logits, targets = mixer(x, y)
    loss = mm.soft_cross_entropy(logits, targets)
"""

from .manifold import LastPlan, ManifoldMixup
from .mixing import (
    MixPlan,
    draw_plan,
    identity_plan,
    mix,
    mix_targets,
    mixed_cross_entropy,
    sample_lambda,
    soft_cross_entropy,
    soft_targets,
)
from .data import ImageDataset, load_cifar10, load_dataset, load_digits
from .ensemble import EnsembleConfig, EnsembleParams, MemberSpec, epoch_plan, predict_ensemble, to_sequential, train_ensemble
from .models import PAPER_CNN_MIX_LAYER, mlp, mlp_layer, paper_cnn, small_resnet
from .policies import AlphaPolicy, ConfMix, Constant, HalfConfMix, RampDown, RampUp, as_policy, confmix_alpha
from .toy import GaussianMixtureProblem, spiral
from .train import TrainResult, accuracy, train_classifier

__version__ = "0.1.0"

__all__ = [
    "ManifoldMixup",
    "LastPlan",
    "MixPlan",
    "draw_plan",
    "identity_plan",
    "mix",
    "mix_targets",
    "mixed_cross_entropy",
    "sample_lambda",
    "soft_cross_entropy",
    "soft_targets",
    "AlphaPolicy",
    "Constant",
    "RampUp",
    "RampDown",
    "ConfMix",
    "HalfConfMix",
    "as_policy",
    "confmix_alpha",
    "mlp",
    "mlp_layer",
    "paper_cnn",
    "small_resnet",
    "PAPER_CNN_MIX_LAYER",
    "GaussianMixtureProblem",
    "spiral",
    "train_classifier",
    "TrainResult",
    "accuracy",
    "MemberSpec",
    "EnsembleConfig",
    "EnsembleParams",
    "epoch_plan",
    "train_ensemble",
    "predict_ensemble",
    "to_sequential",
    "ImageDataset",
    "load_dataset",
    "load_digits",
    "load_cifar10",
]
