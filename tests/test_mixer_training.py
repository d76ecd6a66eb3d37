"""The mixer under what real training does to a module: activation checkpointing (autograd
recomputes the mixed run in backward), layers skipped on some calls (layerdrop), value checks
on the first calls only, rows whose lambda is 1.

Every mixed step is compared, logits *and parameter gradients*, with the same plan applied by an
independent forward hook (``conftest.HandHook``) on the same weights without the feature.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import HandHook, data, grads
from torch import nn
from torch.utils.checkpoint import checkpoint

import manifold_mixup as mm

CKPT = ["reentrant", "non-reentrant"]


class Block(nn.Module):
    def __init__(self, w: int):
        super().__init__()
        self.fc = nn.Linear(w, w)
        self.act = nn.Tanh()

    def forward(self, h):
        return h + self.act(self.fc(h))


class Blocks(nn.Module):
    """stem -> residual blocks -> head; ``ckpt`` runs each block through torch.utils.checkpoint."""

    def __init__(self, ckpt: str | None = None, w: int = 8, depth: int = 3, d: int = 4, k: int = 3):
        super().__init__()
        self.stem = nn.Linear(d, w)
        self.blocks = nn.ModuleList(Block(w) for _ in range(depth))
        self.head = nn.Linear(w, k)
        self.ckpt = ckpt

    def forward(self, x):
        h = self.stem(x)
        for blk in self.blocks:
            h = blk(h) if self.ckpt is None else checkpoint(blk, h, use_reentrant=self.ckpt == "reentrant")
        return self.head(h)


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
    k = logits.shape[-1]
    onehot = nn.functional.one_hot(y, k).float()
    lam = plan.lam[:, None].float()
    targets = lam * onehot + (1 - lam) * onehot[plan.perm]
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


def no_hooks(model):
    return not any(m._forward_hooks for m in model.modules())


def torch_seeded(seed, make):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


# -- activation checkpointing -------------------------------------------------------------------
@pytest.mark.parametrize("ckpt", CKPT)
@pytest.mark.parametrize("layer", ["blocks.1", "blocks.1.fc", "blocks.1.act", "blocks.2"])
def test_checkpointed_layer_gets_the_gradients_of_the_same_plan_without_checkpointing(ckpt, layer):
    model = torch_seeded(0, lambda: Blocks(ckpt))
    x, y = data(8)
    mixer = mm.ManifoldMixup(model, [layer], alpha=1.0, generator=0)
    for _ in range(3):  # several steps: each call's backward uses that call's plan
        got = mixed_step(mixer, model, x, y)
        assert no_hooks(model)  # the backward is over: the model is the user's again
        plan = mixer.last_plan
        assert not torch.all(plan.lam == 1)
        assert_same(got, reference(model, layer, plan, x, y))


@pytest.mark.parametrize("ckpt", CKPT)
@pytest.mark.parametrize("layer", ["blocks.1", "blocks.1.fc", "blocks.2", "blocks.3"])
def test_per_segment_checkpointing_as_timm_writes_it(ckpt, layer):
    model = torch_seeded(1, lambda: Segments(ckpt))
    x, y = data(8, seed=1)
    mixer = mm.ManifoldMixup(model, [layer], alpha=2.0, generator=1)
    got = mixed_step(mixer, model, x, y)
    assert_same(got, reference(model, layer, mixer.last_plan, x, y))


@pytest.mark.parametrize("ckpt", CKPT)
def test_tuple_block_checkpointed_with_select(ckpt):
    model = torch_seeded(2, lambda: TupleBlocks(ckpt))
    x, y = data(8, seed=2)
    mixer = mm.ManifoldMixup(model, ["layer.1"], select={"layer.1": 0}, generator=2)
    got = mixed_step(mixer, model, x, y)
    assert_same(got, reference(model, "layer.1", mixer.last_plan, x, y, select=0))


@pytest.mark.parametrize("ckpt", CKPT)
def test_nothing_else_is_mixed_after_a_checkpointed_call(ckpt):
    """A plain forward and backward of the same checkpointed model after a mixer step, and a copy
    made then, are the user's model: no mixing, no hook."""
    model = torch_seeded(3, lambda: Blocks(ckpt))
    x, y = data(8, seed=3)
    mixer = mm.ManifoldMixup(model, ["blocks.1"], generator=3)
    mixed_step(mixer, model, x, y)
    teacher = copy.deepcopy(model)
    assert no_hooks(teacher) and no_hooks(model)
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
    model = torch_seeded(4, lambda: Shared(inside=True))
    x, y = data(8, seed=4)
    mixer = mm.ManifoldMixup(model, ["shared"], generator=4)
    with pytest.raises(RuntimeError, match="'shared' runs more than once inside one activation-checkpointed"):
        mixer(x, y)
    assert no_hooks(model)


