"""Vectorised trainer: M independent ReLU MLPs trained at once as batched matrix products.

    specs = [MemberSpec(seed=7, mix_layer=None, alpha=0.5),   # ERM baseline
             MemberSpec(seed=7, mix_layer=2, alpha=0.5)]      # manifold mixup after relu2
    params = train_ensemble(x, y, num_classes=[3, 3], specs=specs, config=EnsembleConfig())
    labels = predict_ensemble(params, grid)                   # [M, G]
    model = to_sequential(params, 1)                          # == mm.models.mlp(3) with trained weights

Every member is the paper's MLP ``d-hidden...-K`` (``manifold_mixup.paper.models.mlp``) with its own
data set, its own initial weights, its own data order, permutations and lambdas, and its own
optimiser state; members never interact (the loss is summed over members, so each gets exactly
its own gradient). What one member sees is fully determined by its ``MemberSpec``:

- **Initial weights**: ``mlp_init(sizes, torch.Generator().manual_seed(seed))``, i.e. exactly the
  weights of ``mm.models.mlp(K, hidden, d, generator=torch.Generator().manual_seed(seed))``.
- **Per-epoch randomness**: ``epoch_plan(seed, epoch, n, batch_size, alpha)`` draws the data
  order, the per-batch permutations and the per-sample lambdas from numpy's PCG64 seeded by
  ``SeedSequence(entropy=seed, spawn_key=(PLAN_STREAM, epoch))`` -- a stream independent of the
  torch (Philox/MT) stream used for the initial weights. The trainer uses that very function, so a
  test can replay a member through the reference path (``ManifoldMixup(..., plan=MixPlan(perm,
  lam), layer=mlp_layer(k))``). Members of one call that share a seed (and K, resp. alpha) share
  one draw of their initial weights (resp. plans): the same numbers, drawn once.

Mixing (``mix_layer`` = k): k = 0 mixes the input, k = j >= 1 mixes the output of the j-th
hidden ReLU, ``None`` is ERM (no mixing; lambda = 1). Row i of a mixed batch is
``lam[i]*h[i] + (1-lam[i])*h[perm[i]]``, targets mix the same way, and the loss is the batch mean
of soft cross-entropy against the mixed targets (``soft_cross_entropy(logits, mix_targets(...))``).
Implementation: the plan of a batch is the B x B matrix ``Mix = diag(lam) + diag(1-lam) P``
(P the permutation matrix), so mixing is one ``bmm`` forward (``Mix @ h``) and one backward
(``Mix^T @ dh``). Members are sorted by mixing layer so that, within a chunk, the members that mix at
layer j are one contiguous slice of the stacked batch.

Different numbers of classes K in one call: each chunk is padded to its largest K. Padded
output rows start at 0 and their logits get ``-1e30`` before the softmax, so their probability,
gradient and Adam/SGD update are exactly 0: the padded member is the unpadded one. Returned
``EnsembleParams`` are padded to the largest K overall; ``predict_ensemble`` masks padded classes.

Data: every member has n samples and n must be a multiple of batch_size (the paper: n = 1000,
batch 50); a last partial batch is not supported and raises ValueError.

Optimisers: ``"adam"`` is ``torch.optim.Adam(lr, betas, eps)``; ``"sgd"`` is
``torch.optim.SGD(lr, momentum=SGD_MOMENTUM)`` (0.9, no dampening, no Nesterov), the same SGD as
``manifold_mixup.train.make_optimizer``: one definition of SGD in the package.

Evaluation during training: ``EnsembleConfig(eval_epochs=(10, 20, ...))`` hands the members'
parameters after each listed epoch to ``evaluate`` (or keeps a copy of them) while training goes
on. Evaluation reads copies and draws nothing, so training is exactly what it is without it:
the parameters after epoch e equal, bit for bit, those of a run with ``epochs=e``.

Speed: forward and backward are written by hand (``baddbmm``/``bmm`` over the member axis, ReLU
masks via ``threshold_backward``, a fused softmax cross-entropy gradient ``(softmax - T) / B``),
into preallocated buffers; the optimiser is one ``torch.optim.Adam(fused=True)`` (or SGD) over the
stacked tensors, which is elementwise and thus equal to M separate optimisers.
"""

from __future__ import annotations

import math
import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from ..checks import (OPTIMIZERS, SGD_MOMENTUM, as_generator, check_choice, check_int, check_real, check_seed,
                      check_sizes)
from ..mixing import check_alpha
from ..policies import AlphaPolicy, as_policy
from .models import mlp, mlp_init

__all__ = [
    "MemberSpec",
    "EnsembleConfig",
    "EnsembleParams",
    "PLAN_STREAM",
    "epoch_plan",
    "train_ensemble",
    "predict_ensemble",
    "to_sequential",
    "chunk_size_for",
]

#: spawn-key tag that separates the plan stream (numpy) from anything else derived from a seed.
PLAN_STREAM = 0x6D6978  # "mix"

