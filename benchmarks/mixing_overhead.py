"""Cost of mixing next to a plain ERM training step, measured in the same run.

Prints one JSON line per timed method of each case: {"model", "method", "ratio_to_erm", "step_ms",
"erm_step_ms", "paired_ratio_median", "paired_ratio_iqr", "samples_per_second", ...}; a library
method that has a hand-written twin (``--reference``) also gets "reference",
"paired_ratio_to_reference_median" and "paired_ratio_to_reference_iqr" (the per-round ratio
library / twin). A step is forward + loss + backward + ``torch.optim.Adam``. ERM is
``model(x, **kwargs)`` with ``F.cross_entropy`` on class indices; mixed steps go through
``ManifoldMixup`` and ``soft_cross_entropy``.

Cases (``--models``, default all):

- ``paper-mlp``: 2-512-512-512-5, batch 50, mixing at one of relu1..3 drawn per step.
- ``paper-cnn``: Table 2's CNN at CIFAR-10's shape (3x32x32, batch 250), mixing before the first
  FC layer; ``paper-cnn-digits``: the same CNN at the digits' shape (1x8x8, batch 250).
- ``small-resnet``: ``mm.models.small_resnet`` (3x32x32, batch 64), mixing at block1 or block2.
- ``paper-cnn-compiled``: the paper CNN (3x32x32, batch 250) as ``torch.compile(model)``; ERM is
  the compiled model, the mixer is given the compiled model; ``erm-eager`` (the uncompiled model)
  is timed beside them. Its twin (``--reference``) is the hand-written mixed forward compiled with
  the same backend, so that the ratio library / twin tells the library's cost from the compiler's. ``--compile-backend auto`` takes Inductor when it compiles on this machine
  (it needs a C compiler), else ``aot_eager``; the JSON says which. Compile time is spent in the
  warm-up steps and excluded (reported as ``warmup_first_step_s``).
- ``bert``: ``BertForSequenceClassification`` from a ``transformers`` config (random weights;
  vocabulary 30522, hidden 128, 2 layers, 2 heads, FFN 512, 4 labels), batch 32 of 128 tokens
  with padding (lengths 64..128) given as ``attention_mask=``; mixing at the first encoder block
  (``bert.encoder.layer.0``; ``select={name: 0}`` where the block returns a tuple). Skipped, with
  a JSON line that says so, where ``transformers`` is not installed.
- ``bert-checkpointed``: the same BERT with 4 layers, hidden 256, 4 heads, FFN 1024, batch 32 of
  128 tokens with padding, activation checkpointing on (``activation_checkpointing_enable()``, the
  transformers default: non-reentrant), mixing inside a checkpointed block
  (``bert.encoder.layer.1.intermediate``), so that backward recomputes the mixed run; ERM is the
  same checkpointed model.

How it is timed: all methods of a case train one model instance with one optimizer, so memory
layout favours none of them. Each round times one step of every method, in a shuffled order;
``ratio_to_erm`` is the ratio of the median step times, ``paired_ratio_*`` the median and
quartiles of the per-round ratios. Alternating single steps keeps the machine's slow drifts (on
the 2-core CI machine its speed moves by 1.5x between minutes) out of the ratios. Rounds run
until ``--seconds`` per case are spent (at least ``--min-rounds``).

``--reference`` adds hand-written twins of the library's mixed steps (``reference-<method>``):
no library code, no checks; each draws its permutation and per-sample lambda ~ Beta(alpha, alpha)
per step from its own numpy generator, mixes the hidden state by the plain gather form
``lam*h + (1-lam)*h[perm]`` and the one-hot targets the same way (``hand_mix`` of
``tests/hand_mixing.py``, the reference the tests hold the library to), and uses ``F.cross_entropy``
with those probability targets. The Sequential models (MLP, paper CNN) run their modules one by
one with the mix between them; the small ResNet's twin has its forward written out (the blocks
inlined, the model's own modules) with the mix at the drawn block; BERT's twin puts the
hand-written forward hook (``HandHook``) on the block for the step. ``reference-confmix-cached`` reads alpha_i from a numpy
cache and writes the outputs' rescaled max softmax back. Twins exist for: paper-mlp (input,
manifold, confmix-cached), paper-cnn (manifold, confmix-cached), paper-cnn-digits (input, manifold,
confmix-cached), small-resnet (manifold), bert (manifold).

Denormal floats are flushed to zero (``torch.set_flush_denormal(True)``; ``--keep-denormals``
turns that off): training the same batch for thousands of steps drives Adam's moments of dead
units into the denormal range, where CPU arithmetic is many times slower, and that slows the
ERM and the mixed steps alike by an amount that has nothing to do with mixing.

    python benchmarks/mixing_overhead.py [--seconds 40] [--models paper-mlp ...] [--device cpu] [--reference]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import manifold_mixup as mm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from hand_mixing import HandHook, hand_mix  # noqa: E402  (the tests' hand-written reference)


CASE_NAMES = ("paper-mlp", "paper-cnn", "paper-cnn-digits", "small-resnet", "paper-cnn-compiled", "bert",
              "bert-checkpointed")
BERT_CKPT_LAYER = "bert.encoder.layer.1.intermediate"
BERT_BLOCK = "bert.encoder.layer.0"


@dataclass
class Case:
    """One model with its batch and the methods timed on it.

    model: what every step calls (a compiled wrapper in the compiled case); module: the model
    whose parameters the optimizer trains; methods: library method -> ManifoldMixup settings
    {"layers", "alpha" (a number, or "fresh"/"cached" for ConfMix), "select"}; twin: builds the
    hand-written steps (see ``Twin``), or None."""

    name: str
    model: nn.Module
    module: nn.Module
    x: Tensor
    y: Tensor
    num_classes: int
    methods: dict[str, dict[str, Any]]
    kwargs: dict[str, Any] = field(default_factory=dict)
    twin: Callable[..., Twin] | None = None
    eager_erm: bool = False
    info: dict[str, Any] = field(default_factory=dict)


def _seeded(seed: int, build: Callable[[], nn.Module]) -> nn.Module:
    """Build a model whose constructor draws from the global generator, from ``seed``, leaving
    the global random state as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def build_case(name: str, device: torch.device, compile_backend: str) -> Case:
    g = torch.Generator().manual_seed(0)
    init = torch.Generator().manual_seed(1)
    if name == "paper-mlp":
        relus = ["relu1", "relu2", "relu3"]
        model = mm.models.mlp(5, generator=init)
        x, y = torch.randn(50, 2, generator=g), torch.randint(0, 5, (50,), generator=g)
        methods = {"manifold": {"layers": relus, "alpha": 0.5}, "input": {"layers": "input", "alpha": 0.5},
                   "confmix-fresh": {"layers": relus, "alpha": "fresh"},
                   "confmix-cached": {"layers": relus, "alpha": "cached"}}
        return Case(name, model, model, x, y, 5, methods, twin=sequential_twin)
    if name in ("paper-cnn", "paper-cnn-digits", "paper-cnn-compiled"):
        shape = (1, 8, 8) if name == "paper-cnn-digits" else (3, 32, 32)
        model = mm.models.paper_cnn(shape, 10, generator=init)
        x, y = torch.randn(250, *shape, generator=g), torch.randint(0, 10, (250,), generator=g)
        at = mm.models.PAPER_CNN_MIX_LAYER
        confmix = {"confmix-fresh": {"layers": at, "alpha": "fresh"}, "confmix-cached": {"layers": at, "alpha": "cached"}}
        if name == "paper-cnn-compiled":
            model = model.to(device)
            compiled = torch.compile(model, backend=compile_backend)
            return Case(name, compiled, model, x, y, 10, {"manifold": {"layers": at, "alpha": 0.5}},
                        twin=compiled_twin(compile_backend), eager_erm=True, info={"compile_backend": compile_backend})
        methods = {"manifold": {"layers": at, "alpha": 0.5}, **confmix}
        if name == "paper-cnn-digits":
            methods = {"input": {"layers": "input", "alpha": 0.5}, **methods}
        return Case(name, model, model, x, y, 10, methods, twin=sequential_twin)
    if name == "small-resnet":
        model = _seeded(1, lambda: mm.models.small_resnet((3, 32, 32), 10))
        x, y = torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g)
        return Case(name, model, model, x, y, 10, {"manifold": {"layers": ["block1", "block2"], "alpha": 0.5}},
                    twin=resnet_twin)
    if name == "bert":
        return bert_case(g, device)
    if name == "bert-checkpointed":
        return bert_checkpointed_case(g)
    raise ValueError(f"--models: unknown case {name!r}; allowed: {', '.join(CASE_NAMES)}")


