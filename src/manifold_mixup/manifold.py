"""Manifold Mixup on any ``nn.Module``, at layers named by ``model.named_modules()``.

    mixer = mm.ManifoldMixup(model, ["layer2", "layer3"], alpha=2.0, generator=g)
    logits, targets = mixer(x, y)                    # training: mixes at one drawn layer
    loss = mm.soft_cross_entropy(logits, targets)

One path: a layer is drawn, the policy gives alpha, a plan (permutation, lambdas) is drawn, and
a forward hook on that layer, put on for the one call and taken off at its end, replaces the
layer's output h by ``lam*h + (1-lam)*h[perm]`` (``"input"`` mixes the input itself, no hook).
Outside a mixer call, and whenever the model is in ``eval()`` mode, the model is exactly the
model without the library. Where the mixed run is inside activation-checkpointed code, its
recomputation in backward is mixed with the same plan (``checkpointing``: a global module hook
that lives as long as such a graph, on no model). (On a compiled model the hooks stay on,
inactive outside the mixer's calls, until ``remove()`` or the mixer is collected: compiled code
does not see hooks added later.)
A call that fails leaves the mixer as it was: no draw is used up and nothing is recorded.
"""

from __future__ import annotations

import copy
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from .checks import check_choice, check_int, check_real
from .checkpointing import checkpoint_keys, expect
from .confidence import eval_mode, forward_confidence, suffix_cut
from .mixing import MixPlan, PlanStream, check_alpha, check_class_targets, check_label_range, mix, target_rows
from .policies import NEEDS, AlphaPolicy, as_policy

__all__ = ["ManifoldMixup", "LastPlan", "eval_mode", "unwrap", "INPUT", "MODEL_INPUT"]

INPUT = "input"  # the model's input (unless the model has a submodule of that name)
MODEL_INPUT = "<input>"  # the model's input, always
TASKS = ("classification", "multilabel", "regression")
_RESERVED = ("index", "plan", "layer")
VALIDATE = ("first", "always")
VALIDATE_CALLS = 20  # calls whose targets (and replayed plans) are checked by value under validate="first"
_FIRST_CALLS = 8  # a layer that has not run in the first this-many calls that drew it is an error

# How to find the tensor to mix in a module output that is a tuple, list or dict:
# an index or key, or a function ``(output, mix_fn) -> new_output``.
Selector = int | str | Callable[[Any, Callable[[Tensor], Tensor]], Any]


class LastPlan(NamedTuple):
    """What the last mixer call did: permutation [B], lambda [B] and the layer name."""

    perm: Tensor
    lam: Tensor
    layer: str


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside ``torch.compile`` (``OptimizedModule``), ``DistributedDataParallel``
    and ``DataParallel`` wrappers: the module whose ``named_modules()`` names the layers."""
    while True:
        inner = getattr(model, "_orig_mod", None)  # torch.compile
        if isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


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
            raise ValueError(f"select[{name!r}] = {selector!r} is not a key of the layer's output; keys: {list(output)}")
        new = copy.copy(output)  # keeps the mapping's own type (OrderedDict, ModelOutput, ...)
        new[selector] = fn(output[selector])
        return new
    if isinstance(output, (tuple, list)) and isinstance(selector, int):
        if not -len(output) <= selector < len(output):
            raise ValueError(f"select[{name!r}] = {selector} is out of range: the layer's output has {len(output)} parts")
        parts = list(output)
        parts[selector] = fn(parts[selector])
        if isinstance(output, list) or type(output) is tuple:
            return type(output)(parts)
        if hasattr(output, "_fields"):  # namedtuple
            return type(output)(*parts)
        return type(output)(parts)  # torch.return_types and other structseqs
    raise ValueError(f"select[{name!r}] = {selector!r} does not fit an output of type {type(output).__name__}")


class _MixHook:
    """The forward hook of one layer: mixes its output at the first run in a mixer call.

    ``plan`` is the call's plan, or None and ``make_plan(h)`` draws it from the clean output h
    (fresh confidences through ``confidence.suffix_cut``). ``keys`` are the checkpoint invocations
    around the mixed run (``checkpointing.checkpoint_keys``): where there are any, the mixer has
    autograd's recomputation of that run mixed the same way. A picklable object, not a closure."""

    def __init__(self, name: str, selector: Selector | None) -> None:
        self.name, self.selector = name, selector
        self.active = False  # set for the one mixer call that mixes at this layer
        self.plan: MixPlan | None = None
        self.make_plan: Callable[[Tensor], MixPlan] | None = None
        self.runs = 0  # runs of the layer in the current call
        self.keys: list = []  # checkpoint invocations around the mixed run
        self.warned = False

    def __getstate__(self) -> dict:
        return {**self.__dict__, "keys": []}  # (nothing of a call in progress travels)

    def _mix(self, h: Tensor) -> Tensor:
        if self.plan is None:
            self.plan = self.make_plan(h)
        self.mixed = True
        return mix(h, self.plan)

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        if not self.active:
            return None
        compiling = torch.compiler.is_compiling()  # (compiled code recomputes within its own graph)
        keys = [] if compiling else checkpoint_keys()
        self.runs += 1
        if self.runs > 1:
            if {id(k) for k in keys} & {id(k) for k in self.keys}:  # one recomputation re-runs both runs
                raise RuntimeError(
                    f"layer {self.name!r} runs more than once inside one activation-checkpointed piece of code: "
                    "autograd recomputes both runs in backward and the mixer cannot tell which one was mixed; "
                    "mix at a layer that runs once there, or checkpoint the runs separately")
            if not self.warned:
                self.warned = True
                warnings.warn(f"layer {self.name!r} runs more than once in one forward; it is mixed at its first call only",
                              stacklevel=2)
            return None
        self.keys, self.mixed = keys, False
        out = _apply_selector(output, self.selector, self._mix, self.name)
        if not self.mixed:
            raise ValueError(f"select[{self.name!r}] returned without calling mix: nothing was mixed, while the targets "
                             "would be; the function must pass the tensor to mix through mix(...)")
        return out


