"""Fresh confidences for adaptive policies (ConfMix): the current model's max softmax at the
clean batch, without gradients and in eval mode.

The plain way is one extra eval-mode forward of the whole model (``forward_confidence``). The
fast path (``suffix_cut``) gives the same numbers from the clean hidden state at the mixing
layer, by running only the modules after it: on the paper's CNN a fresh ConfMix step costs
about 1.6 ERM steps with the extra forward and 1.10 with the cut (BENCHMARKS.md). Precondition: the model is a chain of plain ``nn.Sequential``
containers down to the layer, and every module up to the layer behaves the same in train and
eval mode, with no hooks; otherwise ``suffix_cut`` returns None and the mixer uses the plain way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _torch_module

__all__ = ["eval_mode", "forward_confidence", "suffix_cut", "SuffixCut"]


@contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Put ``models`` in eval mode for a block, then restore every submodule's own mode
    (``model.train(was)`` would also switch deliberately frozen submodules back to training)."""
    modes = [(m, m.training) for model in models for m in model.modules()]
    for model in models:
        model.eval()
    try:
        yield models[0] if len(models) == 1 else models
    finally:
        for m, was in modes:
            m.training = was


def max_softmax(logits: Tensor) -> tuple[Tensor, int]:
    """(max softmax probability per row [B], number of classes K) of logits [B, K]."""
    return torch.softmax(logits.detach().float(), -1).amax(-1), int(logits.shape[-1])


def forward_confidence(model: nn.Module, call: Callable[[], Any], logits: Callable[[Any], Tensor]) -> tuple[Tensor, int]:
    """Confidences [B] and K from ``call()`` (a forward of ``model``) run no-grad in eval mode."""
    with eval_mode(model), torch.no_grad():
        return max_softmax(logits(call()))


# Modules whose forward does not depend on train/eval mode (exact types, subclasses excluded).
_MODE_FREE = frozenset({
    nn.Sequential, nn.Identity, nn.Flatten, nn.Unflatten, nn.Linear, nn.Bilinear,
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.LayerNorm, nn.GroupNorm, nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
})


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _global_hooks() -> bool:
    m = _torch_module
    return bool(m._global_forward_hooks or m._global_forward_pre_hooks or m._global_backward_hooks
                or m._global_backward_pre_hooks)


class SuffixCut(NamedTuple):
    """The modules after the mixing layer, in the order the model runs them."""

    suffix: list[nn.Module]
    inplace: bool  # a module after the cut may write into its input

    def confidence(self, h: Tensor, logits: Callable[[Any], Tensor]) -> tuple[Tensor, int]:
        """Confidences [B] and K from the clean hidden state h at the layer: the modules after it,
        no-grad and in eval mode (the same numbers as an eval-mode forward of the whole model)."""
        with eval_mode(*self.suffix), torch.no_grad():
            c = h.clone() if self.inplace else h
            for m in self.suffix:
                c = m(c)
            return max_softmax(logits(c))


def suffix_cut(model: nn.Module, name: str) -> SuffixCut | None:
    """The cut of ``model`` after the layer ``name``, or None where it would change the numbers
    (see the module docstring for the precondition; checked on every call, as hooks and
    patches come and go)."""
    if _global_hooks():
        return None
    before: list[nn.Module] = []
    after: list[nn.Module] = []
    node = model
    for part in name.split("."):
        if (type(node) is not nn.Sequential or "forward" in node.__dict__ or _has_hooks(node)
                or getattr(node, "_compiled_call_impl", None) is not None):
            return None
        kids = list(node._modules.items())
        names = [k for k, _ in kids]
        if part not in names:
            return None
        i = names.index(part)
        before += [m for _, m in kids[:i]]
        after = [m for _, m in kids[i + 1:]] + after
        node = kids[i][1]
    chain = before + [node] + after
    if any(m is None for m in chain) or len({id(m) for m in chain}) != len(chain):
        return None
    if any(m is node for top in chain if top is not node for m in top.modules()):
        return None  # the layer also runs inside another module
    prefix_modules = [m for top in before + [node] for m in top.modules()]
    if not all(type(m) in _MODE_FREE and not _has_hooks(m) for m in prefix_modules):
        return None
    inplace = any(getattr(m, "inplace", False) for top in after for m in top.modules())
    return SuffixCut(after, inplace)