#: added to padded logits: exp() of it is exactly 0, and unlike -inf it keeps 0 * log p = 0.
_PAD_LOGIT = -1e30

#: members per chunk when the memory budget allows more. On the CPU small chunks keep a chunk's
#: weights and optimiser state cache-resident; on a GPU larger chunks fill the device (both chosen
#: by measurement, see BENCHMARKS.md).
#: CPU runs with worker processes need the usual ``if __name__ == "__main__":`` guard in scripts
#: (processes are started with "spawn").
DEFAULT_CHUNK = {"cpu": 4, "cuda": 256}

#: bytes of initial weights and plans that members sharing a seed keep for each other (see ``_Draws``).
_DRAWS_BUDGET = 256 << 20




@dataclass(frozen=True)
class MemberSpec:
    """One member: ``seed`` (int >= 0) for init and plans; ``mix_layer`` None (ERM), 0 (input) or
    j in 1..depth (after the j-th hidden ReLU); ``alpha``: a number >= 0 or an ``AlphaPolicy``
    that depends on the epoch only (``Constant``, ``RampUp``, ``RampDown``: ``policies.schedule``),
    lambda ~ Beta(alpha, alpha) per sample, alpha read at ``epoch + b / batches`` for batch b, as
    ``train.train_classifier`` reads it for ``ManifoldMixup``."""

    seed: int
    mix_layer: int | None = None
    alpha: float | AlphaPolicy = 0.5


@dataclass(frozen=True)
class EnsembleConfig:
    """Training settings shared by all members.

    optimizer: 'adam' (betas, eps as torch.optim.Adam) or 'sgd' (torch.optim.SGD with momentum
    ``SGD_MOMENTUM`` = 0.9, as ``train.make_optimizer``).
    eval_epochs: epochs (distinct integers in 1..epochs) after which the members are evaluated
    while training goes on (see ``train_ensemble``'s ``evaluate``); () evaluates nothing.
    memory_budget: bytes one chunk of members may use (parameters, gradients, optimiser state,
    the epoch's data and activations); members are trained chunk by chunk. The default (1 GiB)
    also serves GPUs (larger chunks measured no faster there; BENCHMARKS.md).
    chunk_models: members per chunk (None: the budget's maximum, capped at DEFAULT_CHUNK[device type]).
    dtype: torch.float32 (default) or torch.float64.
    workers: CPU only: worker processes ("spawn") that train chunks in parallel, each with
    ``threads_per_worker`` threads (default cpu_count // workers). None or 1: in-process (on a
    2-core CPU workers measured no faster; BENCHMARKS.md). Results are the same up to float
    rounding whatever the workers.
    """

    epochs: int = 20
    batch_size: int = 50
    lr: float = 1e-3
    optimizer: str = "adam"
    hidden: tuple[int, ...] = (512, 512, 512)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    eval_epochs: tuple[int, ...] = ()
    memory_budget: int = 1 << 30
    chunk_models: int | None = None
    dtype: torch.dtype = torch.float32
    workers: int | None = None
    threads_per_worker: int | None = None


@dataclass
class EnsembleParams:
    """Trained parameters of M members, in ``nn.Linear`` layout, stacked over members.

    weights[l]: Tensor [M, out_l, in_l]; biases[l]: Tensor [M, out_l]. The last layer has
    out = max K; rows >= num_classes[i] of member i are padding (zero).
    num_classes: list of M ints. losses: Tensor [M, epochs], each member's mean training loss per epoch.
    evaluations: {epoch: Tensor [M, ...]}, what ``train_ensemble``'s ``evaluate`` returned after each
    of ``config.eval_epochs``; snapshots: {epoch: EnsembleParams} the parameters after each of them
    (kept when no ``evaluate`` is given).
    """

    weights: list[Tensor]
    biases: list[Tensor]
    num_classes: list[int]
    hidden: tuple[int, ...]
    losses: Tensor = field(default_factory=lambda: torch.empty(0))
    evaluations: dict[int, Tensor] = field(default_factory=dict)
    snapshots: dict[int, "EnsembleParams"] = field(default_factory=dict)

    @property
    def num_models(self) -> int:
        return int(self.weights[0].shape[0])

    @property
    def in_features(self) -> int:
        return int(self.weights[0].shape[2])


# -- randomness ------------------------------------------------------------------------------

def batch_alphas(alpha: float | AlphaPolicy, epoch: int, batches: int) -> list[float]:
    """The alpha of each of an epoch's ``batches``: a number throughout, or what the policy gives
    at ``epoch + b / batches`` (the clock ``train_classifier`` sets for the mixer before batch b)."""
    if not isinstance(alpha, AlphaPolicy):
        return [float(alpha)] * batches
    out = []
    for b in range(batches):
        a = alpha.alpha_at(epoch + b / batches)
        check_alpha(a, f"{type(alpha).__name__}'s alpha at epoch {epoch + b / batches:g}")
        out.append(float(a))
    return out