class _Again:
    """Mixes a recomputed output as the mixed run was mixed: the same selector and plan."""

    def __init__(self, name: str, selector: Selector | None, plan: MixPlan) -> None:
        self.name, self.selector, self.plan = name, selector, plan

    def __call__(self, output: Any) -> Any:
        return _apply_selector(output, self.selector, lambda h: mix(h, self.plan), self.name)


class ManifoldMixup:
    """Train ``model`` on mixed hidden states, mixing at one of ``layers`` per call.

    The mixer is a plain object: ``copy.deepcopy`` gives an independent mixer over a copy of the
    model, ``pickle`` round-trips it, and ``state_dict`` holds only its own state.

    Args:
        model: any ``nn.Module``, also one given to ``torch.compile``, one whose ``compile()`` was
            called, or one wrapped in ``DistributedDataParallel``: the mixer calls it as given and
            names layers as in the module inside the wrapper.
        layers: a name or names from ``model.named_modules()``, or ``"input"`` for input mixup
            (spelled ``"<input>"`` when the model has a submodule named ``input``).
        alpha: a number >= 0 (lambda ~ Beta(alpha, alpha); 0 = no mixing) or an ``AlphaPolicy``.
        per_sample: one lambda per row (True) or one per batch (False).
        generator: a CPU ``torch.Generator`` or an int seed; one draw seeds the ``PlanStream``
            from which every layer, permutation and lambda is drawn (one stream per rank when
            ``torch.distributed`` is initialised). None draws the seed from torch's global
            generator: give one to replay a run.
        layer_weights: probabilities of drawing each layer (default uniform).
        select: for layers whose output is a tuple, list or dict, ``{name: index | key | fn}``
            with ``fn(output, mix) -> new_output``.
        num_classes: K, to check class labels before the forward; otherwise taken from the logits.
        label_smoothing: eps in [0, 1) applied to classification targets before mixing.
        task: ``"classification"`` (class indices [B] or soft rows [B, K] summing to 1),
            ``"multilabel"`` (rows [B, K] in [0, 1]) or ``"regression"`` (float targets
            [B, ...]); all mixed as ``lam*y + (1-lam)*y[perm]``.
        logits: a function from the model's output to the prediction tensor; by default a
            tensor is taken as it is and an object with ``.logits`` (Hugging Face) gives that.
        input_key: for mapping batches (``model(**batch)``), the key of the tensor that
            ``"input"`` mixes.
        reuse_prefix: let policies that need fresh confidences take them from the clean hidden
            state where that gives the same numbers (``manifold_mixup.confidence.suffix_cut``).
        validate: ``"first"`` checks the values of targets (label range, soft-row sums) on the
            first 20 calls only, so that later steps on a GPU make no device-to-host
            synchronisation; ``"always"`` checks them on every call. Shapes, dtypes and devices
            are checked on every call.

    Attributes:
        last_plan: the ``LastPlan`` of the last mixed call (None after an eval-mode call or a
            call on which the model skipped the drawn layer).
        skipped: ``{layer: calls}`` on which the model did not run the drawn layer (layerdrop,
            stochastic depth): those calls were ERM steps, with unmixed targets.
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
        *,
        task: str = "classification",
        logits: Callable[[Any], Tensor] | None = None,
        input_key: str | None = None,
        reuse_prefix: bool = True,
        validate: str = "first",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module; got {type(model).__name__}")
        base = unwrap(model)
        if any(p.is_meta for p in base.parameters()):
            raise ValueError("the model has parameters on the meta device; materialise it first "
                             "(model.to_empty(device=...) and load its weights)")
        modules = dict(base.named_modules())
        outer = {id(m): n for n, m in model.named_modules()} if base is not model else {}
        self.layers = [layers] if isinstance(layers, str) else list(layers)
        if not all(isinstance(n, str) for n in self.layers):
            raise TypeError(f"layers must be a name or a list of names (strings); got {layers!r}")
        valid = [INPUT if INPUT not in modules else MODEL_INPUT] + [n for n in modules if n]
        if not self.layers:
            raise ValueError(f"layers must name at least one layer; valid names: {valid}")
        wrapped = {n: nm for nm, m in modules.items() if (n := outer.get(id(m)))}  # e.g. '_orig_mod.fc1' -> 'fc1'
        self.layers = [wrapped.get(n, n) if n not in modules else n for n in self.layers]
        for name in self.layers:
            if (name not in modules and name not in (INPUT, MODEL_INPUT)) or name == "":
                raise ValueError(f"unknown layer {name!r}; valid names: {valid}")
        if INPUT in modules and INPUT in self.layers:
            warnings.warn("the model has a submodule named 'input': the layer 'input' is that submodule; "
                          "write '<input>' to mix the model's input", stacklevel=2)
        if len(set(self.layers)) != len(self.layers):
            raise ValueError(f"layers must be distinct; got {self.layers}")
        if layer_weights is None:
            weights = np.ones(len(self.layers))
        else:
            try:
                weights = np.asarray(list(layer_weights), dtype=np.float64)
            except (TypeError, ValueError):
                raise ValueError(f"layer_weights must be {len(self.layers)} numbers; got {layer_weights!r}") from None
            if weights.shape != (len(self.layers),) or not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
                raise ValueError(f"layer_weights must be {len(self.layers)} finite non-negative numbers with a positive "
                                 f"sum; got {list(layer_weights)}")
        self._cum_weights = np.cumsum(weights / weights.sum()).tolist()
        self._cum_weights[-1] = 1.0  # (no draw past the end through rounding)
        self.policy = as_policy(alpha)
        if not isinstance(per_sample, bool):
            raise TypeError(f"per_sample must be True or False; got {per_sample!r}")
        if num_classes is not None:
            check_int("num_classes", num_classes, 2)
        check_choice("task", task, TASKS)
        check_real("label_smoothing", label_smoothing, 0, 1, high_open=True)
        self.policy.check(num_classes=num_classes, per_sample=per_sample, task=task)
        _check_needs(self.policy)
        check_choice("validate", validate, VALIDATE)
        if label_smoothing and task != "classification":
            raise ValueError(f"label_smoothing applies to classification targets only; task={task!r}")
        if logits is not None and not callable(logits):
            raise TypeError(f"logits must be a function from the model's output to the logits; got {type(logits).__name__}")
        self.select = dict(select or {})
        for name, sel in self.select.items():
            if name in (INPUT, MODEL_INPUT) and name not in modules:
                raise ValueError(f"select cannot name {name!r}: the input is mixed as a whole tensor")
            if name not in self.layers:
                raise ValueError(f"select names {name!r}, which is not one of the mixed layers {self.layers}")
            if not (callable(sel) or isinstance(sel, (int, str))) or isinstance(sel, bool):
                raise TypeError(f"select[{name!r}] must be an index, a key or a function; got {type(sel).__name__}")
        self.model = model
        self.per_sample = per_sample
        self.num_classes = num_classes
        self.label_smoothing = float(label_smoothing)
        self.task = task
        self.logits_fn = logits
        self.input_key = input_key
        self.reuse_prefix = bool(reuse_prefix)
        self.validate = validate
        self._calls = 0  # successful calls, for validate="first"
        self.skipped = {n: 0 for n in self.layers}
        self._ran: set[str] = set()  # layers that have run in a mixer call
        self._never_ran: dict[str, int] = {}  # calls in which a layer that never ran was drawn
        self._input_names = (MODEL_INPUT,) if INPUT in modules else (INPUT, MODEL_INPUT)
        rank = _ddp_rank(model)
        self._stream = PlanStream(generator, () if rank is None else (rank,))
        self._hooks = {n: _MixHook(n, self.select.get(n)) for n in self.layers if n not in self._input_names}
        # Compiled code does not see hooks added after it was traced (by default dynamo does not
        # guard on module hooks, and reuses graphs across modules of one structure): on a compiled
        # model the hooks stay on for the mixer's life, inactive outside its calls (graphs: one
        # without mixing, one per layer); dynamo is told to guard on module hooks, so that another
        # compiled instance of the class (a teacher, an EMA copy) gets graphs of its own, and
        # graphs traced before the mixer existed are dropped once (torch.compiler.reset()).
        self._compiled = _is_compiled(model)
        self._handles = []
        if self._compiled:
            self._handles = [base.get_submodule(n).register_forward_hook(h) for n, h in self._hooks.items()]
            weakref.finalize(self, _remove_handles, list(self._handles))  # also when the mixer is dropped
            _guard_on_hooks()
        self.last_plan: LastPlan | None = None
        self._pending: tuple | None = None  # (alpha, lambdas) of the call in progress
        self._removed = False

    # -- life cycle -----------------------------------------------------------------------
    def remove(self) -> None:
        """Retire the mixer: later calls are refused. (Hooks exist only during a mixer call, except
        on a compiled model, where they are taken off now.)"""
        _remove_handles(self._handles)
        self._handles = []
        self._removed = True

    def __enter__(self) -> "ManifoldMixup":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def set_epoch(self, epoch: float) -> None:
        """Forward the training clock (epochs, fractional allowed) to the alpha policy."""
        self.policy.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        """The mixer's own state (not the model's): the policy's state and the random stream's."""
        return {"policy": self.policy.state_dict(), "stream": copy.deepcopy(self._stream.state)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a ``state_dict()``: the policy's state and the random stream's."""
        if set(state) != {"policy", "stream"}:
            raise ValueError(f"a mixer state has the keys 'policy' and 'stream'; got {sorted(state)}")
        self.policy.load_state_dict(state["policy"])
        self._stream.state = copy.deepcopy(state["stream"])

    def __repr__(self) -> str:
        return (f"ManifoldMixup(layers={self.layers}, policy={self.policy!r}, per_sample={self.per_sample}, "
                f"task={self.task!r})")

    # -- the mixed forward ----------------------------------------------------------------
    def __call__(self, x: Any, y: Tensor, *args: Any, index: Tensor | None = None, plan: MixPlan | None = None,
                 layer: str | None = None, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """Mixed forward: ``(logits, targets)``.

        In eval mode nothing is mixed and the targets are the (smoothed) unmixed ones.

        Args:
            x: the input batch [B, ...], or a mapping of model keyword arguments (``model(**x)``).
            y: targets (see ``task``).
            *args: passed to the model unchanged, after ``x``.
            index: LongTensor [B] of sample indices, for policies that need them (cached ConfMix).
            plan: replay this ``MixPlan`` (with ``layer``; the policy is not consulted).
            layer: the layer at which ``plan`` is replayed.
            **kwargs: passed to the model unchanged (``attention_mask=...``).

        Returns:
            The logits, and the targets: soft rows [B, K] for classification, the mixed targets
            otherwise.
        """
        if self._removed:
            raise RuntimeError("this mixer was removed (mixer.remove() or the end of its with-block); make a new one")
        b = self._batch_size(x)
        if not isinstance(y, Tensor):
            raise TypeError(f"targets y must be a tensor; got {type(y).__name__}")
        if y.ndim == 0 or y.shape[0] != b:
            raise ValueError(f"targets have shape {tuple(y.shape)} but the input has a batch of {b}")
        values = self.validate == "always" or self._calls < VALIDATE_CALLS  # checks that read tensor values
        self._check_targets(y, values)
        if index is not None and (not isinstance(index, Tensor) or index.ndim != 1 or index.shape[0] != b
                                  or index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool):
            raise ValueError(f"index must be an integer tensor [{b}] of sample indices; got "
                             f"{getattr(index, 'dtype', type(index).__name__)} of shape {tuple(getattr(index, 'shape', ()))}")
        if (plan is None) != (layer is None):
            raise ValueError("plan and layer are given together (to replay a run) or not at all")
        if plan is not None:
            if layer not in self.layers:
                raise ValueError(f"layer {layer!r} is not among this mixer's layers {self.layers}")
            if not isinstance(plan, MixPlan):
                raise TypeError(f"plan must be a MixPlan; got {type(plan).__name__}")
            if plan.batch_size != b:
                raise ValueError(f"the plan is for a batch of {plan.batch_size} but the input has {b} rows")
            if values:
                plan.validate()
        if not unwrap(self.model).training:
            self.last_plan = None
            logits = self._logits(self._call(x, args, kwargs))
            targets = self._targets(y, logits, None, values)
            self._calls += 1
            return logits, targets
        if b < 2:
            raise ValueError(f"mixing needs a batch of at least 2 rows; got {'an empty batch' if b == 0 else 'a batch of 1'}")
        needs = _check_needs(self.policy) if plan is None else frozenset()
        if "index" in needs and index is None:
            raise ValueError(f"{type(self.policy).__name__} needs the batch's sample indices: mixer(x, y, index=idx)")
        stream = self._stream.state  # a failed call gives its draws back
        self._pending = None
        try:
            out = self._mixed_call(x, y, args, kwargs, b, index, plan, layer, needs, values)
            self._calls += 1
            return out
        except BaseException:
            self._stream.state = stream
            raise
        finally:
            self._pending = None

    def _mixed_call(self, x: Any, y: Tensor, args: tuple, kwargs: dict, b: int, index: Tensor | None,
                    plan: MixPlan | None, layer: str | None, needs: frozenset[str],
                    values: bool) -> tuple[Tensor, Tensor]:
        make_plan = None
        device = self._device(x)
        if plan is None:
            layer = self.layers[self._stream.choice(self._cum_weights)]
            if "confidence" not in needs:
                plan = self._draw(b, index, None)
            else:
                cut = None
                if self.reuse_prefix and layer not in self._input_names and self.model is unwrap(self.model):
                    cut = suffix_cut(self.model, layer)
                if cut is None:
                    conf = forward_confidence(unwrap(self.model), lambda: self._call(x, args, kwargs, base=True), self._logits)
                    plan = self._draw(b, index, conf)
                else:
                    make_plan = lambda h: _to_device(self._draw(b, index, cut.confidence(h, self._logits)), h.device)  # noqa: E731
        if plan is not None:
            plan = _to_device(plan, device)
        if layer in self._input_names:
            out = self._call(self._mix_input(x, plan), args, kwargs)
            ran = True
        else:
            out, plan, ran = self._hooked_call(layer, x, args, kwargs, plan, make_plan)
        logits = self._logits(out)
        if not ran:  # the model skipped the layer on this call
            targets = self._targets(y, logits, None, values)
            self.skipped[layer] += 1
            self.last_plan = None
        else:
            targets = self._targets(y, logits, plan, values)
            if self._pending is not None:  # the call succeeded: the policy records the batch
                self.policy.record(*self._pending)
            self.last_plan = LastPlan(plan.perm, plan.lam, layer)
            self._ran.add(layer)
        self.policy.observe(index, logits.detach(), y)
        return logits, targets

    def _hooked_call(self, layer: str, x: Any, args: tuple, kwargs: dict, plan: MixPlan | None,
                     make_plan: Callable[[Tensor], MixPlan] | None) -> tuple[Any, MixPlan | None, bool]:
        """The forward with the layer's hook active: (output, plan, whether the layer ran). Where the
        mixed run is inside activation-checkpointed code, its recomputation in backward is recorded
        to be mixed with the same plan (``checkpointing.expect``)."""
        hook = self._hooks[layer]
        hook.plan, hook.make_plan, hook.runs, hook.keys, hook.active = plan, make_plan, 0, [], True
        handle = None if self._compiled else unwrap(self.model).get_submodule(layer).register_forward_hook(hook)
        try:
            out = self._call(x, args, kwargs)
        finally:
            if handle is not None:
                handle.remove()
            plan, keys = hook.plan, hook.keys
            hook.plan, hook.make_plan, hook.keys, hook.active = None, None, [], False
        ran = hook.runs > 0
        if not ran and layer not in self._ran:
            self._never_ran[layer] = self._never_ran.get(layer, 0) + 1
            if self._never_ran[layer] >= _FIRST_CALLS:
                why = (" (compiled code traced without the mixer's hooks? see the README on compiled models)"
                       if self._compiled else "")
                raise RuntimeError(f"layer {layer!r} did not run in the forward pass of any of the {_FIRST_CALLS} mixer "
                                   f"calls that drew it, so nothing was mixed{why}; name a layer that the model runs")
        if ran and keys and torch.is_grad_enabled():
            expect(unwrap(self.model).get_submodule(layer), layer, _Again(layer, hook.selector, plan), keys)
        return out, plan, ran

    def _draw(self, b: int, index: Tensor | None, confidence: tuple[Tensor, int] | None) -> MixPlan:
        """Ask the policy for the batch's alpha, draw the plan, record both."""
        pol = self.policy
        conf, k = confidence if confidence is not None else (None, self.num_classes)
        alpha = pol.alpha(pol.epoch, b, confidence=conf, index=index, num_classes=k)
        name = f"{type(pol).__name__}.alpha"
        if isinstance(alpha, (Tensor, np.ndarray)) and alpha.ndim > 0:
            if alpha.shape != (b,) or not self.per_sample:
                raise ValueError(f"{name} returned per-row values of shape {tuple(alpha.shape)}; expected [{b}] "
                                 "(and per_sample=True)")
            alpha = (alpha.detach().to("cpu", torch.float64).numpy() if isinstance(alpha, Tensor)
                     else np.array(alpha, np.float64))
        elif isinstance(alpha, (Tensor, np.ndarray)):
            alpha = float(alpha)
        check_alpha(alpha, name)
        beta = pol.beta_parameter(alpha)
        check_alpha(beta, f"{type(pol).__name__}.beta_parameter")
        plan = self._stream.plan(b, beta, self.per_sample)
        self._pending = (alpha, plan.lam.numpy())  # recorded once the call has succeeded
        return plan

    # -- batches, outputs and targets -----------------------------------------------------
    def _call(self, x: Any, args: tuple, kwargs: dict, base: bool = False) -> Any:
        model = unwrap(self.model) if base else self.model
        return model(*args, **x, **kwargs) if isinstance(x, Mapping) else model(x, *args, **kwargs)

    def _batch_size(self, x: Any) -> int:
        if isinstance(x, Tensor):
            if x.ndim == 0:
                raise ValueError("the input must be batch-first [B, ...]; got a 0-d tensor")
            return int(x.shape[0])
        if isinstance(x, Mapping):
            if self.input_key is not None:
                if self.input_key not in x:
                    raise ValueError(f"input_key={self.input_key!r} is not a key of the batch; keys: {list(x)}")
                return self._batch_size(x[self.input_key])
            for v in x.values():
                if isinstance(v, Tensor) and v.ndim:
                    return int(v.shape[0])
            raise ValueError(f"a mapping batch must hold a batch-first tensor; keys: {list(x)}")
        raise TypeError(f"the input must be a tensor [B, ...] or a mapping of model arguments; got {type(x).__name__}")

    def _device(self, x: Any) -> torch.device:
        if isinstance(x, Mapping):
            x = x[self.input_key] if self.input_key is not None else next(v for v in x.values() if isinstance(v, Tensor))
        return x.device

    def _mix_input(self, x: Any, plan: MixPlan) -> Any:
        if isinstance(x, Mapping):
            if self.input_key is None:
                raise ValueError(f"mixing a mapping batch at 'input' needs input_key=<the key to mix>; keys: {list(x)}")
            return {**x, self.input_key: self._mix_input(x[self.input_key], plan)}
        if not (x.dtype.is_floating_point or x.dtype.is_complex):
            emb = [n for n, m in unwrap(self.model).named_modules() if isinstance(m, nn.Embedding)]
            where = f"mix at or after an embedding module instead: {emb}" if emb else "mix at a layer after the embedding"
            raise ValueError(f"the input is an integer tensor ({x.dtype}, e.g. token ids) and cannot be mixed; {where}")
        return mix(x, plan)

    def _logits(self, out: Any) -> Tensor:
        if self.logits_fn is not None:
            got = self.logits_fn(out)
            if not isinstance(got, Tensor):
                raise TypeError(f"logits= returned a {type(got).__name__}, not a tensor")
            return got
        if isinstance(out, Tensor):
            return out
        got = getattr(out, "logits", None)
        if isinstance(got, Tensor):
            return got
        raise TypeError(f"the model returned a {type(out).__name__}, which is not a tensor and has no .logits: give the "
                        "mixer logits=<a function from the model's output to the logits tensor>")

    def _check_targets(self, y: Tensor, values: bool) -> None:
        """Check the targets before any work (labels against num_classes where it is known); with
        ``values`` False only what needs no read of tensor values (shapes, dtypes)."""
        if self.task == "classification":
            if y.dtype == torch.bool or y.dtype.is_complex:
                raise ValueError(f"classification targets are class indices [B] or soft rows [B, K]; got {y.dtype}")
            check_class_targets(y, self.num_classes, values=values)
        elif self.task == "multilabel":
            if y.ndim != 2 or y.dtype.is_complex:
                raise ValueError(f"multilabel targets must be rows [B, K] in [0, 1]; got {y.dtype} of shape {tuple(y.shape)}")
            if values:
                bad = ~((y >= 0) & (y <= 1))
                if bad.any():
                    raise ValueError(f"multilabel targets must lie in [0, 1]; got {y[bad][0].item()}")
        elif not y.dtype.is_floating_point:
            raise ValueError(f"regression targets must be a float tensor [B, ...]; got {y.dtype}")

    def _targets(self, y: Tensor, logits: Tensor, plan: MixPlan | None, values: bool = True) -> Tensor:
        """The targets for the logits: mixed by ``plan``, or as they are if it is None."""
        if self.task == "classification":
            if logits.ndim != 2:
                raise ValueError(f"classification logits must have shape [B, K]; got {tuple(logits.shape)} "
                                 "(give logits=<function> to pick them from the model's output)")
            k = logits.shape[-1]
            if self.num_classes is not None and k != self.num_classes:
                raise ValueError(f"the model returned {k} logits per row but num_classes={self.num_classes}")
            if y.dtype.is_floating_point and y.shape[1] != k:
                raise ValueError(f"soft targets have {y.shape[1]} columns but the model returned {k} logits per row")
            if not y.dtype.is_floating_point and self.num_classes is None and values:
                check_label_range(y, k)  # (checked before the forward where num_classes was given)
            t = target_rows(y, k, self.label_smoothing).to(logits.device)
        else:
            t = (y if y.dtype.is_floating_point else y.float()).to(logits.device)
        return t if plan is None else mix(t, plan)


def _to_device(plan: MixPlan, device: torch.device) -> MixPlan:
    """The plan on ``device``; to a GPU by a non-blocking copy from pinned memory (no host sync)."""
    if plan.perm.device == device:
        return plan
    if device.type == "cuda" and plan.perm.device.type == "cpu":
        return MixPlan(plan.perm.pin_memory().to(device, non_blocking=True),
                       plan.lam.pin_memory().to(device, non_blocking=True))
    return plan.to(device)


def _guard_on_hooks() -> None:
    """Make torch.compile guard on module hooks (process-wide), dropping graphs traced without them."""
    import torch._dynamo

    if torch._dynamo.config.skip_nnmodule_hook_guards:  # graphs traced so far may ignore the new hooks
        torch._dynamo.config.skip_nnmodule_hook_guards = False
        torch.compiler.reset()


def _remove_handles(handles: list) -> None:
    for handle in handles:
        handle.remove()


def _check_needs(policy: AlphaPolicy) -> frozenset[str]:
    """The policy's ``needs``, or a clear error if it is not a set of known needs."""
    needs = policy.needs
    if not isinstance(needs, (set, frozenset)) or not needs <= NEEDS:
        raise ValueError(f"{type(policy).__name__}.needs must be a set, a subset of {sorted(NEEDS)}; got {needs!r}")
    return frozenset(needs)


def _is_compiled(model: nn.Module) -> bool:
    """``torch.compile(model)`` somewhere in the wrappers, or ``compile()`` called on a module."""
    m = model
    while True:
        if isinstance(getattr(m, "_orig_mod", None), nn.Module):
            return True
        if not isinstance(m, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            return any(getattr(sub, "_compiled_call_impl", None) is not None for sub in m.modules())
        m = m.module


def _ddp_rank(model: nn.Module) -> int | None:
    """The process rank when torch.distributed is initialised (DDP, or a framework such as Lightning
    that wraps the model itself), else None."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else None