def test_a_shared_layer_mixed_outside_checkpointing_keeps_the_first_run_rule():
    """Mixed at its first (plain) run; its second, checkpointed run is recomputed unmixed."""
    model = torch_seeded(5, lambda: Shared(inside=False))
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
    model = torch_seeded(7, lambda: Blocks(ckpt))
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
    model = torch_seeded(8, lambda: Blocks("non-reentrant"))
    x, y = data(8, seed=8)
    mixer = mm.ManifoldMixup(model, ["blocks.1"], generator=8)
    logits, targets = mixer(x, y)
    del logits, targets
    got = mixed_step(mixer, model, x, y)
    assert no_hooks(model)
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
    model = torch_seeded(20, lambda: Nested(ckpt))
    x, y = data(8, seed=20)
    mixer = mm.ManifoldMixup(model, [layer], generator=20)
    got = mixed_step(mixer, model, x, y)
    assert_same(got, reference(model, layer, mixer.last_plan, x, y))


@pytest.mark.parametrize("ckpt", CKPT)
def test_a_loss_written_in_one_line_keeps_no_logits_and_is_still_right(ckpt):
    """``soft_cross_entropy(*mixer(x, y)).backward()``: the plan lives with the graph, not with
    a tensor the user holds."""
    model = torch_seeded(21, lambda: Blocks(ckpt))
    x, y = data(8, seed=21)
    mixer = mm.ManifoldMixup(model, ["blocks.1.fc"], generator=21)
    for _ in range(2):
        mm.soft_cross_entropy(*mixer(x, y)).backward()
        got = grads(model)
        plan = mixer.last_plan
        _, ref = reference(model, "blocks.1.fc", plan, x, y)
        for n in ref:
            torch.testing.assert_close(got[n], ref[n], atol=1e-5, rtol=1e-5)
    assert mm.checkpointing.pending() == 0 and no_hooks(model)


@pytest.mark.parametrize("ckpt", CKPT)
def test_a_plain_forward_in_the_same_backward_is_not_mixed(ckpt):
    model = torch_seeded(22, lambda: Blocks(ckpt))
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
    model = torch_seeded(24, lambda: Blocks(ckpt))
    x, y = data(8, seed=24)
    mixer = mm.ManifoldMixup(model, ["blocks.1.fc"], generator=24)
    logits, targets = mixer(x, y)
    mixer.remove()  # the call's backward is still right
    teacher = copy.deepcopy(model)  # a copy made while the backward is pending carries nothing
    assert no_hooks(teacher) and no_hooks(model)
    loss = mm.soft_cross_entropy(logits, targets)
    loss.backward(retain_graph=True)
    loss.backward()
    got = grads(model)
    _, ref = reference(model, "blocks.1.fc", mixer.last_plan, x, y)
    for n in ref:
        torch.testing.assert_close(got[n], 2 * ref[n], atol=1e-5, rtol=1e-5)


def test_a_copy_of_the_mixer_made_while_a_backward_is_pending_works():
    model = torch_seeded(25, lambda: Blocks("non-reentrant"))
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

    model = torch_seeded(26, Siamese)
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

    model = torch_seeded(27, lambda: Offloaded("non-reentrant"))
    x, y = data(8, seed=27)
    mixer = mm.ManifoldMixup(model, ["blocks.1.fc"], generator=27)
    got = mixed_step(mixer, model, x, y)
    assert_same(got, reference(model, "blocks.1.fc", mixer.last_plan, x, y))


# -- compiled siblings ---------------------------------------------------------------------------
@pytest.mark.parametrize("teacher_mode", ["train", "eval"])
def test_another_compiled_instance_between_calls_leaves_the_mixer_right_with_bounded_graphs(teacher_mode):
    """A compiled teacher (same class, other weights) run between mixer calls, with grad: every
    mixer call mixes and equals the eager model with the same plan; no recompile per step."""
    from torch._dynamo.utils import counters

    student = torch_seeded(14, lambda: Blocks(None))
    plain = copy.deepcopy(student)
    teacher = torch.compile(torch_seeded(15, lambda: Blocks(None)), backend="aot_eager")
    run = torch.compile(student, backend="aot_eager")
    x, y = data(8, seed=14)
    run(x)  # traced before the mixer exists
    teacher(x)
    mixer = mm.ManifoldMixup(run, ["blocks.0", "blocks.2"], generator=14)
    graphs = []
    for step in range(8):
        logits, targets = mixer(x, y)
        plan = mixer.last_plan
        with HandHook(plain.get_submodule(plan.layer), plan.perm, plan.lam):
            ref = plain(x)
        torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)
        mm.soft_cross_entropy(logits, targets).backward()
        teacher.train(teacher_mode == "train")
        teacher(x).sum().backward()  # the teacher, with grad, between mixer calls
        teacher.train()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[-1] == graphs[3]  # every graph was there after the first steps


# -- Hugging Face gradient checkpointing ---------------------------------------------------------
tf = pytest.importorskip("transformers")


def bert(k=3):
    cfg = tf.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=k, initializer_range=0.5,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return torch_seeded(0, lambda: tf.BertForSequenceClassification(cfg)).train()


