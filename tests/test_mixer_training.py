"""The mixer under what real training does to a module: activation checkpointing (autograd
recomputes the mixed run in backward, Hugging Face's included), layers skipped on some calls
(layerdrop), value checks on the first calls only, and DistributedDataParallel.

Every mixed step is compared, logits *and parameter gradients*, with the same plan applied by the
hand-written hook of ``hand_mixing.py`` on the same weights without the feature.
"""

from __future__ import annotations

import copy
import datetime
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import Block, Blocks, Residual, assert_hook_free, data, grads, seeded, tiny_bert
from hand_mixing import HandHook, hand_mix
from torch import nn
from torch.utils.checkpoint import checkpoint

import manifold_mixup as mm

CKPT = ["reentrant", "non-reentrant"]


def checkpoint_seq(functions, x, every=1, use_reentrant=False):
    """Per-segment checkpointing of a sequence of modules, written as timm's ``checkpoint_seq`` does it."""
    def run_function(start, end):
        def forward(_x):
            for j in range(start, end + 1):
                _x = functions[j](_x)
            return _x
        return forward

    n = len(functions)
    for start in range(0, n, every):
        x = checkpoint(run_function(start, min(start + every - 1, n - 1)), x, use_reentrant=use_reentrant)
    return x


class Segments(nn.Module):
    def __init__(self, ckpt: str | None = None, w: int = 8, d: int = 4, k: int = 3):
        super().__init__()
        self.stem = nn.Linear(d, w)
        self.blocks = nn.Sequential(*(Block(w) for _ in range(4)))
        self.head = nn.Linear(w, k)
        self.ckpt = ckpt

    def forward(self, x):
        h = self.stem(x)
        h = self.blocks(h) if self.ckpt is None else checkpoint_seq(self.blocks, h, 2, self.ckpt == "reentrant")
        return self.head(h)


class TupleBlock(nn.Module):
    """A transformers-4.x-style block: returns (hidden states, attention-like extra)."""

    def __init__(self, w: int):
        super().__init__()
        self.fc = nn.Linear(w, w)

    def forward(self, h):
        z = torch.tanh(self.fc(h))
        return h + z, z.detach().mean()


class TupleBlocks(nn.Module):
    def __init__(self, ckpt: str | None = None, w: int = 8, d: int = 4, k: int = 3):
        super().__init__()
        self.stem = nn.Linear(d, w)
        self.layer = nn.ModuleList(TupleBlock(w) for _ in range(2))
        self.head = nn.Linear(w, k)
        self.ckpt = ckpt

    def forward(self, x):
        h = self.stem(x)
        for blk in self.layer:
            out = blk(h) if self.ckpt is None else checkpoint(blk, h, use_reentrant=self.ckpt == "reentrant")
            h = out[0]
        return self.head(h)


def reference(model, name, plan, x, y, select=None, **kwargs):
    """Logits, loss gradients and targets of the same plan by an independent hook, checkpointing off."""
    ckpt, model.ckpt = model.ckpt, None
    try:
        with HandHook(model.get_submodule(name), plan.perm, plan.lam, select):
            logits = model(x, **kwargs)
    finally:
        model.ckpt = ckpt
    targets = hand_mix(nn.functional.one_hot(y, logits.shape[-1]).float(), plan.perm, plan.lam)
    mm.soft_cross_entropy(logits, targets).backward()
    return logits.detach(), grads(model)


def mixed_step(mixer, model, x, y, **kwargs):
    logits, targets = mixer(x, y, **kwargs)
    mm.soft_cross_entropy(logits, targets).backward()
    return logits.detach(), grads(model)


def assert_same(got, want):
    (logits, g), (ref_logits, ref_g) = got, want
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
    for n in ref_g:
        torch.testing.assert_close(g[n], ref_g[n], atol=1e-5, rtol=1e-5, msg=lambda m, n=n: f"gradient of {n}: {m}")