def _plan_key(alpha: float | AlphaPolicy) -> tuple:
    """Members whose alphas have the same key draw the same plans: the policy's type and every
    attribute but its clock and records (a number is its ``Constant``)."""
    p = as_policy(alpha)
    state = sorted((k, repr(v)) for k, v in vars(p).items() if k not in ("epoch", "_sums"))
    return (type(p).__module__, type(p).__qualname__, tuple(state))


def epoch_plan(seed: int, epoch: int, n: int, batch_size: int,
               alpha: float | AlphaPolicy) -> tuple[Tensor, Tensor, Tensor]:
    """One member's randomness for one epoch: ``(order [n], perm [n_batches, B], lam [n_batches, B])``.

    order: LongTensor, the data order (batch b is ``order[b*B:(b+1)*B]``); perm: LongTensor, each
    row a permutation of 0..B-1 (the mixing partner of row i is row perm[b, i] of the batch);
    lam: float64 Tensor, lambda ~ Beta(p, p) per sample, p the policy's ``beta_parameter`` of the
    batch's alpha from :func:`batch_alphas` (p = alpha for a number and the built-in schedules), as
    ``ManifoldMixup`` draws it; all 1 in a batch whose p is 0 (nothing is drawn for it).
    Drawn, in this order, from ``np.random.default_rng(SeedSequence(seed, spawn_key=(PLAN_STREAM, epoch)))``.
    The same draws are made whatever the mixing layer, so methods sharing a seed share data order.
    """
    if n % batch_size:
        raise ValueError(f"n = {n} must be a multiple of batch_size = {batch_size}")
    nb = n // batch_size
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(PLAN_STREAM, int(epoch))))
    order = rng.permutation(n)
    perm = rng.permuted(np.broadcast_to(np.arange(batch_size), (nb, batch_size)), axis=1)
    alphas = batch_alphas(alpha, epoch, nb)
    if isinstance(alpha, AlphaPolicy):  # the Beta parameter drawn from (half ConfMix-like policies halve it)
        alphas = [float(alpha.beta_parameter(a)) for a in alphas]
    if len(set(alphas)) == 1:  # one alpha for the epoch: one draw of all its lambdas
        a = alphas[0]
        lam = rng.beta(a, a, size=(nb, batch_size)) if a > 0 else np.ones((nb, batch_size))
    else:  # batch by batch, in order
        lam = np.ones((nb, batch_size))
        for b, a in enumerate(alphas):
            if a > 0:
                lam[b] = rng.beta(a, a, size=batch_size)
    return torch.from_numpy(order), torch.from_numpy(perm), torch.from_numpy(lam)


class _Draws:
    """The initial weights and epoch plans of the members of one training call, each drawn once.

    Both are functions of a member's seed (and K, resp. alpha) alone, so members that share them
    (the methods of one problem in the depth study) can share one draw: same numbers, less time.
    A draw is kept until the last member that needs it has taken it, within ``budget`` bytes;
    beyond it a draw is made again.
    """

    def __init__(self, specs: Sequence[MemberSpec], ks: Sequence[int], budget: int | None = None) -> None:
        self.total = Counter()
        for s, k in zip(specs, ks):
            self.total["init", int(s.seed), int(k)] += 1
            self.total["plan", int(s.seed), _plan_key(s.alpha)] += 1
        self.taken: Counter = Counter()
        self.kept: dict = {}
        self.budget, self.bytes = _DRAWS_BUDGET if budget is None else budget, 0

    def _take(self, key: tuple, group: tuple, draw: Callable[[], tuple]):
        self.taken[key] += 1
        left = self.total[group] - self.taken[key]
        value = self.kept.get(key)
        if value is None:
            value = draw()
            size = sum(t.nbytes for t in _flat(value))
            if left > 0 and self.bytes + size <= self.budget:
                self.kept[key] = value
                self.bytes += size
        elif left <= 0:
            del self.kept[key]
            self.bytes -= sum(t.nbytes for t in _flat(value))
        if left <= 0:
            del self.taken[key]
        return value

    def init(self, sizes: list[int], seed: int) -> list[tuple[Tensor, Tensor]]:
        """``mlp_init(sizes, torch.Generator().manual_seed(seed))`` (read-only: shared between members)."""
        group = ("init", int(seed), int(sizes[-1]))
        return self._take((*group, tuple(sizes)), group,
                          lambda: mlp_init(sizes, as_generator(int(seed))))

    def plan(self, seed: int, epoch: int, n: int, batch_size: int,
             alpha: float | AlphaPolicy) -> tuple[Tensor, Tensor, Tensor]:
        """``epoch_plan(seed, epoch, n, batch_size, alpha)`` (read-only: shared between members)."""
        group = ("plan", int(seed), _plan_key(alpha))
        return self._take((*group, int(epoch), int(n), int(batch_size)), group,
                          lambda: epoch_plan(seed, epoch, n, batch_size, alpha))


def _flat(value) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    return [t for v in value for t in _flat(v)]


# -- validation ------------------------------------------------------------------------------

