"""Manifold Mixup on any ``nn.Module``, at layers named by ``model.named_modules()``.

    mixer = mm.ManifoldMixup(model, ["layer2", "layer3"], alpha=2.0, generator=g)
    logits, targets = mixer(x, y)                    # training: mixes at one drawn layer
    loss = mm.soft_cross_entropy(logits, targets)

The mixed tensor is the named module's output (``"input"`` mixes the input itself). A forward
hook is put on the drawn layer for the duration of one mixer call and taken off at its end, so
outside a mixer call, and whenever the model is in ``eval()`` mode, the model is exactly the
model without the library. ``mixer.remove()`` (or leaving a ``with`` block) retires the mixer.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _torch_module

import numpy as np

from .mixing import MixPlan, PlanSampler, check_alpha, check_label_range, mix, mix_targets, soft_targets, with_matrix
from .models import eval_mode
from .policies import AlphaPolicy, ConfMix, Constant, RampDown, RampUp, as_policy

__all__ = ["ManifoldMixup", "LastPlan"]

INPUT = "input"
_MAX_CACHED_CLASSES = 1024  # above this K, one-hot rows are written per call instead of read from an identity
_CHECKED_POLICIES = (Constant, RampUp, RampDown)  # their alpha is valid by construction

# How to find the tensor to mix in a module output that is a tuple, list or dict:
# an index or key, or a function ``(output, mix_fn) -> new_output``.
Selector = int | str | Callable[[Any, Callable[[Tensor], Tensor]], Any]


class LastPlan(NamedTuple):
    """What the last mixer call did: permutation [B], lambda [B] and the layer name."""

    perm: Tensor
    lam: Tensor
    layer: str


def _apply_selector(output: Any, selector: Selector | None, fn: Callable[[Tensor], Tensor], name: str) -> Any:
    if isinstance(output, Tensor) and selector is None:
        return fn(output)
    if selector is None:
        raise TypeError(
            f"layer {name!r} outputs a {type(output).__name__}, not a tensor: say which part to mix "
            f"with select={{{name!r}: <index or key, or a function (output, mix) -> new output>}}"
        )
    if callable(selector):
        return selector(output, fn)
    if isinstance(output, Mapping):
        if selector not in output:
            raise KeyError(f"select[{name!r}] = {selector!r} is not a key of the output; keys: {list(output)}")
        new = copy.copy(output)  # keeps the mapping's own type (OrderedDict, ModelOutput, ...)
        new[selector] = fn(output[selector])
        return new
    if isinstance(output, (tuple, list)) and isinstance(selector, int):
        parts = list(output)
        parts[selector] = fn(parts[selector])
        if isinstance(output, list) or type(output) is tuple:
            return type(output)(parts)
        if hasattr(output, "_fields"):  # namedtuple
            return type(output)(*parts)
        return type(output)(parts)  # torch.return_types and other structseqs
    raise TypeError(f"select[{name!r}] = {selector!r} does not fit an output of type {type(output).__name__}")


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
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or getattr(m, "_backward_pre_hooks", None))


def _global_hooks() -> bool:
    """Hooks registered for every module (``nn.modules.module.register_module_forward_hook``...)."""
    m = _torch_module
    return bool(m._global_forward_hooks or m._global_forward_pre_hooks or m._global_backward_hooks
                or m._global_backward_pre_hooks)


def _layout(containers: list[nn.Module]) -> tuple[tuple[nn.Module, ...], ...]:
    """The children of each container, to notice a layer replaced after the cut was made."""
    return tuple(tuple(c._modules.values()) for c in containers)


class _Split(NamedTuple):
    """A model cut at a layer: the modules up to and including it, and those after it."""

    prefix: list[nn.Module]
    suffix: list[nn.Module]
    containers: list[nn.Module]  # the nn.Sequential containers on the path to the layer
    prefix_modules: list[nn.Module]  # every module in the prefix, nested ones included
    suffix_inplace: bool  # a module after the cut may write into its input
    layout: tuple[tuple[nn.Module, ...], ...]  # ``_layout(containers)`` when the cut was made
    mode_free: bool  # made for fresh ConfMix (see ``sequential_split``)
    root: nn.Module  # the model that was cut

    def hooked(self) -> bool:
        """Something that running the layers one by one would skip or change (checked per call:
        hooks and patches may come and go): hooks, an instance-level ``forward`` or a compiled call
        on a container on the path; backward hooks on the cut layer (they would see the gradient
        of its unmixed output); for a ``mode_free`` cut, hooks on any module up to the cut (they
        would run once, and could depend on the mode). Other hooks of the layers run as usual."""
        for m in self.containers:
            if _has_hooks(m) or "forward" in m.__dict__ or getattr(m, "_compiled_call_impl", None) is not None:
                return True
        layer = self.prefix[-1]
        if layer._backward_hooks or getattr(layer, "_backward_pre_hooks", None):
            return True
        return self.mode_free and any(_has_hooks(m) for m in self.prefix_modules)

    def stale(self) -> bool:
        """A layer on the path was replaced, added or removed since the cut was made (for a
        ``mode_free`` cut, also a module anywhere inside the layers up to the cut)."""
        if _layout(self.containers) != self.layout:
            return True
        return self.mode_free and [m for top in self.prefix for m in top.modules()] != self.prefix_modules


def sequential_split(model: nn.Module, name: str, mode_free: bool = True, check_hooks: bool = True) -> _Split | None:
    """Cut ``model`` at the layer ``name`` if that changes nothing: every container on the path
    is a plain ``nn.Sequential`` (its own forward), the layer appears nowhere else in the model's
    chain, and no module appears twice at the top of the chain. ``mode_free`` (for fresh ConfMix,
    whose confidences run the layers after the cut in eval mode) also requires every module up to
    the layer to behave the same in train and eval mode. ``check_hooks``: also None while
    ``_Split.hooked()`` holds (callers that cache the cut check that per call instead)."""
    before: list[nn.Module] = []
    after: list[nn.Module] = []
    containers: list[nn.Module] = []
    node = model
    for part in name.split("."):
        if not isinstance(node, nn.Sequential) or type(node).forward is not nn.Sequential.forward:
            return None
        containers.append(node)
        names = list(node._modules)
        if part not in names:
            return None
        i = names.index(part)
        kids = list(node._modules.values())
        before += kids[:i]
        after = kids[i + 1 :] + after
        node = kids[i]
    prefix = before + [node]
    chain = prefix + after
    if any(m is None for m in chain) or len({id(m) for m in chain}) != len(chain):
        return None
    if any(m is node for top in chain if top is not node for m in top.modules()):
        return None  # the layer also runs inside another one: a hook would mix at its first call
    prefix_modules = [m for top in prefix for m in top.modules()]
    if mode_free and not all(type(m) in _MODE_FREE for m in prefix_modules):
        return None
    inplace = any(getattr(m, "inplace", False) for top in after for m in top.modules())
    split = _Split(prefix, after, containers, prefix_modules, inplace, _layout(containers), mode_free, model)
    return None if check_hooks and split.hooked() else split


class _CallState:
    """Per-call state of a mixer, kept off ``nn.Module.__setattr__`` (slow, and called per step)."""

    __slots__ = ("plan", "fired", "last_plan", "looked_up")

    def __init__(self) -> None:
        self.plan: MixPlan | None = None  # the plan of the call in progress
        self.fired = False
        self.last_plan: LastPlan | None = None
        self.looked_up = False  # ConfMix's cache was read (and grown) for this call's indices


class ManifoldMixup(nn.Module):
    """Train ``model`` on mixed hidden states, mixing at one of ``layers`` per call.

    model: any nn.Module mapping a batch-first input [B, ...] to logits [B, K].
    layers: a name or names from ``model.named_modules()``, or ``"input"`` for input mixup.
    alpha: a number >= 0 (lambda ~ Beta(alpha, alpha); 0 = no mixing) or an ``AlphaPolicy``.
    per_sample: one lambda per row (True) or one per batch (False).
    generator: a CPU ``torch.Generator`` (or an int seed); one draw from it seeds the stream from
      which every layer, permutation and lambda is drawn, so the same seed replays the same run.
    layer_weights: probabilities of drawing each layer (default uniform).
    select: for layers whose output is a tuple/list/dict, ``{name: index | key | fn}``.
    num_classes: K, to check labels before the forward; otherwise taken from the logits.
    label_smoothing: eps in [0, 1) applied to the targets before mixing.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | Sequence[str],
        alpha: float | AlphaPolicy = 1.0,
        per_sample: bool = True,
        generator: torch.Generator | int | None = None,
        layer_weights: Sequence[float] | None = None,
        select: Mapping[str, Selector] | None = None,
        num_classes: int | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.layers = [layers] if isinstance(layers, str) else list(layers)
        modules = dict(model.named_modules())
        valid = [INPUT] + [n for n in modules if n]
        if not self.layers:
            raise ValueError(f"layers must name at least one layer; valid names: {valid}")
        for name in self.layers:
            if name not in valid:
                raise ValueError(f"unknown layer {name!r}; valid names: {valid}")
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers must be distinct; got {self.layers}")
        if layer_weights is None:
            weights = torch.ones(len(self.layers))
        else:
            weights = torch.as_tensor(list(layer_weights), dtype=torch.float64)
            if weights.shape != (len(self.layers),) or not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
                raise ValueError(
                    f"layer_weights must be {len(self.layers)} finite non-negative numbers with a positive sum; got {list(layer_weights)}"
                )
        self._weights = (weights.double() / weights.sum()).numpy()
        self._cum_weights = np.cumsum(self._weights).tolist()
        self.policy = as_policy(alpha)
        if isinstance(self.policy, ConfMix) and not per_sample:
            raise ValueError("ConfMix sets alpha per sample: it needs per_sample=True")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2):
            raise ValueError(f"num_classes must be an integer >= 2; got {num_classes!r}")
        if isinstance(self.policy, ConfMix) and self.policy.confidence == "cached" and num_classes is None:
            # (otherwise the first call after the warm-up would fail, epochs into training)
            raise ValueError("ConfMix(confidence='cached') needs num_classes=K on the mixer (unseen samples get confidence 1/K)")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1); got {label_smoothing}")
        self.per_sample = per_sample
        self.generator = generator
        self._sampler: PlanSampler | None = None  # seeded at the first training call
        self._layers_ahead: list[str] = []  # layers of the next calls, drawn a block at a time
        self.select = dict(select or {})
        for name in self.select:
            if name == INPUT:
                raise ValueError("select cannot name 'input': the input is mixed as a whole tensor")
            if name not in self.layers:
                raise ValueError(f"select names {name!r}, which is not among layers {self.layers}")
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self._state = _CallState()
        self._eyes: dict[tuple, Tensor] = {}  # (smoothed) identities by (K, eps) on the CPU, (K, eps, device) elsewhere
        self._splits: dict[tuple[str, bool], _Split | None] = {}
        # fresh ConfMix: run the layers before the mixing point once where the model allows it
        # (``sequential_split``); False always runs a separate eval-mode forward for confidences
        self.reuse_prefix = True
        # a plain nn.Sequential (nested ones too) without hooks on the path: run its layers one
        # by one and mix between them, instead of through a forward hook (same numbers, less
        # overhead per call); False always mixes through a hook
        self.direct_sequential = True
        self._warned_reuse: set[str] = set()
        # hooks live only inside a mixer call, on the one layer drawn for it
        self._modules_by_name = {name: modules[name] for name in self.layers if name != INPUT}
        self._hooks = {name: self._make_hook(name) for name in self._modules_by_name}
        self._removed = False

    # -- hooks --------------------------------------------------------------------------
    def _make_hook(self, name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            # registered on the drawn layer only, and only while a mixer call runs
            state = self._state
            if state.fired:
                if name not in self._warned_reuse:
                    self._warned_reuse.add(name)
                    warnings.warn(
                        f"layer {name!r} runs more than once in one forward; it is mixed at its first call only",
                        stacklevel=2,
                    )
                return None
            state.fired = True
            plan = state.plan
            return _apply_selector(output, self.select.get(name), lambda h: mix(h, plan), name)

        return hook

    @property
    def last_plan(self) -> LastPlan | None:
        """``(perm, lam, layer)`` of the last training call (None after an eval-mode call)."""
        return self._state.last_plan

    def remove(self) -> None:
        """Detach the mixer for good: later mixer calls are refused. (Hooks exist only during a
        mixer call, so the model is already as it was before the mixer was made.)"""
        self._removed = True

    def __enter__(self) -> "ManifoldMixup":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    # -- training clock -----------------------------------------------------------------
    def set_epoch(self, epoch: float) -> None:
        """Forward the training clock (epochs, fractional allowed) to the alpha policy."""
        self.policy.set_epoch(epoch)

    # -- the mixed forward --------------------------------------------------------------
    def _fresh_confidence(self, x: Tensor) -> tuple[Tensor, int]:
        """Fresh ConfMix's confidences: max softmax of an eval-mode, no-grad forward; and K."""
        with eval_mode(self.model), torch.no_grad():
            logits = self.model(x)
        probs = torch.softmax(logits.float(), -1)
        return probs.max(-1).values, logits.shape[-1]

    @staticmethod
    def _check_cached(index: Tensor | None, k: int | None) -> Tensor:
        """The sample indices that cached ConfMix needs, or a clear error."""
        if index is None:
            raise ValueError("ConfMix(confidence='cached') needs the batch's sample indices: mixer(x, y, index=idx)")
        if index.ndim != 1 or index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
            raise ValueError(f"index must be an integer tensor [B] of sample indices; got {index.dtype} of shape {tuple(index.shape)}")
        if k is None:
            raise ValueError("ConfMix(confidence='cached') needs num_classes=K on the mixer")
        return index

    def forward(
        self,
        x: Tensor,
        y: Tensor,
        index: Tensor | None = None,
        *,
        plan: MixPlan | None = None,
        layer: str | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Mixed forward: returns ``(logits [B, K], soft targets [B, K])`` (rows sum to 1).

        x: input batch [B, ...]; y: LongTensor [B] of class indices (or float [B, K] soft rows);
        index: LongTensor [B] of sample indices, needed only by ConfMix with cached confidence.
        plan, layer: replay a given plan at a given layer instead of drawing them (the policy
        is then not consulted), e.g. to reproduce another trainer's run exactly.
        In eval mode nothing is mixed and the targets are the (smoothed) one-hot rows.
        """
        if self._removed:
            raise RuntimeError("this mixer was removed (mixer.remove() or the end of its with-block); make a new one")
        self._state.looked_up = False  # (a call that failed half-way must not leave it set)
        b = x.shape[0]
        if y.shape[0] != b:
            raise ValueError(f"targets have batch size {y.shape[0]} but the input has {b}")
        if index is not None and index.shape[0] != b:
            raise ValueError(f"index has batch size {index.shape[0]} but the input has {b}")
        k = self.num_classes
        rows = None  # the (smoothed) one-hot rows of class-index targets
        if k is not None and not y.dtype.is_floating_point:
            rows = self._label_rows(y, k)  # checks the labels, before any work
        if not self.model.training:
            logits = self.model(x)
            self._state.last_plan = None
            return logits, self._targets(y, rows, logits, None)
        if b < 2:
            raise ValueError("mixing needs a batch of at least 2 rows; got a batch of 1")
        if (plan is None) != (layer is None):
            raise ValueError("plan and layer are given together (to replay a run) or not at all")
        if layer is not None:
            if layer not in self.layers:
                raise ValueError(f"layer {layer!r} is not among this mixer's layers {self.layers}")
            if plan.batch_size != b:
                raise ValueError(f"the plan is for a batch of {plan.batch_size} but the input has {b} rows")
            return self._mixed_forward(x, y, rows, index, with_matrix(plan).to(x.device), layer)
        if self._sampler is None:
            self._sampler = PlanSampler(self.generator)
        sampler = self._sampler
        if len(self.layers) == 1:
            layer = self.layers[0]
        else:  # layers are drawn a block ahead: the same draws as one ``choice`` per call
            ahead = self._layers_ahead
            if not ahead:
                ahead = self._layers_ahead = [self.layers[i] for i in sampler.choices_ahead(self._cum_weights)]
            layer = ahead.pop()
        pol = self.policy
        if isinstance(pol, ConfMix):
            if pol.in_warmup:
                alpha = 0.0
            elif pol.confidence == "fresh" and self.reuse_prefix and (split := self._split(layer, True)) is not None:
                return self._split_forward(x, y, rows, index, layer, split)
            elif pol.confidence == "cached":
                alpha = pol.cached_alpha(self._check_cached(index, k), k)
                self._state.looked_up = True  # the cache now covers these indices
            else:
                conf, k_seen = self._fresh_confidence(x)
                alpha = pol.confmix_alpha(conf, k_seen, check=False).double().numpy()
            plan = self._confmix_plan(b, alpha)
        else:
            alpha = pol.alpha(b)
            if isinstance(alpha, Tensor):  # per-sample values from a custom policy
                if alpha.shape != (b,) or not self.per_sample:
                    raise ValueError(f"{type(pol).__name__}.alpha returned a tensor of shape {tuple(alpha.shape)}; "
                                     f"expected [{b}] (and per_sample=True)")
                check_alpha(alpha, f"{type(pol).__name__}.alpha")
                alpha = alpha.detach().to("cpu", torch.float64).numpy().copy()  # the policy may reuse its tensor
            elif type(pol) not in _CHECKED_POLICIES:  # built-in policies give valid values
                check_alpha(alpha, f"{type(pol).__name__}.alpha")
            plan, lam = sampler.next_plan(b, alpha, self.per_sample, x.device)
            self._record(alpha, lam)
        if not (x.is_cpu and plan.perm.is_cpu):  # (plans are drawn on the CPU, or for x's device)
            plan = plan.to(x.device)
        return self._mixed_forward(x, y, rows, index, plan, layer)

    def _confmix_plan(self, b: int, alpha: float | np.ndarray) -> MixPlan:
        """The next plan under ConfMix's per-row alpha (halved for half ConfMix), recorded."""
        plan, lam = self._sampler.next_plan(b, self.policy.beta_parameter(alpha))
        self._record(alpha, lam)  # alpha_i itself, before halving
        return plan

    def _record(self, alpha: float | np.ndarray, lam: np.ndarray) -> None:
        """Hand a batch's alpha and lambdas to the policy (the arrays are fresh: not copied,
        unless a policy overrides ``record``)."""
        pol = self.policy
        if type(pol).record is AlphaPolicy.record:
            pol._keep(alpha, lam)
        else:
            pol.record(alpha, lam)

    def _split(self, layer: str, mode_free: bool = True) -> _Split | None:
        """The model cut at ``layer`` (cached per layer; see ``sequential_split``), or None. The
        cut must end at the module the mixer was made for, the one its hook would go on."""
        if layer == INPUT or layer in self.select or _global_hooks():
            return None
        key = (layer, mode_free)
        split = self._splits.get(key, key)
        if split is key or (split is not None and (split.root is not self.model or split.stale())):
            split = self._splits[key] = sequential_split(self.model, layer, mode_free, check_hooks=False)
        if split is None or split.prefix[-1] is not self._modules_by_name[layer] or split.hooked():
            return None
        return split

    def _split_forward(self, x: Tensor, y: Tensor, rows: Tensor | None, index: Tensor | None, layer: str, split: _Split) -> tuple[Tensor, Tensor]:
        """Fresh ConfMix through a cut model: the layers up to the mixing point run once, on the
        clean batch, with gradients; the confidence comes from the layers after it, run without
        gradients in eval mode on that clean output (the same numbers as an eval-mode forward of
        the whole model, as the layers before the cut do not depend on the mode); then the
        mixed output runs through the layers after the cut again, in the model's own mode."""
        pol = self.policy
        h = x
        for m in split.prefix:
            h = m(h)
        with eval_mode(*split.suffix), torch.no_grad():
            c = h.clone() if split.suffix_inplace else h  # an in-place layer must not write into h
            for m in split.suffix:
                c = m(c)
        conf = torch.softmax(c.float(), -1).amax(-1)
        alpha = pol.confmix_alpha(conf, c.shape[-1], check=False).double().numpy()
        plan = self._confmix_plan(x.shape[0], alpha).to(x.device)
        h = mix(h, plan)
        for m in split.suffix:
            h = m(h)
        return self._finish(y, rows, index, h, plan, layer)

    def _label_rows(self, y: Tensor, k: int) -> Tensor:
        """Float rows [B, k] of the (smoothed) one-hot targets of class indices y [B], read from
        a cached identity; raises ValueError for labels outside [0, k)."""
        if y.ndim != 1:
            raise ValueError(f"class-index targets must have shape [B]; got {tuple(y.shape)}")
        eps = self.label_smoothing
        on_cpu = y.is_cpu
        if not on_cpu:
            check_label_range(y, k)  # an index out of range would be a device-side assertion
        try:
            if k > _MAX_CACHED_CLASSES:  # no K x K identity: one-hot rows written directly
                rows = torch.zeros(y.shape[0], k, device=y.device).scatter_(1, y.long().unsqueeze(1), 1.0)
                return rows.mul_(1 - eps).add_(eps / k) if eps else rows
            key = (k, eps) if on_cpu else (k, eps, y.device)
            eye = self._eyes.get(key)
            if eye is None:
                eye = torch.eye(k, device=y.device)
                if eps:
                    eye = eye * (1 - eps) + eps / k
                self._eyes[key] = eye
            return torch.index_select(eye, 0, y if y.dtype == torch.long else y.long())
        except (IndexError, RuntimeError):  # on the CPU the lookup itself checks the range
            check_label_range(y, k)
            raise

    def _targets(self, y: Tensor, rows: Tensor | None, logits: Tensor, plan: MixPlan | None) -> Tensor:
        """The soft targets [B, K] for the logits: mixed by ``plan``, or as they are if it is None."""
        k = logits.shape[-1]
        if y.dtype.is_floating_point:  # soft rows: soft_targets checks their shape
            y = y.to(logits.device)
            return soft_targets(y, k, self.label_smoothing) if plan is None else mix_targets(y, plan, k, self.label_smoothing)
        if rows is None:
            rows = self._label_rows(y, k)
        elif k != self.num_classes:
            raise ValueError(f"the model returned {k} logits per row but num_classes={self.num_classes}")
        if rows.device != logits.device:
            rows = rows.to(logits.device)
        return rows if plan is None else mix(rows, plan)

    def _mixed_forward(self, x: Tensor, y: Tensor, rows: Tensor | None, index: Tensor | None, plan: MixPlan, layer: str) -> tuple[Tensor, Tensor]:
        if layer == INPUT:
            logits = self.model(mix(x, plan))
        elif self.direct_sequential and (split := self._split(layer, False)) is not None:
            h = x
            for m in split.prefix:
                h = m(h)
            h = mix(h, plan) if isinstance(h, Tensor) else _apply_selector(h, None, None, layer)  # (raises)
            for m in split.suffix:
                h = m(h)
            logits = h
        else:
            state = self._state
            state.plan, state.fired = plan, False
            handle = self._modules_by_name[layer].register_forward_hook(self._hooks[layer])
            try:
                logits = self.model(x)
            finally:
                handle.remove()
                state.plan = None
            if not state.fired:
                raise RuntimeError(f"layer {layer!r} did not run in the forward pass, so nothing was mixed")
        return self._finish(y, rows, index, logits, plan, layer)

    def _finish(self, y: Tensor, rows: Tensor | None, index: Tensor | None, logits: Any, plan: MixPlan, layer: str) -> tuple[Tensor, Tensor]:
        if not isinstance(logits, Tensor) or logits.ndim != 2:
            raise TypeError(f"the model must return logits [B, K]; got {getattr(logits, 'shape', type(logits))}")
        targets = self._targets(y, rows, logits, plan)
        if isinstance(self.policy, ConfMix) and self.policy.confidence == "cached" and index is not None:
            self.policy.observe(index, logits, grown=self._state.looked_up)
        self._state.looked_up = False
        self._state.last_plan = LastPlan(plan.perm, plan.lam, layer)
        return logits, targets