# -- activation checkpointing -------------------------------------------------------------------
@pytest.mark.parametrize("ckpt", CKPT)
@pytest.mark.parametrize("layer", ["blocks.1", "blocks.1.fc", "blocks.1.act", "blocks.2"])
def test_checkpointed_layer_gets_the_gradients_of_the_same_plan_without_checkpointing(ckpt, layer):
    model = seeded(0, lambda: Blocks(ckpt))
    x, y = data(8)
    mixer = mm.ManifoldMixup(model, [layer], alpha=1.0, generator=0)
    for _ in range(3):  # several steps: each call's backward uses that call's plan
        got = mixed_step(mixer, model, x, y)
        assert_hook_free(model.get_submodule(layer))  # the backward is over: the model is the user's again
        assert mm.checkpointing.pending() == 0  # and no mixed run awaits recomputation
        plan = mixer.last_plan
        assert not torch.all(plan.lam == 1)
        assert_same(got, reference(model, layer, plan, x, y))


@pytest.mark.parametrize("ckpt", CKPT)
@pytest.mark.parametrize("layer", ["blocks.1", "blocks.1.fc", "blocks.2", "blocks.3"])
def test_per_segment_checkpointing_as_timm_writes_it(ckpt, layer):
    model = seeded(1, lambda: Segments(ckpt))
    x, y = data(8, seed=1)
    mixer = mm.ManifoldMixup(model, [layer], alpha=2.0, generator=1)
    got = mixed_step(mixer, model, x, y)
    assert_same(got, reference(model, layer, mixer.last_plan, x, y))


@pytest.mark.parametrize("ckpt", CKPT)
def test_tuple_block_checkpointed_with_select(ckpt):
    model = seeded(2, lambda: TupleBlocks(ckpt))
    x, y = data(8, seed=2)
    mixer = mm.ManifoldMixup(model, ["layer.1"], select={"layer.1": 0}, generator=2)
    got = mixed_step(mixer, model, x, y)
    assert_same(got, reference(model, "layer.1", mixer.last_plan, x, y, select=0))