def _check_config(config: EnsembleConfig) -> None:
    check_int("config.epochs", config.epochs, 1)
    check_int("config.batch_size", config.batch_size, 2)  # mixing pairs rows
    check_choice("config.optimizer", config.optimizer, OPTIMIZERS)
    check_real("config.lr", config.lr, 0, low_open=True)
    check_sizes("config.hidden", config.hidden)
    if config.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"config.dtype must be torch.float32 or torch.float64; got {config.dtype}")
    check_real("config.memory_budget", config.memory_budget, 1)  # bytes
    if config.chunk_models is not None:
        check_int("config.chunk_models", config.chunk_models, 1)
    ev = config.eval_epochs
    if (not isinstance(ev, (tuple, list)) or len(set(ev)) != len(ev)
            or any(isinstance(e, bool) or not isinstance(e, (int, np.integer)) or not 1 <= e <= config.epochs for e in ev)):
        raise ValueError(f"config.eval_epochs must be distinct integers in 1..epochs = {config.epochs}; got {ev!r}")
    for name in ("workers", "threads_per_worker"):
        if getattr(config, name) is not None:
            check_int(f"config.{name}", getattr(config, name), 1)


def _check_specs(specs: Sequence[MemberSpec], depth: int) -> None:
    for i, s in enumerate(specs):
        if not isinstance(s, MemberSpec):
            raise TypeError(f"specs[{i}] must be a MemberSpec; got {type(s).__name__}")
        check_seed(f"specs[{i}].seed", s.seed)
        if s.mix_layer is not None and (
            isinstance(s.mix_layer, bool) or not isinstance(s.mix_layer, (int, np.integer)) or not 0 <= s.mix_layer <= depth
        ):
            raise ValueError(
                f"specs[{i}].mix_layer must be None (ERM), 0 (input) or a hidden layer 1..{depth}; got {s.mix_layer!r}"
            )
        if isinstance(s.alpha, AlphaPolicy):
            if type(s.alpha).alpha is not AlphaPolicy.alpha or s.alpha.needs:  # not alpha_at(epoch) alone
                raise ValueError(f"specs[{i}].alpha is {type(s.alpha).__name__}, which sets alpha from each batch; the "
                                 "vectorised trainer follows policies that depend on the epoch only, through "
                                 "alpha_at(epoch) (Constant, RampUp, RampDown: policies.schedule)")
        else:
            check_alpha(s.alpha, f"specs[{i}].alpha")


def _bytes_per_model(d: int, hidden: Sequence[int], k: int, n: int, batch: int, config: EnsembleConfig) -> int:
    """Bytes one member needs in a chunk (parameters + grads + optimiser state + data + activations)."""
    sizes = [d, *hidden, k]
    p = sum(i * o + o for i, o in zip(sizes[:-1], sizes[1:]))
    copies = 4 if config.optimizer == "adam" else 3  # params, grads, Adam's two moments or SGD's momentum
    data = n * (2 * d + 2 * k + batch) + n * 3  # x, mixed x, targets, Mix matrices, order/labels
    act = batch * (3 * sum(hidden) + 4 * max(hidden) + 4 * k)
    item = torch.finfo(config.dtype).bits // 8
    return (copies * p + data + act) * item


def chunk_size_for(d: int, k: int, n: int, config: EnsembleConfig, device_type: str = "cpu") -> int:
    """Members per chunk for this budget (raises ValueError if even one member does not fit)."""
    per = _bytes_per_model(d, config.hidden, k, n, config.batch_size, config)
    budget = int(config.memory_budget)
    fit = budget // per
    if fit < 1:
        raise ValueError(
            f"config.memory_budget = {budget} bytes is too small for one member, which needs "
            f"about {per} bytes (sizes {[d, *config.hidden, k]}, n = {n}); raise it to at least {per}"
        )
    if config.chunk_models:
        return int(min(fit, config.chunk_models))
    # the defaults were measured at width 512; narrower members need more of them per step to
    # amortise the per-op overhead (same work per step: scale by (512 / width)^2, at most 16x)
    base = DEFAULT_CHUNK.get(device_type, DEFAULT_CHUNK["cpu"])
    widen = min(16.0, (512 / max(config.hidden)) ** 2) if config.hidden else 1.0
    return int(min(fit, max(base, round(base * widen))))


# -- training --------------------------------------------------------------------------------