def bert_config(**overrides: Any):
    """The benchmark's BERT: BERT-base's vocabulary, a small encoder (hidden 128, 2 layers)."""
    from transformers import BertConfig

    settings = dict(vocab_size=30522, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=512, max_position_embeddings=512, num_labels=4)
    settings.update(overrides)
    return BertConfig(**settings)


def padded_tokens(batch: int, length: int, vocab: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """Token ids [B, L] and an attention mask [B, L] with lengths drawn in L/2..L (padding id 0)."""
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=g)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    ids = torch.randint(1, vocab, (batch, length), generator=g) * mask
    return ids, mask


def block_select(model: nn.Module, block: str, x: Tensor, kwargs: dict[str, Any]) -> dict[str, int]:
    """``{block: 0}`` where the block returns a tuple (its hidden states first), else ``{}``."""
    seen = []
    handle = model.get_submodule(block).register_forward_hook(lambda m, i, o: seen.append(isinstance(o, tuple)))
    try:
        with torch.no_grad():
            model(x[:2], **{k: v[:2] for k, v in kwargs.items()})
    finally:
        handle.remove()
    return {block: 0} if seen[0] else {}


def bert_case(g: torch.Generator, device: torch.device) -> Case:
    import transformers
    from transformers import BertForSequenceClassification

    cfg = bert_config()
    model = _seeded(1, lambda: BertForSequenceClassification(cfg))
    ids, mask = padded_tokens(32, 128, cfg.vocab_size, g)
    y = torch.randint(0, cfg.num_labels, (32,), generator=g)
    select = block_select(model, BERT_BLOCK, ids, {"attention_mask": mask})
    info = {"transformers": transformers.__version__, "attention": model.config._attn_implementation,
            "config": {k: getattr(cfg, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                                    "num_attention_heads", "intermediate_size", "num_labels")},
            "sequence_length": 128, "tokens": int(mask.sum()), "select": select}
    return Case("bert", model, model, ids, y, cfg.num_labels,
                {"manifold": {"layers": BERT_BLOCK, "alpha": 0.5, "select": select}},
                kwargs={"attention_mask": mask}, twin=hook_twin, info=info)