@pytest.mark.parametrize("ckpt", CKPT)
def test_nothing_else_is_mixed_after_a_checkpointed_call(ckpt):
    """A plain forward and backward of the same checkpointed model after a mixer step, and a copy
    made then, are the user's model: no mixing, no hook."""
    model = seeded(3, lambda: Blocks(ckpt))
    x, y = data(8, seed=3)
    mixer = mm.ManifoldMixup(model, ["blocks.1"], generator=3)
    mixed_step(mixer, model, x, y)
    teacher = copy.deepcopy(model)
    assert_hook_free(teacher.blocks[1], model.blocks[1])
    out = model(x)
    nn.functional.cross_entropy(out, y).backward()
    g = grads(model)
    model.ckpt = None
    plain = model(x)
    nn.functional.cross_entropy(plain, y).backward()
    torch.testing.assert_close(out, plain, atol=1e-6, rtol=0)
    for n, v in grads(model).items():
        torch.testing.assert_close(g[n], v, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(teacher(x), plain, atol=1e-6, rtol=0)


class Shared(nn.Module):
    """One module run twice inside (``inside``) or around checkpointed code."""

    def __init__(self, inside: bool, w: int = 8, d: int = 4, k: int = 3):
        super().__init__()
        self.stem = nn.Linear(d, w)
        self.shared = nn.Linear(w, w)
        self.head = nn.Linear(w, k)
        self.inside = inside

    def forward(self, x):
        h = self.stem(x)
        if self.inside:
            h = checkpoint(lambda z: self.shared(torch.tanh(self.shared(z))), h, use_reentrant=False)
        else:
            h = torch.tanh(self.shared(h))
            h = checkpoint(self.shared, h, use_reentrant=False)
        return self.head(h)


def test_a_layer_run_twice_inside_checkpointed_code_is_an_error_naming_it():
    model = seeded(4, lambda: Shared(inside=True))
    x, y = data(8, seed=4)
    mixer = mm.ManifoldMixup(model, ["shared"], generator=4)
    with pytest.raises(RuntimeError, match="'shared' runs more than once inside one activation-checkpointed"):
        mixer(x, y)
    assert_hook_free(model.shared)


def test_a_shared_layer_mixed_outside_checkpointing_keeps_the_first_run_rule():
    """Mixed at its first (plain) run; its second, checkpointed run is recomputed unmixed."""
    model = seeded(5, lambda: Shared(inside=False))
    x, y = data(8, seed=5)
    mixer = mm.ManifoldMixup(model, ["shared"], generator=5)
    with pytest.warns(UserWarning, match="first call only"):
        logits, targets = mixer(x, y)
    mm.soft_cross_entropy(logits, targets).backward()
    got = logits.detach(), grads(model)
    plan = mixer.last_plan
    with HandHook(model.shared, plan.perm, plan.lam):
        ref = model(x)  # (the hand hook mixes the first run only)
    mm.soft_cross_entropy(ref, targets).backward()
    assert_same(got, (ref.detach(), grads(model)))


@pytest.mark.parametrize("ckpt", [None, *CKPT])
@pytest.mark.parametrize("layers", [["blocks.1"], ["blocks.0", "blocks.2"]])
def test_two_calls_before_one_backward(ckpt, layers):
    """Gradient accumulation over two mixer calls, one backward: each call's recomputation gets
    that call's plan (same layer or not)."""
    model = seeded(7, lambda: Blocks(ckpt))
    x, y = data(8, seed=7)
    mixer = mm.ManifoldMixup(model, layers, generator=7)
    l1, t1 = mixer(x, y)
    p1 = mixer.last_plan
    l2, t2 = mixer(x, y)
    p2 = mixer.last_plan
    (mm.soft_cross_entropy(l1, t1) + mm.soft_cross_entropy(l2, t2)).backward()
    g = grads(model)
    loss = 0
    model.ckpt = None
    for p, t in ((p1, t1), (p2, t2)):
        with HandHook(model.get_submodule(p.layer), p.perm, p.lam):
            loss = loss + mm.soft_cross_entropy(model(x), t)
    loss.backward()
    for n, v in grads(model).items():
        torch.testing.assert_close(g[n], v, atol=1e-5, rtol=1e-5)


def test_a_dropped_graph_does_not_block_the_next_checkpointed_step():
    """A step whose loss is thrown away (a skipped non-finite loss) leaves nothing pending."""
    model = seeded(8, lambda: Blocks("non-reentrant"))
    x, y = data(8, seed=8)
    mixer = mm.ManifoldMixup(model, ["blocks.1"], generator=8)
    logits, targets = mixer(x, y)
    del logits, targets
    got = mixed_step(mixer, model, x, y)
    assert_hook_free(model.blocks[1])
    assert_same(got, reference(model, "blocks.1", mixer.last_plan, x, y))


class Nested(nn.Module):
    """A checkpointed outer piece holding a checkpointed inner block (nested checkpoints)."""

    def __init__(self, ckpt: str | None = None, w: int = 8, d: int = 4, k: int = 3):
        super().__init__()
        self.stem = nn.Linear(d, w)
        self.inner = Block(w)
        self.outer = Block(w)
        self.head = nn.Linear(w, k)
        self.ckpt = ckpt

    def forward(self, x):
        h = self.stem(x)
        if self.ckpt is None:
            return self.head(self.outer(self.inner(h)))
        r = self.ckpt == "reentrant"
        h = checkpoint(lambda z: self.outer(checkpoint(self.inner, z, use_reentrant=r)), h, use_reentrant=r)
        return self.head(h)


@pytest.mark.parametrize("ckpt", CKPT)
@pytest.mark.parametrize("layer", ["inner", "inner.fc", "outer.act"])
def test_nested_checkpoints(ckpt, layer):
    model = seeded(20, lambda: Nested(ckpt))
    x, y = data(8, seed=20)
    mixer = mm.ManifoldMixup(model, [layer], generator=20)
    got = mixed_step(mixer, model, x, y)
    assert_same(got, reference(model, layer, mixer.last_plan, x, y))


@pytest.mark.parametrize("ckpt", CKPT)
def test_a_loss_written_in_one_line_keeps_no_logits_and_is_still_right(ckpt):
    """``soft_cross_entropy(*mixer(x, y)).backward()``: the plan lives with the graph, not with
    a tensor the user holds."""
    model = seeded(21, lambda: Blocks(ckpt))
    x, y = data(8, seed=21)
    mixer = mm.ManifoldMixup(model, ["blocks.1.fc"], generator=21)
    for _ in range(2):
        mm.soft_cross_entropy(*mixer(x, y)).backward()
        got = grads(model)
        plan = mixer.last_plan
        _, ref = reference(model, "blocks.1.fc", plan, x, y)
        for n in ref:
            torch.testing.assert_close(got[n], ref[n], atol=1e-5, rtol=1e-5)
    assert mm.checkpointing.pending() == 0
    assert_hook_free(model.blocks[1].fc)


@pytest.mark.parametrize("ckpt", CKPT)
def test_a_plain_forward_in_the_same_backward_is_not_mixed(ckpt):
    model = seeded(22, lambda: Blocks(ckpt))
    x, y = data(8, seed=22)
    x2, y2 = data(8, seed=23)
    mixer = mm.ManifoldMixup(model, ["blocks.1.fc"], generator=22)
    logits, targets = mixer(x, y)
    (mm.soft_cross_entropy(logits, targets) + nn.functional.cross_entropy(model(x2), y2)).backward()
    got = grads(model)
    plan = mixer.last_plan
    model.ckpt = None
    with HandHook(model.blocks[1].fc, plan.perm, plan.lam):
        loss = mm.soft_cross_entropy(model(x), targets)
    (loss + nn.functional.cross_entropy(model(x2), y2)).backward()
    for n, v in grads(model).items():
        torch.testing.assert_close(got[n], v, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ckpt", CKPT)
def test_retain_graph_backward_twice_and_remove_before_backward(ckpt):
    model = seeded(24, lambda: Blocks(ckpt))
    x, y = data(8, seed=24)
    mixer = mm.ManifoldMixup(model, ["blocks.1.fc"], generator=24)
    logits, targets = mixer(x, y)
    mixer.remove()  # the call's backward is still right
    teacher = copy.deepcopy(model)  # a copy made while the backward is pending carries nothing
    assert_hook_free(teacher.blocks[1].fc, model.blocks[1].fc)
    loss = mm.soft_cross_entropy(logits, targets)
    loss.backward(retain_graph=True)
    loss.backward()
    got = grads(model)
    _, ref = reference(model, "blocks.1.fc", mixer.last_plan, x, y)
    for n in ref:
        torch.testing.assert_close(got[n], 2 * ref[n], atol=1e-5, rtol=1e-5)


def test_a_copy_of_the_mixer_made_while_a_backward_is_pending_works():
    model = seeded(25, lambda: Blocks("non-reentrant"))
    x, y = data(8, seed=25)
    mixer = mm.ManifoldMixup(model, ["blocks.1.fc"], generator=25)
    logits, targets = mixer(x, y)
    twin = copy.deepcopy(mixer)
    mm.soft_cross_entropy(logits, targets).backward()
    grads(model)
    got = mixed_step(twin, twin.model, x, y)
    assert_same(got, reference(twin.model, "blocks.1.fc", twin.last_plan, x, y))


def test_a_frozen_module_run_twice_without_grad_keeps_the_first_run_rule():
    """No grad inside a call with grad is not checkpointing: the first-run rule, with its warning."""
    class Siamese(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Linear(4, 8)
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            with torch.no_grad():
                a, b = self.enc(x), self.enc(x.flip(0))
            return self.head(torch.cat([a, b], 1))

    model = seeded(26, Siamese)
    x, y = data(8, seed=26)
    mixer = mm.ManifoldMixup(model, ["enc"], generator=26)
    with pytest.warns(UserWarning, match="first call only"):
        logits, targets = mixer(x, y)
    plan = mixer.last_plan
    with HandHook(model.enc, plan.perm, plan.lam):
        torch.testing.assert_close(logits, model(x), atol=1e-6, rtol=0)


def test_saved_tensor_hooks_inside_a_checkpointed_block_do_not_hide_it():
    class Offloaded(Blocks):
        def forward(self, x):
            h = self.stem(x)
            for blk in self.blocks:
                h = checkpoint(lambda z, blk=blk: self._offload(blk, z), h, use_reentrant=False) if self.ckpt else blk(h)
            return self.head(h)

        @staticmethod
        def _offload(blk, z):
            with torch.autograd.graph.save_on_cpu():
                return blk(z)

    model = seeded(27, lambda: Offloaded("non-reentrant"))
    x, y = data(8, seed=27)
    mixer = mm.ManifoldMixup(model, ["blocks.1.fc"], generator=27)
    got = mixed_step(mixer, model, x, y)
    assert_same(got, reference(model, "blocks.1.fc", mixer.last_plan, x, y))


# -- Hugging Face gradient checkpointing ---------------------------------------------------------
def bert():
    return tiny_bert(layers=3, positions=16)


class Toggle:
    """Gives a Hugging Face model the ``ckpt`` switch that ``reference`` turns off."""

    def __init__(self, model):
        self.model = model

    @property
    def ckpt(self):
        return checkpointing_on(self.model)

    @ckpt.setter
    def ckpt(self, on):
        set_checkpointing(self.model, on)


def set_checkpointing(model, on: bool, **kwargs) -> None:
    """Hugging Face's activation checkpointing on or off: ``activation_checkpointing_*`` since
    transformers 5.x deprecated ``gradient_checkpointing_*``, the older name before (pyproject
    allows transformers >= 4.40)."""
    new = hasattr(model, "activation_checkpointing_enable")
    if not on:
        (model.activation_checkpointing_disable if new else model.gradient_checkpointing_disable)()
    elif new:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs or None)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs or None)


def checkpointing_on(model) -> bool:
    if hasattr(model, "is_activation_checkpointing"):
        return model.is_activation_checkpointing
    return model.is_gradient_checkpointing


@pytest.mark.parametrize("layer", ["bert.encoder.layer.1", "bert.encoder.layer.1.attention",
                                   "bert.encoder.layer.1.intermediate"])
@pytest.mark.parametrize("reentrant", [False, True])
def test_hugging_face_gradient_checkpointing(layer, reentrant):
    model, fresh = bert(), bert()  # (the same weights)
    for m in (model, fresh):
        set_checkpointing(m, True, use_reentrant=reentrant)
    g = torch.Generator().manual_seed(0)
    ids, y = torch.randint(0, 64, (4, 10), generator=g), torch.randint(0, 3, (4,), generator=g)
    mask = torch.ones(4, 10, dtype=torch.long)
    mask[0, 6:] = 0
    select = {layer: 0} if layer.endswith("attention") else None  # (the attention returns a tuple)
    mixer = mm.ManifoldMixup(model, [layer], select=select, generator=0)
    got = mixed_step(mixer, model, ids, y, attention_mask=mask)
    # nothing of the mixer is left: a plain step gives what a model that never met one gives
    assert mm.checkpointing.pending() == 0
    plain = []
    for m in (model, fresh):
        logits = m(ids, attention_mask=mask).logits
        nn.functional.cross_entropy(logits, y).backward()
        plain.append((logits.detach(), grads(m)))
    assert_same(*plain)

    class Wrapped(Toggle):
        def get_submodule(self, name):
            return self.model.get_submodule(name)

        def __call__(self, x, **kw):
            return self.model(x, **kw).logits

        def named_parameters(self):
            return self.model.named_parameters()

        def zero_grad(self, set_to_none=True):
            self.model.zero_grad(set_to_none=set_to_none)

    ref = reference(Wrapped(model), layer, mixer.last_plan, ids, y, select=select and 0, attention_mask=mask)
    assert_same(got, ref)
    assert checkpointing_on(model)


# -- layers skipped on some calls ----------------------------------------------------------------
class LayerDrop(nn.Module):
    """Blocks skipped with probability ``p`` in training (as layerdrop and stochastic depth do)."""

    def __init__(self, p: float = 0.4, w: int = 8, d: int = 4, k: int = 3):
        super().__init__()
        self.stem = nn.Linear(d, w)
        self.blocks = nn.ModuleList(Block(w) for _ in range(3))
        self.unused = nn.Linear(w, w)
        self.head = nn.Linear(w, k)
        self.p = p

    def forward(self, x):
        h = self.stem(x)
        for blk in self.blocks:
            if self.training and torch.rand(()) < self.p:
                continue
            h = blk(h)
        return self.head(h)


def test_a_skipped_layer_makes_an_erm_step_and_is_counted():
    model = seeded(9, lambda: LayerDrop())
    x, y = data(8, seed=9)
    mixer = mm.ManifoldMixup(model, ["blocks.1", "blocks.2"], generator=9)
    runs = {n: 0 for n in ("blocks.1", "blocks.2")}
    counters = [model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: runs.__setitem__(n, runs[n] + 1))
                for n in runs]
    torch.manual_seed(0)
    drawn = {n: 0 for n in runs}
    for _ in range(30):
        before = dict(runs)
        state = torch.random.get_rng_state()
        logits, targets = mixer(x, y)
        ran = {n: runs[n] > before[n] for n in runs}
        plan = mixer.last_plan
        if plan is None:  # an ERM step: unmixed targets
            torch.testing.assert_close(targets, nn.functional.one_hot(y, 3).float())
            missed = [n for n in runs if not ran[n]]
            assert missed
        else:
            drawn[plan.layer] += 1
            assert ran[plan.layer]
            torch.random.set_rng_state(state)  # the same layers dropped in the reference
            for h in counters:
                h.remove()
            with HandHook(model.get_submodule(plan.layer), plan.perm, plan.lam):
                ref = model(x)
            counters = [model.get_submodule(n).register_forward_hook(
                lambda m, a, o, n=n: runs.__setitem__(n, runs[n] + 1)) for n in runs]
            torch.testing.assert_close(logits, ref, atol=1e-6, rtol=0)
        model.zero_grad()
    skipped = mixer.skipped
    assert sum(skipped.values()) > 0 and sum(drawn.values()) > 0
    assert sum(skipped.values()) + sum(drawn.values()) == 30