class _Chunk:
    """State and hand-written forward/backward for a chunk of members (stacked over dim 0).

    Parameters are kept as ``Wt[l]`` [m, in, out] (transposed nn.Linear weights) and ``b[l]`` [m, 1, out].
    """

    def __init__(self, sizes: list[int], inits: list, kmask: Tensor | None, groups: dict[int, tuple[int, int]],
                 batch: int, config: EnsembleConfig, device: torch.device) -> None:
        dt = config.dtype
        m = len(inits)
        self.m, self.sizes, self.batch, self.groups, self.kmask = m, sizes, batch, groups, kmask
        L = len(sizes) - 1
        self.Wt = [torch.zeros(m, sizes[l], sizes[l + 1], dtype=dt, device=device) for l in range(L)]
        self.b = [torch.zeros(m, 1, sizes[l + 1], dtype=dt, device=device) for l in range(L)]
        for i, layers in enumerate(inits):
            for l, (w, bias) in enumerate(layers):
                self.Wt[l][i, :, : w.shape[0]] = w.t().to(dt)
                self.b[l][i, 0, : w.shape[0]] = bias.to(dt)
        params = self.Wt + self.b
        for p in params:
            p.grad = torch.zeros_like(p)
        if config.optimizer == "adam":
            self.opt = torch.optim.Adam(params, lr=config.lr, betas=config.betas, eps=config.eps, fused=True)
        else:
            self.opt = torch.optim.SGD(params, lr=config.lr, momentum=SGD_MOMENTUM, foreach=True)
        # activations: a[l] post-ReLU of hidden layer l (l = 0..L-2); h[l] its mixed version (if mixed)
        self.a = [torch.empty(m, batch, s, dtype=dt, device=device) for s in sizes[1:-1]]
        self.h = [torch.empty(m, batch, s, dtype=dt, device=device) if (l + 1) in groups else None
                  for l, s in enumerate(sizes[1:-1])]
        self.zo = torch.empty(m, batch, sizes[-1], dtype=dt, device=device)
        self.dh = [torch.empty(m, batch, s, dtype=dt, device=device) for s in sizes[1:-1]]
        self.dz = [torch.empty(m, batch, s, dtype=dt, device=device) for s in sizes[1:-1]]
        self.dm = [torch.empty(m, batch, s, dtype=dt, device=device) if (l + 1) in groups else None
                   for l, s in enumerate(sizes[1:-1])]

    def parameters(self) -> tuple[list[Tensor], list[Tensor]]:
        """Copies on the CPU, in nn.Linear layout: W [m, out, in], b [m, out]."""
        W = [w.detach().transpose(1, 2).cpu().clone() for w in self.Wt]
        bs = [b.detach()[:, 0].cpu().clone() for b in self.b]
        return W, bs

    def step(self, x: Tensor, t: Tensor, mix: Tensor) -> Tensor:
        """One optimiser step. x [m, B, d] (input mixing already applied), t [m, B, K] mixed
        targets, mix [m, B, B] mixing matrices. Returns the per-member loss [m]."""
        L = len(self.sizes) - 1
        Wt, b, a, hmix, groups = self.Wt, self.b, self.a, self.h, self.groups
        hs = [x]
        for l in range(L - 1):
            torch.baddbmm(b[l], hs[-1], Wt[l], out=a[l])
            a[l].relu_()
            g = groups.get(l + 1)
            if g is None:
                hs.append(a[l])
            else:
                s, e = g
                h = hmix[l]
                if s > 0:
                    h[:s].copy_(a[l][:s])
                if e < self.m:
                    h[e:].copy_(a[l][e:])
                torch.bmm(mix[s:e], a[l][s:e], out=h[s:e])
                hs.append(h)
        z = torch.baddbmm(b[-1], hs[-1], Wt[-1], out=self.zo)
        if self.kmask is not None:
            z += self.kmask
        logp = torch.log_softmax(z, -1)
        loss = -(t * logp).sum(-1).mean(-1)
        dz = logp.exp_().sub_(t).div_(self.batch)  # d(mean CE)/dz, rows of t sum to 1
        for l in range(L - 1, -1, -1):
            torch.bmm(hs[l].transpose(1, 2), dz, out=Wt[l].grad)
            torch.sum(dz, 1, keepdim=True, out=b[l].grad)
            if l == 0:
                break
            dh = torch.bmm(dz, Wt[l].transpose(1, 2), out=self.dh[l - 1])
            g = groups.get(l)
            if g is not None:  # mixing backward: d a = Mix^T d h on the slice that mixes here
                s, e = g
                dm = self.dm[l - 1]
                if s > 0:
                    dm[:s].copy_(dh[:s])
                if e < self.m:
                    dm[e:].copy_(dh[e:])
                torch.bmm(mix[s:e].transpose(1, 2), dh[s:e], out=dm[s:e])
                dh = dm
            dz = torch.ops.aten.threshold_backward.grad_input(dh, a[l - 1], 0, grad_input=self.dz[l - 1])
        self.opt.step()
        return loss


def _onehot(y: Tensor, k: int, dtype: torch.dtype) -> Tensor:
    return torch.nn.functional.one_hot(y, k).to(dtype)