def bert_checkpointed_case(g: torch.Generator) -> Case:
    import transformers
    from transformers import BertForSequenceClassification

    cfg = bert_config(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024)
    model = _seeded(1, lambda: BertForSequenceClassification(cfg))
    model.activation_checkpointing_enable()
    ids, mask = padded_tokens(32, 128, cfg.vocab_size, g)
    y = torch.randint(0, cfg.num_labels, (32,), generator=g)
    info = {"transformers": transformers.__version__, "attention": model.config._attn_implementation,
            "config": {k: getattr(cfg, k) for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                                    "num_attention_heads", "intermediate_size", "num_labels")},
            "sequence_length": 128, "tokens": int(mask.sum()), "gradient_checkpointing": True,
            "mixed_at": BERT_CKPT_LAYER}
    return Case("bert-checkpointed", model, model, ids, y, cfg.num_labels,
                {"manifold": {"layers": BERT_CKPT_LAYER, "alpha": 0.5}}, kwargs={"attention_mask": mask}, info=info)


def logits_of(out: Any) -> Tensor:
    return out if isinstance(out, Tensor) else out.logits


def train(opt: torch.optim.Optimizer, loss: Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def erm_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, kwargs: dict[str, Any]):
    def step():
        train(opt, F.cross_entropy(logits_of(model(x, **kwargs)), y))
    return step


def library_step(case: Case, opt: torch.optim.Optimizer, spec: dict[str, Any], seed: int = 2):
    """The mixed step as a user writes it: ``ManifoldMixup`` + ``soft_cross_entropy``."""
    alpha = spec["alpha"]
    cached = alpha == "cached"
    if alpha in ("fresh", "cached"):
        alpha = mm.ConfMix(warmup_epochs=0, confidence=alpha)
    extra = {"select": spec["select"]} if spec.get("select") else {}
    mixer = mm.ManifoldMixup(case.model, spec["layers"], alpha=alpha, num_classes=case.num_classes,
                             generator=torch.Generator().manual_seed(seed), **extra)
    x, y, kwargs = case.x, case.y, case.kwargs
    if cached:
        kwargs = {**kwargs, "index": torch.arange(len(x), device=x.device)}

    def step():
        logits, targets = mixer(x, y, **kwargs)
        train(opt, mm.soft_cross_entropy(logits, targets))
    return step