def test_a_layer_that_never_runs_is_an_error_naming_it():
    model = seeded(10, lambda: LayerDrop(p=0.0))
    x, y = data(8, seed=10)
    mixer = mm.ManifoldMixup(model, ["unused"], generator=10)
    calls = 0
    with pytest.raises(RuntimeError, match="'unused' did not run") as err:
        while calls < 100:
            mixer(x, y)
            calls += 1
            assert mixer.skipped == {"unused": calls} and mixer.last_plan is None  # the first calls: skips
    assert calls + 1 == 8 and f"of the {calls + 1} mixer calls" in str(err.value)  # README: the first 8 calls


def test_wav2vec2_with_its_default_layerdrop_trains_without_errors():
    tf = pytest.importorskip("transformers")
    cfg = tf.Wav2Vec2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                            conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8), num_feat_extract_layers=2,
                            num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2, num_labels=3,
                            hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                            mask_time_prob=0.0, classifier_proj_size=8)
    assert cfg.layerdrop == 0.1
    model = seeded(0, lambda: tf.Wav2Vec2ForSequenceClassification(cfg)).train()
    layer = "wav2vec2.encoder.layers.2"
    mixer = mm.ManifoldMixup(model, [layer], generator=0)
    g = torch.Generator().manual_seed(0)
    audio, y = torch.randn(4, 400, generator=g), torch.randint(0, 3, (4,), generator=g)
    torch.manual_seed(0)
    mixed = 0
    for _ in range(40):
        logits, targets = mixer(audio, y)
        mixed += mixer.last_plan is not None
    assert mixer.skipped[layer] > 0 and mixed + mixer.skipped[layer] == 40