class Toggle:
    """Gives a Hugging Face model the ``ckpt`` switch that ``reference`` turns off."""

    def __init__(self, model):
        self.model = model

    @property
    def ckpt(self):
        return self.model.is_gradient_checkpointing

    @ckpt.setter
    def ckpt(self, on):
        if on:
            self.model.gradient_checkpointing_enable()
        else:
            self.model.gradient_checkpointing_disable()


@pytest.mark.parametrize("layer", ["bert.encoder.layer.1", "bert.encoder.layer.1.attention",
                                   "bert.encoder.layer.1.intermediate"])
@pytest.mark.parametrize("reentrant", [False, True])
def test_hugging_face_gradient_checkpointing(layer, reentrant):
    model = bert()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    g = torch.Generator().manual_seed(0)
    ids, y = torch.randint(0, 64, (4, 10), generator=g), torch.randint(0, 3, (4,), generator=g)
    mask = torch.ones(4, 10, dtype=torch.long)
    mask[0, 6:] = 0
    hooks = [(n, list(m._forward_hooks.values())) for n, m in model.named_modules()]
    select = {layer: 0} if layer.endswith("attention") else None  # (the attention returns a tuple)
    mixer = mm.ManifoldMixup(model, [layer], select=select, generator=0)
    got = mixed_step(mixer, model, ids, y, attention_mask=mask)
    assert [(n, list(m._forward_hooks.values())) for n, m in model.named_modules()] == hooks  # none of the mixer's

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
    assert model.is_gradient_checkpointing


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
    model = torch_seeded(9, lambda: LayerDrop())
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
    model = torch_seeded(10, lambda: LayerDrop(p=0.0))
    x, y = data(8, seed=10)
    mixer = mm.ManifoldMixup(model, ["unused"], generator=10)
    first = mm.manifold._FIRST_CALLS
    for _ in range(first - 1):
        mixer(x, y)
    assert mixer.skipped == {"unused": first - 1} and mixer.last_plan is None
    with pytest.raises(RuntimeError, match=f"'unused' did not run .* of the {first} mixer calls"):
        mixer(x, y)


def test_wav2vec2_with_its_default_layerdrop_trains_without_errors():
    cfg = tf.Wav2Vec2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                            conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8), num_feat_extract_layers=2,
                            num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2, num_labels=3,
                            hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                            mask_time_prob=0.0, classifier_proj_size=8)
    assert cfg.layerdrop == 0.1
    model = torch_seeded(0, lambda: tf.Wav2Vec2ForSequenceClassification(cfg)).train()
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
    model = torch_seeded(11, lambda: Blocks(None))
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


def test_validate_is_checked():
    with pytest.raises(ValueError, match="validate must be one of .*'first', 'always'.*; got 'sometimes'"):
        mm.ManifoldMixup(Blocks(None), ["blocks.0"], validate="sometimes")


def test_a_skipped_call_uses_the_same_draws_as_a_mixed_one():
    """Layer skipping does not move later plans: the stream advances the same either way."""
    x, y = data(8, seed=12)
    plans = []
    for p in (0.0, 0.5):
        model = torch_seeded(12, lambda p=p: LayerDrop(p=p))
        mixer = mm.ManifoldMixup(model, ["blocks.1"], generator=12)
        torch.manual_seed(0)
        for _ in range(12):
            mixer(x, y)
        model.p = 0.0
        mixer(x, y)
        plans.append(mixer.last_plan)
    assert torch.equal(plans[0].perm, plans[1].perm) and torch.equal(plans[0].lam, plans[1].lam)


# -- rows with lambda = 1 ------------------------------------------------------------------------
def test_a_row_with_lambda_one_is_exactly_its_own_row_even_beside_nan():
    h = torch.randn(4, 3)
    h[2] = float("nan")
    h[3, 0] = float("inf")
    perm = torch.tensor([2, 3, 0, 1])
    out = mm.mix(h, mm.MixPlan(perm, torch.tensor([1.0, 1.0, 0.5, 1.0])))
    assert torch.equal(out[0], h[0]) and torch.equal(out[1], h[1])
    assert torch.isinf(out[3, 0]) and torch.equal(out[3, 1:], h[3, 1:])
    assert torch.isnan(out[2]).all()  # (its own row is NaN)


def test_alpha_zero_is_plain_erm_when_a_row_is_not_finite():
    model = torch_seeded(13, lambda: Blocks(None))
    x, y = data(8, seed=13)
    x[3] = float("nan")
    for layer in ("input", "blocks.1"):
        mixer = mm.ManifoldMixup(model, [layer], alpha=0.0, generator=13)
        logits, targets = mixer(x, y)
        plain = model(x)
        assert torch.equal(torch.isnan(logits), torch.isnan(plain))
        torch.testing.assert_close(logits, plain, equal_nan=True, atol=0, rtol=0)
        torch.testing.assert_close(targets, nn.functional.one_hot(y, 3).float())