# --- hand-written twins: no library code (the mix is tests/hand_mixing.py's) ---------------------

@dataclass
class Twin:
    """A hand-written mixed forward: ``forward(perm, lam, layer) -> logits`` on the case's batch,
    for each layer name in ``layers`` ("input" mixes the input)."""

    forward: Callable[[Tensor, Tensor, str], Tensor]
    layers: Sequence[str]


def sequential_twin(model: nn.Sequential, x: Tensor, kwargs: dict[str, Any], layers: Sequence[str]) -> Twin:
    """The modules of an ``nn.Sequential`` one by one, the mix after the named one."""
    mods, names = list(model), list(model._modules)

    def forward(perm, lam, layer):
        cut = 0 if layer == "input" else names.index(layer) + 1
        h = x
        for mod in mods[:cut]:
            h = mod(h)
        h = hand_mix(h, perm, lam)
        for mod in mods[cut:]:
            h = mod(h)
        return h
    return Twin(forward, layers)


def resnet_twin(model: nn.Module, x: Tensor, kwargs: dict[str, Any], layers: Sequence[str]) -> Twin:
    """``small_resnet``'s forward written out (its blocks inlined, its own modules), the mix
    after the named stage."""

    def block(b, h):
        out = torch.relu(b.bn1(b.conv1(h)))
        return torch.relu(b.bn2(b.conv2(out)) + b.skip(h))

    def forward(perm, lam, layer):
        h = x
        if layer == "input":
            h = hand_mix(h, perm, lam)
        h = model.stem(h)
        if layer == "stem":
            h = hand_mix(h, perm, lam)
        h = block(model.block1, h)
        if layer == "block1":
            h = hand_mix(h, perm, lam)
        h = block(model.block2, h)
        if layer == "block2":
            h = hand_mix(h, perm, lam)
        h = model.pool(h)
        if layer == "pool":
            h = hand_mix(h, perm, lam)
        return model.fc(model.drop(h))
    return Twin(forward, layers)


def compiled_twin(backend: str) -> Callable[..., Twin]:
    """The Sequential twin's forward (the mix written between the modules), compiled with ``backend``."""
    def build(model: nn.Module, x: Tensor, kwargs: dict[str, Any], layers: Sequence[str]) -> Twin:
        twin = sequential_twin(model, x, kwargs, layers)
        return Twin(torch.compile(twin.forward, backend=backend), layers)
    return build


def hook_twin(model: nn.Module, x: Tensor, kwargs: dict[str, Any], layers: Sequence[str]) -> Twin:
    """The hand-written forward hook (``HandHook``) on the named block for the step (its hidden
    states are the output, or the output's first element); the model's output's ``.logits``."""
    select = {layer: block_select(model, layer, x, kwargs).get(layer) for layer in layers}

    def forward(perm, lam, layer):
        with HandHook(model.get_submodule(layer), perm, lam, select[layer]):
            return logits_of(model(x, **kwargs))
    return Twin(forward, layers)


def twin_step(twin: Twin, opt: torch.optim.Optimizer, y: Tensor, num_classes: int, alpha: float | str,
              rng: np.random.Generator):
    """One hand-written mixed step: layer, permutation and lambda drawn from ``rng``; targets
    mixed as the hidden state; ``alpha="cached"``: cached ConfMix (alpha_i from a numpy cache of
    K/(K-1) * (max softmax - 1/K), clipped to [0, 1], rewritten from each step's outputs)."""
    b, k, device = len(y), num_classes, y.device
    layers = list(twin.layers)
    eye = torch.eye(k, device=device)
    cache = np.zeros(b)
    cache_t = torch.from_numpy(cache)
    index = torch.arange(b, device=device)

    def step():
        layer = layers[int(rng.integers(len(layers)))] if len(layers) > 1 else layers[0]
        if alpha == "cached":
            a = cache[index.cpu().numpy()]
            on = a > 0
            safe = np.where(on, a, 1.0)
            lam = np.where(on, rng.beta(safe, safe), 1.0)
        else:
            lam = rng.beta(alpha, alpha, b)
        lam = torch.from_numpy(lam.astype(np.float32)).to(device)
        perm = torch.from_numpy(rng.permutation(b)).to(device)
        logits = twin.forward(perm, lam, layer)
        targets = hand_mix(eye.index_select(0, y), perm, lam)
        train(opt, F.cross_entropy(logits, targets))
        if alpha == "cached":
            with torch.no_grad():
                conf = torch.softmax(logits, -1).amax(-1)
                cache_t.index_copy_(0, index.cpu(), conf.sub_(1 / k).mul_(k / (k - 1)).clamp_(0, 1).double().cpu())
    return step