# -- values checked on the first calls only -------------------------------------------------------
class ValueReads:
    """Counts reads of tensor values into Python (``item``, ``bool``, ``int``, ``float``, ``tolist``)."""

    NAMES = ("item", "__bool__", "__int__", "__float__", "tolist")

    def __init__(self, monkeypatch):
        self.count = 0
        for name in self.NAMES:
            orig = getattr(torch.Tensor, name)

            def counted(t, *a, _orig=orig, **k):
                self.count += 1
                return _orig(t, *a, **k)
            monkeypatch.setattr(torch.Tensor, name, counted)


def test_after_the_first_calls_a_mixed_step_reads_no_tensor_values(monkeypatch):
    model = seeded(11, lambda: Blocks(None))
    x, y = data(8, seed=11)
    soft = nn.functional.one_hot(y, 3).float()
    for targets in (y, soft):
        mixer = mm.ManifoldMixup(model, ["blocks.0", "blocks.2"], generator=11)
        reads = ValueReads(monkeypatch)
        for _ in range(mm.manifold.VALIDATE_CALLS):
            mixer(x, targets)
        assert reads.count > 0  # the first calls check the labels
        reads.count = 0
        for _ in range(5):
            mixer(x, targets)
        assert reads.count == 0
        monkeypatch.undo()
    always = mm.ManifoldMixup(model, ["blocks.0"], generator=11, validate="always")
    for _ in range(mm.manifold.VALIDATE_CALLS):
        always(x, y)
    reads = ValueReads(monkeypatch)
    always(x, y)
    assert reads.count > 0
    bad = y.clone()
    bad[0] = 7
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\); got 7"):
        always(x, bad)


