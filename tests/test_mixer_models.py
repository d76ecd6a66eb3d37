"""The mixer on the models users bring: a ResNet with batch norm and dropout, copies of a mixer
(deepcopy, pickle, its state_dict), compiled models, and Hugging Face models as they are (tiny
configs, random weights, no downloads) mixed by block name.

Every mixed forward is checked against the hand-written hook of ``hand_mixing.py`` or a hand
computation; gradients must reach every parameter, and eval mode must give the model's own output.
"""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
from conftest import Blocks, Residual, data, seeded, tiny_bert
from hand_mixing import HandHook, hand_mix
from torch import nn

import manifold_mixup as mm


# -- a ResNet with batch norm and dropout -------------------------------------------------------------
def test_batchnorm_dropout_and_small_resnet():
    torch.manual_seed(0)
    model = mm.models.small_resnet((3, 8, 8), 10)
    x = torch.randn(8, 3, 8, 8)
    y = torch.randint(0, 10, (8,))
    mixer = mm.ManifoldMixup(model, ["block1", "block2", "pool"], alpha=1.0, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        logits, t = mixer(x, y)
        loss = mm.soft_cross_entropy(logits, t)
        opt.zero_grad(); loss.backward(); opt.step()
        assert torch.isfinite(loss)
    model.eval()
    assert torch.equal(mixer(x, y)[0], model(x))


# -- copies of a mixer: deepcopy, pickle, state_dict ---------------------------------------------------
def test_deepcopy_is_an_independent_working_mixer_with_the_same_next_plan():
    model = Residual()
    x, y = data()
    mixer = mm.ManifoldMixup(model, ["stem", "block"], alpha=0.7, generator=3)
    mixer(x, y)
    twin = copy.deepcopy(mixer)
    assert twin.model is not model
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no false "runs more than once" warning
        a, ta = mixer(x, y)
        b, tb = twin(x, y)
    assert mixer.last_plan.layer == twin.last_plan.layer
    assert torch.equal(mixer.last_plan.perm, twin.last_plan.perm) and torch.equal(mixer.last_plan.lam, twin.last_plan.lam)
    assert torch.equal(a, b) and torch.equal(ta, tb)
    with torch.no_grad():  # the copy trains its own model
        twin.model.head.weight.add_(1.0)
    assert not torch.equal(model.head.weight, twin.model.head.weight)


def test_pickle_round_trips_a_mixer_and_state_dict_resumes_the_same_draws():
    model = Residual()
    x, y = data(b=8)
    pol = mm.ConfMix(warmup_epochs=0, confidence="cached")
    mixer = mm.ManifoldMixup(model, ["block"], alpha=pol, generator=5, num_classes=3)
    idx = torch.arange(8)
    mixer(x, y, index=idx)
    clone = pickle.loads(pickle.dumps(mixer))
    clone.model.load_state_dict(model.state_dict())
    a, b = mixer(x, y, index=idx), clone(x, y, index=idx)
    assert torch.equal(a[0], b[0]) and torch.equal(mixer.last_plan.lam, clone.last_plan.lam)
    # a checkpoint of the mixer's own state replays the draws that follow it
    state = mixer.state_dict()
    assert set(state) == {"policy", "stream"}
    first = [mixer(x, y, index=idx)[1] for _ in range(3)]
    fresh = mm.ManifoldMixup(model, ["block"], alpha=mm.ConfMix(warmup_epochs=0, confidence="cached"),
                             generator=99, num_classes=3)
    fresh.load_state_dict(state)
    again = [fresh(x, y, index=idx)[1] for _ in range(3)]
    assert all(torch.equal(p, q) for p, q in zip(first, again))


# -- compiled models ----------------------------------------------------------------------------------
@pytest.mark.parametrize("wrap", ["torch.compile", "model.compile"])
def test_compiled_models_take_the_original_names_without_graph_breaks(wrap):
    torch.manual_seed(0)
    model = Residual()
    plain = copy.deepcopy(model)
    x, y = data(b=6)
    other = torch.compile(copy.deepcopy(plain), backend="aot_eager")
    other(x)  # compiled code of the same structure, traced before any mixer existed
    if wrap == "torch.compile":
        run = torch.compile(model, backend="aot_eager", fullgraph=True)  # fullgraph: a graph break is an error
    else:
        model.compile(backend="aot_eager", fullgraph=True)
        run = model
    run(x)  # the model itself called once before the mixer is made
    mixer = mm.ManifoldMixup(run, ["stem", "block"], alpha=0.5, generator=0)
    ref = mm.ManifoldMixup(plain, ["stem", "block"], alpha=0.5, generator=0)
    for _ in range(4):
        a, ta = mixer(x, y)
        b, tb = ref(x, y)
        assert mixer.last_plan.layer == ref.last_plan.layer
        assert torch.allclose(a, b, atol=1e-6) and torch.equal(ta, tb)
        a.sum().backward()
        assert torch.allclose(run(x), plain(x), atol=1e-6)  # plain calls between mixed ones stay plain
    assert all(p.grad is not None for p in model.parameters())
    if wrap == "torch.compile":  # the wrapper's own names are accepted too
        assert mm.ManifoldMixup(run, ["_orig_mod.block"]).layers == ["block"]


@pytest.mark.parametrize("teacher_mode", ["train", "eval"])
def test_another_compiled_instance_between_calls_leaves_the_mixer_right_with_bounded_graphs(teacher_mode):
    """A compiled teacher (same class, other weights) run between mixer calls, with grad: every
    mixer call mixes and equals the eager model with the same plan; no recompile per step."""
    from torch._dynamo.utils import counters

    student = seeded(14, lambda: Blocks(None))
    plain = copy.deepcopy(student)
    teacher = torch.compile(seeded(15, lambda: Blocks(None)), backend="aot_eager")
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


@pytest.mark.slow
def test_inductor_compiled_model_mixes_like_the_eager_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    plain = copy.deepcopy(model)
    mixer = mm.ManifoldMixup(torch.compile(model), ["1", "3"], alpha=0.5, generator=0)
    ref = mm.ManifoldMixup(plain, ["1", "3"], alpha=0.5, generator=0)
    x, y = data(b=8)
    for _ in range(3):
        (a, ta), (b, tb) = mixer(x, y), ref(x, y)
        assert torch.allclose(a, b, atol=1e-5) and torch.equal(ta, tb)


# -- Hugging Face models ------------------------------------------------------------------------------
K = 3  # classes
V = 64  # vocabulary (tiny_bert's)
B, T = 4, 8  # batch, sequence length


def gpt2():
    tf = pytest.importorskip("transformers")
    cfg = tf.GPT2Config(vocab_size=V, n_positions=T, n_embd=16, n_layer=2, n_head=2, num_labels=K,
                        pad_token_id=0, bos_token_id=1, eos_token_id=1, initializer_range=0.5,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return seeded(0, lambda: tf.GPT2ForSequenceClassification(cfg)).train()


def vit():
    tf = pytest.importorskip("transformers")
    cfg = tf.ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=32, num_labels=K, initializer_range=0.5,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return seeded(0, lambda: tf.ViTForImageClassification(cfg)).train()


def resnet():
    tf = pytest.importorskip("transformers")
    cfg = tf.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                          layer_type="basic", num_labels=K)
    return seeded(0, lambda: tf.ResNetForImageClassification(cfg)).train()


def first_block(model, *candidates: str) -> str:
    """The first of ``candidates`` that the model has (block names moved between transformers versions)."""
    names = dict(model.named_modules())
    for name in candidates:
        if name in names:
            return name
    raise AssertionError(f"none of {candidates} in the model")


def text_batch(seed=0, lengths=(3, 8, 5, 8)):
    """Token ids [B, T] (1..V-1, 0 is padding) and an attention mask [B, T] with the given row lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, V, (B, T), generator=g)
    mask = (torch.arange(T) < torch.tensor(lengths)[:, None]).long()
    ids = ids * mask  # padding positions hold the pad id 0
    y = torch.randint(0, K, (B,), generator=g)
    return ids, mask, y


def image_batch(size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, size, size, generator=g), torch.randint(0, K, (B,), generator=g)


def block_output_is_tuple(model, name, *args, **kwargs) -> bool:
    seen = []
    handle = dict(model.named_modules())[name].register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad(), mm.eval_mode(model):
        model(*args, **kwargs)
    handle.remove()
    return isinstance(seen[0], tuple)


def select_for(model, name, *args, **kwargs):
    return {name: 0} if block_output_is_tuple(model, name, *args, **kwargs) else None


def hooked_logits(model, name, plan, select, *args, **kwargs):
    """The model's logits with its module ``name`` mixed by the hand-written hook (``select``: the
    mixer's selector of that module, or None)."""
    with HandHook(model.get_submodule(name), plan.perm, plan.lam, (select or {}).get(name)):
        return model(*args, **kwargs).logits


def assert_every_parameter_gets_gradient(model, logits, targets):
    model.zero_grad()
    mm.soft_cross_entropy(logits, targets).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("make, blocks", [
    (tiny_bert, ("bert.encoder.layer.0", "bert.encoder.layer.1")),
    (gpt2, ("transformer.h.0", "transformer.h.1")),
])
def test_text_model_mixed_at_a_block_equals_independent_hook(make, blocks):
    model = make()
    ids, mask, y = text_batch()
    name = first_block(model, *blocks)
    select = select_for(model, name, ids, attention_mask=mask)
    mixer = mm.ManifoldMixup(model, [name], alpha=1.0, select=select, generator=torch.Generator().manual_seed(0))
    logits, targets = mixer(ids, y, attention_mask=mask)
    plan = mixer.last_plan
    assert plan.layer == name and logits.shape == (B, K) and targets.shape == (B, K)
    assert not torch.equal(plan.perm, torch.arange(B)) or not torch.all(plan.lam == 1)
    expected = hooked_logits(model, name, plan, select, ids, attention_mask=mask)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(targets, hand_mix(nn.functional.one_hot(y, K).float(), plan.perm, plan.lam))
    assert_every_parameter_gets_gradient(model, logits, targets)


@pytest.mark.parametrize("make, blocks", [
    (tiny_bert, ("bert.encoder.layer.0",)),
    (gpt2, ("transformer.h.0",)),
])
def test_mapping_batch_gives_the_same_as_keyword_arguments(make, blocks):
    model = make()
    ids, mask, y = text_batch(seed=1)
    name = first_block(model, *blocks)
    select = select_for(model, name, ids, attention_mask=mask)
    one = mm.ManifoldMixup(model, [name], select=select, generator=torch.Generator().manual_seed(3))
    two = mm.ManifoldMixup(model, [name], select=select, generator=torch.Generator().manual_seed(3))
    logits_kw, targets_kw = one(ids, y, attention_mask=mask)
    logits_map, targets_map = two({"input_ids": ids, "attention_mask": mask}, y)
    assert torch.equal(one.last_plan.perm, two.last_plan.perm)
    assert torch.equal(one.last_plan.lam, two.last_plan.lam)
    torch.testing.assert_close(logits_map, logits_kw, atol=1e-6, rtol=0)
    torch.testing.assert_close(targets_map, targets_kw)
    expected = hooked_logits(model, name, two.last_plan, select, input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(logits_map, expected, atol=1e-5, rtol=0)
    assert_every_parameter_gets_gradient(model, logits_map, targets_map)


def test_tuple_output_mixed_through_select_index_and_model_output_through_select_key():
    model = tiny_bert()
    ids, mask, y = text_batch(seed=2)
    attention = "bert.encoder.layer.1.attention"  # returns (hidden states, attention weights ...)
    assert block_output_is_tuple(model, attention, ids, attention_mask=mask)
    select = {attention: 0}
    mixer = mm.ManifoldMixup(model, [attention], select=select, generator=torch.Generator().manual_seed(4))
    logits, targets = mixer(ids, y, attention_mask=mask)
    expected = hooked_logits(model, attention, mixer.last_plan, select, ids, attention_mask=mask)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    assert_every_parameter_gets_gradient(model, logits, targets)

    # the whole encoder returns a ModelOutput (a mapping): mix its last_hidden_state by key
    select = {"bert.encoder": "last_hidden_state"}
    enc = mm.ManifoldMixup(model, ["bert.encoder"], select=select, generator=torch.Generator().manual_seed(5))
    logits, _ = enc(ids, y, attention_mask=mask)
    expected = hooked_logits(model, "bert.encoder", enc.last_plan, select, ids, attention_mask=mask)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_eval_mode_gives_the_model_own_output():
    model = tiny_bert()
    ids, mask, y = text_batch(seed=3)
    mixer = mm.ManifoldMixup(model, [first_block(model, "bert.encoder.layer.0")],
                             generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        logits, targets = mixer(ids, y, attention_mask=mask)
        plain = model(ids, attention_mask=mask).logits
    assert torch.equal(logits, plain)
    assert torch.equal(targets, nn.functional.one_hot(y, K).float())


def test_each_mixed_row_keeps_its_own_attention_mask():
    """Row 0 (3 tokens) is mixed with row 1 (8 tokens). Row 0 keeps its own mask, so from the mixing
    point on, positions 3..7, where only the partner has tokens, are not attended to by row 0.

    Mixed at the embeddings (position-wise: position t of a row depends only on that row's token
    t), the partner's tokens past row 0's length do not reach row 0's output at all. Mixed at a
    deeper block, they do reach it, but only through the partner's hidden states at positions
    0..2, which attended to the partner's whole sequence before the mixing point.
    """
    model = tiny_bert()
    ids, mask, y = text_batch(seed=4, lengths=(3, 8, 5, 8))
    changed = ids.clone()
    changed[1, 3:] = ids[1, 3:] % (V - 1) + 1  # other non-pad tokens
    assert not torch.equal(changed[1, 3:], ids[1, 3:])
    plan = mm.MixPlan(torch.tensor([1, 0, 3, 2]), torch.tensor([0.6, 0.7, 0.8, 0.5]))
    mixer = mm.ManifoldMixup(model, ["bert.embeddings", first_block(model, "bert.encoder.layer.0")],
                             generator=torch.Generator().manual_seed(0))

    def run(x, layer):
        with torch.no_grad():
            return mixer(x, y, attention_mask=mask, plan=plan, layer=layer)[0]

    base, moved = run(ids, "bert.embeddings"), run(changed, "bert.embeddings")
    torch.testing.assert_close(moved[0], base[0], atol=1e-6, rtol=0)  # row 0 never sees them
    assert (moved[1] - base[1]).abs().max() > 1e-4  # row 1 attends to its own tokens
    torch.testing.assert_close(moved[2:], base[2:], atol=1e-6, rtol=0)  # rows 2, 3 do not involve row 1

    deep = first_block(model, "bert.encoder.layer.0")
    base, moved = run(ids, deep), run(changed, deep)
    assert (moved[0] - base[0]).abs().max() > 1e-4  # through the partner's states at positions 0..2
    torch.testing.assert_close(moved[2:], base[2:], atol=1e-6, rtol=0)


@pytest.mark.parametrize("make, size, blocks", [
    (vit, 8, ("vit.encoder.layer.1", "vit.layers.1")),
    (resnet, 16, ("resnet.encoder.stages.0",)),
])
def test_vision_model_mixed_at_a_block_equals_independent_hook(make, size, blocks):
    model = make()
    x, y = image_batch(size)
    name = first_block(model, *blocks)
    select = select_for(model, name, x)
    mixer = mm.ManifoldMixup(model, [name], alpha=2.0, select=select, generator=torch.Generator().manual_seed(1))
    logits, targets = mixer(x, y)
    expected = hooked_logits(model, name, mixer.last_plan, select, x)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    assert_every_parameter_gets_gradient(model, logits, targets)

    # the same with a mapping batch
    again = mm.ManifoldMixup(model, [name], alpha=2.0, select=select, generator=torch.Generator().manual_seed(1))
    logits_map, targets_map = again({"pixel_values": x}, y)
    assert torch.equal(again.last_plan.perm, mixer.last_plan.perm)
    torch.testing.assert_close(logits_map, hooked_logits(model, name, again.last_plan, select, pixel_values=x),
                               atol=1e-5, rtol=0)

    model.eval()
    with torch.no_grad():
        logits, _ = mixer(x, y)
        assert torch.equal(logits, model(x).logits)


def test_input_mixing_of_a_mapping_batch_mixes_the_named_key():
    model = vit()
    x, y = image_batch(8, seed=5)
    mixer = mm.ManifoldMixup(model, ["input"], input_key="pixel_values", generator=torch.Generator().manual_seed(2))
    logits, targets = mixer({"pixel_values": x}, y)
    perm, lam = mixer.last_plan.perm, mixer.last_plan.lam
    expected = model(pixel_values=hand_mix(x, perm, lam)).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    assert_every_parameter_gets_gradient(model, logits, targets)
