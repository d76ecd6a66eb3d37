"""Hugging Face models as they are (tiny configs, random weights, no downloads), mixed by block name.

Every mixed forward is checked against an independent forward hook written here, which computes
``lam*h + (1-lam)*h[perm]`` from ``mixer.last_plan``; gradients must reach every parameter, and
eval mode must give the model's own output.
"""

from __future__ import annotations

import pytest
import torch

import manifold_mixup as mm

tf = pytest.importorskip("transformers")

K = 3  # classes
V = 64  # vocabulary
B, T = 4, 8  # batch, sequence length


def _build(make):
    """A model from ``make()`` with weights drawn from seed 0, leaving the global random state alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = make()
    return model.train()


def bert():
    cfg = tf.BertConfig(vocab_size=V, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=T, num_labels=K, initializer_range=0.5,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return _build(lambda: tf.BertForSequenceClassification(cfg))


def gpt2():
    cfg = tf.GPT2Config(vocab_size=V, n_positions=T, n_embd=16, n_layer=2, n_head=2, num_labels=K,
                        pad_token_id=0, bos_token_id=1, eos_token_id=1, initializer_range=0.5,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return _build(lambda: tf.GPT2ForSequenceClassification(cfg))


def vit():
    cfg = tf.ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2,
                       num_attention_heads=2, intermediate_size=32, num_labels=K, initializer_range=0.5,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return _build(lambda: tf.ViTForImageClassification(cfg))


def resnet():
    cfg = tf.ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                          layer_type="basic", num_labels=K)
    return _build(lambda: tf.ResNetForImageClassification(cfg))


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


def independent_logits(model, name, plan, *args, **kwargs):
    """The model's logits with its module ``name`` mixed by a hook written here, from a LastPlan."""
    perm, lam = plan.perm, plan.lam

    def mix(h):
        w = lam.to(h.dtype).reshape(-1, *([1] * (h.dim() - 1)))
        return w * h + (1 - w) * h[perm]

    def hook(module, inputs, output):
        if isinstance(output, tuple):
            return (mix(output[0]), *output[1:])
        return mix(output)

    handle = dict(model.named_modules())[name].register_forward_hook(hook)
    try:
        return model(*args, **kwargs).logits
    finally:
        handle.remove()


def assert_every_parameter_gets_gradient(model, logits, targets):
    model.zero_grad()
    mm.soft_cross_entropy(logits, targets).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"no gradient reached {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def select_for(model, name, *args, **kwargs):
    return {name: 0} if block_output_is_tuple(model, name, *args, **kwargs) else None


# -- text models: extra keyword arguments and mapping batches --------------------------------------

@pytest.mark.parametrize("make, blocks", [
    (bert, ("bert.encoder.layer.0", "bert.encoder.layer.1")),
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
    expected = independent_logits(model, name, plan, ids, attention_mask=mask)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    onehot = torch.nn.functional.one_hot(y, K).float()
    lam = plan.lam[:, None].float()
    torch.testing.assert_close(targets, lam * onehot + (1 - lam) * onehot[plan.perm])
    assert_every_parameter_gets_gradient(model, logits, targets)


@pytest.mark.parametrize("make, blocks", [
    (bert, ("bert.encoder.layer.0",)),
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
    expected = independent_logits(model, name, two.last_plan, input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(logits_map, expected, atol=1e-5, rtol=0)
    assert_every_parameter_gets_gradient(model, logits_map, targets_map)


def test_tuple_output_mixed_through_select_index_and_model_output_through_select_key():
    model = bert()
    ids, mask, y = text_batch(seed=2)
    attention = "bert.encoder.layer.1.attention"  # returns (hidden states, attention weights ...)
    assert block_output_is_tuple(model, attention, ids, attention_mask=mask)
    mixer = mm.ManifoldMixup(model, [attention], select={attention: 0}, generator=torch.Generator().manual_seed(4))
    logits, targets = mixer(ids, y, attention_mask=mask)
    expected = independent_logits(model, attention, mixer.last_plan, ids, attention_mask=mask)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    assert_every_parameter_gets_gradient(model, logits, targets)

    # the whole encoder returns a ModelOutput (a mapping): mix its last_hidden_state by key
    enc = mm.ManifoldMixup(model, ["bert.encoder"], select={"bert.encoder": "last_hidden_state"},
                           generator=torch.Generator().manual_seed(5))
    logits, _ = enc(ids, y, attention_mask=mask)
    perm, lam = enc.last_plan.perm, enc.last_plan.lam

    def hook(module, inputs, output):
        h = output.last_hidden_state
        output["last_hidden_state"] = lam[:, None, None] * h + (1 - lam[:, None, None]) * h[perm]
        return output

    handle = model.bert.encoder.register_forward_hook(hook)
    try:
        expected = model(ids, attention_mask=mask).logits
    finally:
        handle.remove()
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_eval_mode_gives_the_model_own_output():
    model = bert()
    ids, mask, y = text_batch(seed=3)
    mixer = mm.ManifoldMixup(model, [first_block(model, "bert.encoder.layer.0")],
                             generator=torch.Generator().manual_seed(0))
    model.eval()
    with torch.no_grad():
        logits, targets = mixer(ids, y, attention_mask=mask)
        plain = model(ids, attention_mask=mask).logits
    assert torch.equal(logits, plain)
    assert torch.equal(targets, torch.nn.functional.one_hot(y, K).float())


# -- padding masks --------------------------------------------------------------------------------

def test_each_mixed_row_keeps_its_own_attention_mask():
    """Row 0 (3 tokens) is mixed with row 1 (8 tokens). Row 0 keeps its own mask, so from the mixing
    point on, positions 3..7, where only the partner has tokens, are not attended to by row 0.

    Mixed at the embeddings (position-wise: position t of a row depends only on that row's token
    t), the partner's tokens past row 0's length do not reach row 0's output at all. Mixed at a
    deeper block, they do reach it, but only through the partner's hidden states at positions
    0..2, which attended to the partner's whole sequence before the mixing point.
    """
    model = bert()
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


# -- vision models -------------------------------------------------------------------------------

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
    expected = independent_logits(model, name, mixer.last_plan, x)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    assert_every_parameter_gets_gradient(model, logits, targets)

    # the same with a mapping batch
    again = mm.ManifoldMixup(model, [name], alpha=2.0, select=select, generator=torch.Generator().manual_seed(1))
    logits_map, targets_map = again({"pixel_values": x}, y)
    assert torch.equal(again.last_plan.perm, mixer.last_plan.perm)
    torch.testing.assert_close(logits_map, independent_logits(model, name, again.last_plan, pixel_values=x),
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
    w = lam[:, None, None, None]
    expected = model(pixel_values=w * x + (1 - w) * x[perm]).logits
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    assert_every_parameter_gets_gradient(model, logits, targets)


def test_token_ids_mixed_at_input_is_an_error_that_points_to_the_embeddings():
    model = bert()
    ids, mask, y = text_batch()
    mixer = mm.ManifoldMixup(model, ["input"], generator=torch.Generator().manual_seed(0))
    with pytest.raises((TypeError, ValueError), match="embeddings"):
        mixer(ids, y, attention_mask=mask)