def reference_steps(case: Case, opt: torch.optim.Optimizer, seed: int = 4) -> dict[str, tuple[str, Callable]]:
    """{"reference-<method>": (library method, step)} for the case's methods that have a twin."""
    if case.twin is None:
        return {}
    out = {}
    for i, (method, spec) in enumerate(case.methods.items()):
        if spec["alpha"] == "fresh":
            continue
        layers = [spec["layers"]] if isinstance(spec["layers"], str) else spec["layers"]
        twin = case.twin(case.module, case.x, case.kwargs, layers)
        rng = np.random.default_rng([seed, i])  # each twin its own stream
        out[f"reference-{method}"] = (method, twin_step(twin, opt, case.y, case.num_classes, spec["alpha"], rng))
    return out


# --- timing -----------------------------------------------------------------------------------

def timed(step: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4)
    return q1, q2, q3


def pick_backend(requested: str) -> tuple[str, str | None]:
    """The torch.compile backend: ``auto`` tries Inductor on a small function (it needs a working
    C compiler on the CPU) and falls back to ``aot_eager``; returns (backend, why it fell back)."""
    if requested != "auto":
        return requested, None
    try:
        torch._dynamo.reset()
        f = torch.compile(lambda t: torch.relu(t) * 2 + 1, backend="inductor")
        f(torch.randn(8))
        return "inductor", None
    except Exception as e:  # any failure of the toolchain means: use the backend that needs none
        return "aot_eager", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]


def dynamo_counts() -> tuple[int, int] | None:
    """(graphs compiled, graph breaks) so far, from torch._dynamo's counters (None where absent)."""
    try:
        counters = torch._dynamo.utils.counters
        return int(counters["stats"]["unique_graphs"]), int(sum(counters["graph_break"].values()))
    except Exception:
        return None