def train_ensemble(
    x: Tensor,
    y: Tensor,
    num_classes: int | Sequence[int],
    specs: Sequence[MemberSpec],
    config: EnsembleConfig | None = None,
    device: torch.device | str | None = None,
    progress: Callable[[int], None] | None = None,
    evaluate: Callable[[int, list[int], EnsembleParams], Tensor] | None = None,
) -> EnsembleParams:
    """Train M members; returns their trained parameters (on the CPU).

    x: float Tensor [M, n, d] (member i's inputs); y: LongTensor [M, n], labels in [0, K_i);
    num_classes: K for all members or a list of M values (each >= 2); specs: M ``MemberSpec``.
    device: where to compute (default: x's device); each chunk's data is moved there once.
    progress: called after each chunk with the number of members done so far (or an object with
    ``update(k)``, e.g. a tqdm bar, given the increment).
    evaluate: called after each epoch e of ``config.eval_epochs`` as ``evaluate(e, members, params)``,
    with ``members`` the indices (into the M members) of one chunk and ``params`` their parameters
    at that point (an ``EnsembleParams`` in that order, on the CPU, a copy); it returns a Tensor
    [len(members), ...] and the returned ``EnsembleParams.evaluations[e]`` stacks them in member
    order [M, ...]. Without it, ``EnsembleParams.snapshots[e]`` keeps all members' parameters.
    With ``config.workers`` > 1 it runs in the worker processes, so it must be picklable (a
    top-level function or a ``functools.partial`` of one).
    """
    config = config or EnsembleConfig()
    _check_config(config)
    if evaluate is not None and not callable(evaluate):
        raise ValueError(f"evaluate must be None or a function (epoch, members, params) -> Tensor; got {evaluate!r}")
    if not isinstance(x, Tensor) or x.ndim != 3 or not x.dtype.is_floating_point:
        raise ValueError(f"x must be a float Tensor [M, n, d]; got {getattr(x, 'shape', type(x))}")
    M, n, d = x.shape
    if not isinstance(y, Tensor) or y.shape != (M, n) or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"y must be an integer Tensor [M, n] = [{M}, {n}] of labels; got "
                         f"{getattr(y, 'dtype', type(y))} {tuple(getattr(y, 'shape', ()))}")
    if len(specs) != M:
        raise ValueError(f"specs has {len(specs)} entries but x holds {M} members")
    ks = [num_classes] * M if isinstance(num_classes, (int, np.integer)) else list(num_classes)
    if len(ks) != M:
        raise ValueError(f"num_classes has {len(ks)} entries but x holds {M} members")
    for i, k in enumerate(ks):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
            raise ValueError(f"num_classes[{i}] must be an integer >= 2; got {k!r}")
    ks = [int(k) for k in ks]
    depth = len(config.hidden)
    _check_specs(specs, depth)
    if n % config.batch_size:
        raise ValueError(f"n = {n} samples per member must be a multiple of config.batch_size = {config.batch_size}")
    y = y.long()
    kt = torch.tensor(ks)
    bad = (y < 0) | (y >= kt[:, None])
    if bad.any():
        i, j = (int(v) for v in bad.nonzero()[0])
        raise ValueError(f"labels of member {i} must lie in [0, {ks[i]}); got y[{i}, {j}] = {int(y[i, j])}")
    device = torch.device(device) if device is not None else x.device
    kmax = max(ks)
    per_chunk = chunk_size_for(d, kmax, n, config, device.type)

    # sort members by mixing layer (stable) so that each layer's members are contiguous in a chunk
    key = lambda i: -1 if specs[i].mix_layer is None else specs[i].mix_layer  # noqa: E731
    order = sorted(range(M), key=key)
    dt = config.dtype
    sizes_all = [d, *config.hidden, kmax]
    W_out = [torch.zeros(M, o, i, dtype=dt) for i, o in zip(sizes_all[:-1], sizes_all[1:])]
    b_out = [torch.zeros(M, o, dtype=dt) for o in sizes_all[1:]]
    losses = torch.zeros(M, config.epochs, dtype=torch.float64)
    chunks = [order[c0 : c0 + per_chunk] for c0 in range(0, M, per_chunk)]
    workers = _n_workers(config, device, len(chunks))
    evaluations: dict[int, Tensor] = {}
    snapshots = {e: EnsembleParams([torch.zeros_like(w) for w in W_out], [torch.zeros_like(b) for b in b_out], ks,
                                   tuple(config.hidden)) for e in config.eval_epochs} if evaluate is None else {}
    done = 0

    def place(W: list[Tensor], b: list[Tensor], it: Tensor, Wc: list[Tensor], bc: list[Tensor]) -> None:
        for l in range(len(W)):
            W[l][it, : Wc[l].shape[1]] = Wc[l]
            b[l][it, : bc[l].shape[1]] = bc[l]

    def collect(idx: list[int], result) -> None:
        nonlocal done
        Wc, bc, lc, evals = result
        it = torch.tensor(idx)
        place(W_out, b_out, it, Wc, bc)
        losses[it] = lc
        for e, v in evals.items():
            if evaluate is None:
                place(snapshots[e].weights, snapshots[e].biases, it, v.weights, v.biases)
                continue
            if not isinstance(v, Tensor) or v.ndim < 1 or v.shape[0] != len(idx):
                raise ValueError(f"evaluate must return a Tensor [len(members), ...] = [{len(idx)}, ...]; "
                                 f"got {getattr(v, 'shape', type(v).__name__)} at epoch {e}")
            if e not in evaluations:
                evaluations[e] = torch.zeros((M, *v.shape[1:]), dtype=v.dtype)
            evaluations[e][it] = v.cpu()
        done += len(idx)
        if progress is not None:
            if hasattr(progress, "update") and not callable(progress):
                progress.update(len(idx))
            else:
                progress(done)

    if workers <= 1:
        draws = _Draws(specs, ks)
        for idx in chunks:
            collect(idx, _train_chunk(x, y, ks, specs, idx, config, device, evaluate, idx, draws))
    else:
        threads = config.threads_per_worker or max(1, (os.cpu_count() or 1) // workers)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=torch.set_num_threads, initargs=(threads,)) as pool:
            futures = {}
            for idx in chunks:
                it = torch.tensor(idx)
                sub_specs = [specs[i] for i in idx]
                sub_ks = [ks[i] for i in idx]
                fut = pool.submit(_train_chunk, x[it].cpu(), y[it].cpu(), sub_ks, sub_specs,
                                  list(range(len(idx))), config, torch.device("cpu"), evaluate, idx)
                futures[fut] = idx
            for fut in as_completed(futures):
                collect(futures[fut], fut.result())
    return EnsembleParams(W_out, b_out, ks, tuple(config.hidden), losses,
                          evaluations={e: evaluations[e] for e in sorted(evaluations)},
                          snapshots={e: snapshots[e] for e in sorted(snapshots)})


def _n_workers(config: EnsembleConfig, device: torch.device, n_chunks: int) -> int:
    """Worker processes to use (see EnsembleConfig.workers)."""
    if device.type != "cpu":
        return 1
    return min(config.workers or 1, n_chunks)


def _train_chunk(x, y, ks, specs, idx, config: EnsembleConfig, device, evaluate=None, members=None,
                 draws: _Draws | None = None):
    """Train the members ``idx`` (sorted by mixing layer) together; returns CPU W [m,out,in], b [m,out],
    losses [m,E] and {epoch: evaluate(epoch, members, params) or params} for the epochs in config.eval_epochs.
    ``draws`` shares initial weights and plans with other chunks (default: within this chunk only)."""
    m, n, d = len(idx), x.shape[1], x.shape[2]
    B, dt = config.batch_size, config.dtype
    nb = n // B
    kc = max(ks[i] for i in idx)
    sizes = [d, *config.hidden, kc]
    if draws is None:
        draws = _Draws([specs[i] for i in idx], [ks[i] for i in idx])
    inits = [draws.init([d, *config.hidden, ks[i]], specs[i].seed) for i in idx]
    kmask = None
    if any(ks[i] < kc for i in idx):
        kmask = torch.zeros(m, 1, kc, dtype=dt)
        for r, i in enumerate(idx):
            kmask[r, 0, ks[i]:] = _PAD_LOGIT
        kmask = kmask.to(device)
    layers = [specs[i].mix_layer for i in idx]
    groups: dict[int, tuple[int, int]] = {}
    for r, k in enumerate(layers):
        if k is not None:
            s, _ = groups.get(k, (r, r))
            groups[k] = (s, r + 1)
    chunk = _Chunk(sizes, inits, kmask, {k: v for k, v in groups.items() if k >= 1}, B, config, device)
    it = torch.tensor(idx)
    xc = x[it].to(device=device, dtype=dt)                  # [m, n, d], moved once
    yc = _onehot(y[it], kc, dt).to(device)                  # [m, n, K]
    losses = torch.zeros(m, config.epochs, dtype=torch.float64)
    evals: dict[int, object] = {}
    eval_at = set(config.eval_epochs)
    g0 = groups.get(0)
    mixes = torch.tensor([k is not None for k in layers])
    for epoch in range(config.epochs):
        plans = [draws.plan(specs[i].seed, epoch, n, B, specs[i].alpha) for i in idx]
        od = torch.stack([o for o, _, _ in plans]).to(device)
        mix = _mix_matrices(torch.stack([p for _, p, _ in plans]), torch.stack([lam for _, _, lam in plans]),
                            mixes, dt, device)                                   # [nb, m, B, B]
        xe = torch.gather(xc, 1, od[..., None].expand(m, n, d)).view(m, nb, B, d).transpose(0, 1).contiguous()
        te = torch.gather(yc, 1, od[..., None].expand(m, n, kc)).view(m, nb, B, kc).transpose(0, 1)
        te = torch.matmul(mix, te)                                                # mixed targets [nb, m, B, K]
        if g0 is not None:
            s, e = g0
            xe[:, s:e] = torch.matmul(mix[:, s:e], xe[:, s:e])
        ep_loss = torch.zeros(m, dtype=dt, device=device)
        for bi in range(nb):
            ep_loss += chunk.step(xe[bi], te[bi], mix[bi])
        losses[:, epoch] = (ep_loss / nb).double().cpu()
        if epoch + 1 in eval_at:
            W, bs = chunk.parameters()
            now = EnsembleParams(W, bs, [ks[i] for i in idx], tuple(config.hidden))
            evals[epoch + 1] = now if evaluate is None else evaluate(epoch + 1, list(members), now)
    W, bs = chunk.parameters()
    return W, bs, losses, evals


def _mix_matrices(perm: Tensor, lam: Tensor, mixes: Tensor, dt: torch.dtype, device: torch.device) -> Tensor:
    """The chunk's mixing matrices [nb, m, B, B] in ``dt`` on ``device``, from perm [m, nb, B] and lam
    [m, nb, B] (float64): row i of batch b of member r is ``lam e_i + (1 - lam) e_perm[i]`` (the
    sum ``lam + (1 - lam)`` in float64 where perm[i] = i), or ``e_i`` where ``mixes[r]`` is False.
    The entries are computed in float64 on the CPU and rounded to ``dt`` once; the device gets
    [m, nb, B]-sized tensors and writes them into place."""
    eye = torch.arange(perm.shape[-1])
    off = 1 - lam
    col = torch.where(mixes[:, None, None], perm, eye)         # ERM rows: their own column only
    own = col == eye
    diag = torch.where(mixes[:, None, None], torch.where(own, lam + off, lam), 1.0)
    at_col = torch.where(own, diag, off)
    out = torch.zeros(perm.shape[1], perm.shape[0], perm.shape[2], perm.shape[2], dtype=dt, device=device)
    out.diagonal(dim1=-2, dim2=-1).copy_(diag.transpose(0, 1).to(device, dt))
    out.scatter_(3, col.transpose(0, 1)[..., None].to(device), at_col.transpose(0, 1)[..., None].to(device, dt))
    return out


# -- prediction and interop ------------------------------------------------------------------

def predict_ensemble(params: EnsembleParams, points: Tensor, chunk: int = 8192,
                     memory_budget: int = 256 << 20, device: torch.device | str | None = None) -> Tensor:
    """Predicted labels of every member: LongTensor [M, G] (argmax over each member's valid classes).

    points: [G, d] shared by all members, or [M, G, d] per member. Work is chunked over points
    (at most ``chunk`` at a time) and members so that activations stay within ``memory_budget`` bytes.
    """
    M, d = params.num_models, params.in_features
    if points.ndim == 2:
        shared = True
        if points.shape[1] != d:
            raise ValueError(f"points must be [G, {d}] or [{M}, G, {d}]; got {tuple(points.shape)}")
        G = points.shape[0]
    elif points.ndim == 3:
        shared = False
        if points.shape[0] != M or points.shape[2] != d:
            raise ValueError(f"points must be [G, {d}] or [{M}, G, {d}]; got {tuple(points.shape)}")
        G = points.shape[1]
    else:
        raise ValueError(f"points must be [G, {d}] or [{M}, G, {d}]; got {tuple(points.shape)}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1; got {chunk}")
    device = torch.device(device) if device is not None else params.weights[0].device
    dt = params.weights[0].dtype
    width = max(params.hidden)
    gc = min(chunk, G) if G else 1
    mc = max(1, min(M, memory_budget // (2 * gc * width * dt.itemsize)))
    kmax = params.weights[-1].shape[1]
    out = torch.empty(M, G, dtype=torch.long)
    kt = torch.tensor(params.num_classes)
    for m0 in range(0, M, mc):
        sl = slice(m0, min(M, m0 + mc))
        Wt = [w[sl].transpose(1, 2).to(device) for w in params.weights]
        bs = [b[sl].unsqueeze(1).to(device) for b in params.biases]
        mask = torch.where(torch.arange(kmax)[None, :] < kt[sl, None], 0.0, -math.inf).to(device, dt).unsqueeze(1)
        for g0 in range(0, G, gc):
            if shared:
                p = points[g0 : g0 + gc].to(device, dt).expand(Wt[0].shape[0], -1, -1)
            else:
                p = points[sl, g0 : g0 + gc].to(device, dt)
            h = p
            for l in range(len(Wt) - 1):
                h = torch.baddbmm(bs[l], h, Wt[l]).relu_()
            z = torch.baddbmm(bs[-1], h, Wt[-1]) + mask
            out[sl, g0 : g0 + gc] = z.argmax(-1).cpu()
    return out


def to_sequential(params: EnsembleParams, i: int) -> nn.Sequential:
    """Member i as ``manifold_mixup.paper.models.mlp`` (``nn.Sequential`` fc1, relu1, ..., out) with its trained weights."""
    M = params.num_models
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not -M <= i < M:
        raise ValueError(f"member index i must be an integer in [0, {M}); got {i!r}")
    k = params.num_classes[i]
    model = mlp(k, params.hidden, params.in_features).to(params.weights[0].dtype)
    linears = [mod for mod in model if isinstance(mod, nn.Linear)]
    with torch.no_grad():
        for lin, w, b in zip(linears, params.weights, params.biases):
            lin.weight.copy_(w[i, : lin.out_features])
            lin.bias.copy_(b[i, : lin.out_features])
    return model