def test_a_skipped_call_uses_the_same_draws_as_a_mixed_one():
    """Layer skipping does not move later plans: the stream advances the same either way."""
    x, y = data(8, seed=12)
    plans = []
    for p in (0.0, 0.5):
        model = seeded(12, lambda p=p: LayerDrop(p=p))
        mixer = mm.ManifoldMixup(model, ["blocks.1"], generator=12)
        torch.manual_seed(0)
        for _ in range(12):
            mixer(x, y)
        model.p = 0.0
        mixer(x, y)
        plans.append(mixer.last_plan)
    assert torch.equal(plans[0].perm, plans[1].perm) and torch.equal(plans[0].lam, plans[1].lam)


# -- DistributedDataParallel ----------------------------------------------------------------------
WORLD = 2
TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_gradient(model: nn.Module, x, y, plan) -> torch.Tensor:
    """This rank's gradient without DDP: the block's output mixed by the hand-written hook."""
    with HandHook(model.block, plan.perm, plan.lam):
        targets = hand_mix(nn.functional.one_hot(y, 4).float(), plan.perm, plan.lam)
        loss = mm.soft_cross_entropy(model(x), targets)
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))])


def _ddp_worker(rank: int, port: int) -> None:
    """One rank: the mixer is given the DDP wrapper and the original layer name."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=TIMEOUT_S))
    try:
        g = torch.Generator().manual_seed(0)
        model = Residual(width=16, d=6, k=4)
        with torch.no_grad():  # the same weights on every rank, from a seed
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        reference = copy.deepcopy(model)
        ddp = nn.parallel.DistributedDataParallel(model)
        # the same data on both ranks: any difference between their plans comes from the rank
        x = torch.randn(8, 6, generator=torch.Generator().manual_seed(1))
        y = torch.randint(0, 4, (8,), generator=torch.Generator().manual_seed(2))

        mixer = mm.ManifoldMixup(ddp, ["block"], alpha=1.0, generator=torch.Generator().manual_seed(0))
        logits, targets = mixer(x, y)
        plan = mixer.last_plan
        assert plan.layer == "block"
        mm.soft_cross_entropy(logits, targets).backward()

        perms = [torch.empty_like(plan.perm) for _ in range(WORLD)]
        lams = [torch.empty_like(plan.lam) for _ in range(WORLD)]
        dist.all_gather(perms, plan.perm)
        dist.all_gather(lams, plan.lam.contiguous())
        assert not (torch.equal(perms[0], perms[1]) and torch.equal(lams[0], lams[1])), "ranks drew the same plan"

        grad = torch.cat([p.grad.flatten() for p in ddp.module.parameters()])
        gathered = [torch.empty_like(grad) for _ in range(WORLD)]
        dist.all_gather(gathered, grad)
        torch.testing.assert_close(gathered[0], gathered[1], rtol=0, atol=0)  # DDP synchronised them

        # and they are the mean of the ranks' own gradients, each under its own plan
        local = _local_gradient(reference, x, y, plan)
        dist.all_reduce(local)
        torch.testing.assert_close(grad, local / WORLD, rtol=1e-5, atol=1e-6)

        # a second step draws a new plan on each rank
        mixer(x, y)
        assert not (torch.equal(mixer.last_plan.perm, plan.perm) and torch.equal(mixer.last_plan.lam, plan.lam))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # ~7-11 s on 2 CPU cores: two fresh interpreters import torch, and DDP's constructor takes ~4 s
@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_two_rank_ddp_mixes_with_rank_plans_and_synchronised_gradients():
    """Two processes on the CPU (gloo): each rank draws its own plans; DDP synchronises the gradients."""
    ctx = mp.spawn(_ddp_worker, args=(_free_port(),), nprocs=WORLD, join=False)
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=TIMEOUT_S + 30)
    try:
        while not ctx.join(timeout=1):  # raises (with the rank's traceback) if a rank failed
            if datetime.datetime.now() > deadline:
                pytest.fail(f"the two DDP ranks did not finish within {TIMEOUT_S + 30} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