def run_case(case: Case, a: argparse.Namespace, device: torch.device, order: random.Random) -> list[dict]:
    x, y = case.x.to(device), case.y.to(device)
    case.x, case.y = x, y
    case.kwargs = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in case.kwargs.items()}
    case.module.to(device)
    # one model and one optimizer for every method of a case, so that no method gains or loses
    # by where its tensors happen to lie in memory; only the step itself differs
    opt = torch.optim.Adam(case.module.parameters(), lr=1e-3)
    steps = {"erm": erm_step(case.model, opt, x, y, case.kwargs)}
    if case.eager_erm:
        steps["erm-eager"] = erm_step(case.module, opt, x, y, case.kwargs)
    for m, spec in case.methods.items():
        steps[m] = library_step(case, opt, spec)
    twins = {}
    if a.reference:
        for ref, (method, step) in reference_steps(case, opt).items():
            steps[ref], twins[method] = step, ref
    start = dynamo_counts()
    first, warm = {}, {}
    for m, s in steps.items():
        ts = [timed(s, device) for _ in range(a.warmup)]
        first[m], warm[m] = ts[0], min(ts)
    warmed = dynamo_counts()
    rounds = max(a.min_rounds, int(a.seconds / sum(warm.values())))
    times = {m: [] for m in steps}
    for _ in range(rounds):
        names = list(steps)
        order.shuffle(names)
        for m in names:
            times[m].append(timed(steps[m], device))
    erm = statistics.median(times["erm"])
    rows = []
    for m in (m for m in steps if m != "erm"):
        t = statistics.median(times[m])
        q1, q2, q3 = quartiles([tm / te for tm, te in zip(times[m], times["erm"])])
        row = {
            "model": case.name, "method": m, "ratio_to_erm": round(t / erm, 4), "step_ms": round(1e3 * t, 3),
            "erm_step_ms": round(1e3 * erm, 3), "paired_ratio_median": round(q2, 4),
            "paired_ratio_iqr": [round(q1, 4), round(q3, 4)],
        }
        if m in twins:
            r1, r2, r3 = quartiles([tm / tr for tm, tr in zip(times[m], times[twins[m]])])
            row.update({"reference": twins[m], "paired_ratio_to_reference_median": round(r2, 4),
                        "paired_ratio_to_reference_iqr": [round(r1, 4), round(r3, 4)]})
        row.update({
            "rounds": rounds, "samples_per_second": round(len(x) / t, 1),
            "erm_samples_per_second": round(len(x) / erm, 1), "batch": len(x), "input_shape": list(x.shape[1:]),
            "device": str(device), "threads": torch.get_num_threads(), "flush_denormal": not a.keep_denormals,
            "torch": torch.__version__, **case.info,
        })
        if "compile_backend" in case.info:
            end = dynamo_counts()
            row.update({"warmup_steps": a.warmup, "warmup_first_step_s": round(first[m], 3),
                        "erm_warmup_first_step_s": round(first["erm"], 3)})
            if None not in (start, warmed, end):
                row.update({"graphs_compiled_in_warmup": warmed[0] - start[0],
                            "graphs_compiled_while_timed": end[0] - warmed[0],
                            "graph_breaks": end[1] - start[1]})
        rows.append(row)
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=40.0, help="time budget per case, warm-up excluded (default 40)")
    ap.add_argument("--min-rounds", type=int, default=20, help="at least this many rounds per case (default 20)")
    ap.add_argument("--warmup", type=int, default=5,
                    help="untimed steps of each method before the rounds (compilation happens here; default 5)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep-denormals", action="store_true", help="do not flush denormal floats to zero")
    ap.add_argument("--reference", action="store_true",
                    help="also time hand-written twins of the mixed steps (no library code)")
    ap.add_argument("--models", "--cases", nargs="+", default=None, metavar="CASE",
                    help=f"cases to run (default all): {' '.join(CASE_NAMES)}")
    ap.add_argument("--compile-backend", default="auto",
                    help="torch.compile backend of paper-cnn-compiled: auto (inductor if it works here, "
                         "else aot_eager), inductor, aot_eager, eager (default auto)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the global generator (dropout) and the round order")
    a = ap.parse_args(argv)
    if not (math.isfinite(a.seconds) and a.seconds >= 0):
        ap.error(f"--seconds must be a finite number >= 0; got {a.seconds}")
    if a.min_rounds < 1:
        ap.error(f"--min-rounds must be >= 1; got {a.min_rounds}")
    if a.warmup < 1:
        ap.error(f"--warmup must be >= 1; got {a.warmup}")
    if a.compile_backend != "auto" and (not a.models or "paper-cnn-compiled" in a.models):
        backends = torch._dynamo.list_backends(exclude_tags=())
        if a.compile_backend not in backends:
            ap.error(f"--compile-backend: unknown backend {a.compile_backend!r}; allowed: auto, {', '.join(backends)}")
    unknown = [m for m in a.models or () if m not in CASE_NAMES]
    if unknown:
        ap.error(f"--models: unknown case(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(CASE_NAMES)}")
    try:
        a.device = torch.device(a.device)
    except RuntimeError:
        ap.error(f"--device must be a torch device such as cpu or cuda; got {a.device!r}")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    """Run the cases; a case that fails prints {"model", "error"} and the others still run.
    Returns 1 if any case failed, else 0."""
    a = parse_args(argv)
    if not a.keep_denormals:
        torch.set_flush_denormal(True)
    torch.manual_seed(a.seed)  # dropout (small-resnet, bert) draws from the global generator
    order = random.Random(a.seed)
    failed = False
    for name in a.models or CASE_NAMES:
        backend, why = (None, None)
        if name == "paper-cnn-compiled":
            backend, why = pick_backend(a.compile_backend)
        try:
            case = build_case(name, a.device, backend)
        except ImportError as e:
            print(json.dumps({"model": name, "skipped": f"{type(e).__name__}: {e}"}), flush=True)
            continue
        if why:
            case.info["compile_fallback_reason"] = why
        try:
            rows = run_case(case, a, a.device, order)
        except Exception as e:  # report it and go on with the other cases
            failed = True
            print(json.dumps({"model": name, "error": f"{type(e).__name__}: {e}"}), flush=True)
            rows = []
        for row in rows:
            print(json.dumps(row), flush=True)
        del case
        if backend is not None:
            torch._dynamo.reset()
    return int(failed)

if __name__ == "__main__":
    sys.exit(main())
