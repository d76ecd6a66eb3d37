"""The mixer's contract, one call at a time: ``logits, targets = mixer(x, y)`` mixes the hidden
states at one named layer and the targets with the same plan, leaves the model plain outside its
calls and in eval mode, and takes the call forms, layers, lambda modes and targets users bring.

Mixed forwards are compared with a hand computation written out here or with the hand-written
hook of ``hand_mixing.py``. Models and data come from ``conftest.py``; bad input is in
``test_bad_input.py``; user models (Hugging Face, compiled, copies) in ``test_mixer_models.py``;
checkpointing, layerdrop, validation and DDP in ``test_mixer_training.py``.
"""

import copy
import warnings

import numpy as np
import pytest
import torch
from conftest import Blocks, FixedAlpha, KwModel, LastStep, Residual, TupleOut, assert_hook_free, data, grads, seeded
from hand_mixing import HandHook, hand_mix
from torch import nn

import manifold_mixup as mm


def onehot(y, k=3):
    return nn.functional.one_hot(y, k).float()


# -- the one-call contract -------------------------------------------------------------------------
def test_mixed_forward_equals_hand_computation_on_residual_network():
    torch.manual_seed(0)
    model = Residual()
    x, y = data()
    mixer = mm.ManifoldMixup(model, ["block"], alpha=1.0, generator=torch.Generator().manual_seed(1))
    logits, targets = mixer(x, y)
    perm, lam, layer = mixer.last_plan
    assert layer == "block"
    # hand computation: rest(lam*h + (1-lam)*h[perm]) where h is block's output
    h0 = torch.relu(model.stem(x))
    expect = model.head(h0 + hand_mix(model.block(h0), perm, lam))
    assert torch.allclose(logits, expect, atol=1e-6)
    assert torch.allclose(targets, hand_mix(onehot(y), perm, lam))
    assert not torch.allclose(logits, model(x))  # mixing really happened


def test_the_hand_written_reference_agrees_with_the_mixer_and_the_hand_computation():
    model = Residual()
    x, y = data(b=6)
    mixer = mm.ManifoldMixup(model, ["block"], generator=2)
    logits, targets = mixer(x, y)
    perm, lam, _ = mixer.last_plan
    with HandHook(model.block, perm, lam):
        ref = model(x)
    assert torch.allclose(logits, ref, atol=1e-6)
    h0 = torch.relu(model.stem(x))
    assert torch.allclose(ref, model.head(h0 + hand_mix(model.block(h0), perm, lam)), atol=1e-6)
    assert torch.allclose(targets, hand_mix(onehot(y), perm, lam))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = Residual()
    x, y = data()
    for layer in ["input", "stem", "block", "block.0"]:
        model.zero_grad()
        mixer = mm.ManifoldMixup(model, layer, alpha=1.0, generator=torch.Generator().manual_seed(2))
        logits, t = mixer(x, y)
        mm.soft_cross_entropy(logits, t).backward()
        for name, p in model.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, (layer, name)
        mixer.remove()


def test_alpha_zero_reproduces_erm():
    torch.manual_seed(0)
    model = Residual()
    x, y = data()
    mixer = mm.ManifoldMixup(model, ["stem", "block"], alpha=0.0, generator=torch.Generator().manual_seed(0))
    logits, t = mixer(x, y)
    assert torch.equal(logits, model(x))
    assert torch.equal(t, onehot(y))
    # tiny alpha: lambda concentrates at 0 or 1, so each row is (almost) a clean point
    mixer.policy = mm.Constant(1e-4)
    logits, t = mixer(x, y)
    assert torch.allclose(t.max(1).values, torch.ones(6), atol=1e-3)


def test_alpha_zero_is_plain_erm_when_a_row_is_not_finite():
    model = seeded(13, lambda: Blocks(None))
    x, y = data(8, seed=13)
    x[3] = float("nan")
    for layer in ("input", "blocks.1"):
        mixer = mm.ManifoldMixup(model, [layer], alpha=0.0, generator=13)
        logits, targets = mixer(x, y)
        plain = model(x)
        assert torch.equal(torch.isnan(logits), torch.isnan(plain))
        torch.testing.assert_close(logits, plain, equal_nan=True, atol=0, rtol=0)
        torch.testing.assert_close(targets, onehot(y))


def test_model_untouched_outside_calls_in_eval_and_after_remove():
    torch.manual_seed(0)
    model = Residual()
    x, y = data()
    before = model(x).detach()
    with mm.ManifoldMixup(model, ["block"], alpha=2.0, generator=torch.Generator().manual_seed(0)) as mixer:
        assert torch.equal(model(x), before)
        mixer(x, y)
        assert torch.equal(model(x), before)  # plain calls between mixer calls are plain
        assert_hook_free(model)  # no hook is left on the layer after a mixer call
        model.eval()
        logits, t = mixer(x, y)
        assert torch.equal(logits, before)
        model.train()
    # after remove(): outputs and gradients are those of a model that never met a mixer
    fresh = Residual()
    fresh.load_state_dict(model.state_dict())
    model.zero_grad()
    for m in (model, fresh):
        nn.functional.cross_entropy(m(x), y).backward()
    assert torch.equal(model(x), before) and torch.equal(fresh(x), before)
    g, g_fresh = grads(model), grads(fresh)
    assert all(torch.equal(g[n], g_fresh[n]) for n in g)
    with pytest.raises(RuntimeError, match="removed"):
        mixer(x, y)


def test_a_failed_call_leaves_no_hook_and_no_state_behind():
    class Flaky(Residual):
        fail = True

        def forward(self, x):
            if self.fail:
                torch.relu(self.stem(x))
                raise RuntimeError("boom")
            return super().forward(x)

    model = Flaky()
    x, y = data(b=6)
    mixer = mm.ManifoldMixup(model, ["stem"], generator=0)
    twin = copy.deepcopy(mixer)
    with pytest.raises(RuntimeError, match="boom"):
        mixer(x, y)
    assert mixer.last_plan is None and mixer.policy.history() == []  # nothing recorded
    model.fail = False
    twin.model.fail = False
    mixer(x, y), twin(x, y)  # the failed call gave its draws back: the same plan as a copy that never failed
    assert torch.equal(mixer.last_plan.lam, twin.last_plan.lam) and torch.equal(mixer.last_plan.perm, twin.last_plan.perm)
    h = torch.relu(model.stem(x))
    assert torch.equal(model(x), model.head(h + model.block(h)))  # no hook was left on the layer
    logits, _ = mixer(x, y)
    perm, lam, _ = mixer.last_plan
    h = torch.relu(hand_mix(model.stem(x), perm, lam))
    assert torch.allclose(logits, model.head(h + model.block(h)), atol=1e-6)


def test_the_mixer_is_no_module_and_the_public_api_is_small():
    assert not isinstance(mm.ManifoldMixup(Residual(), ["block"]), nn.Module)
    assert len(mm.__all__) <= 25
    for name in mm.__all__:
        assert getattr(mm, name) is not None
    for sub in ("models", "toy", "ensemble", "data"):
        assert getattr(mm, sub).__name__ == f"manifold_mixup.paper.{sub}"  # the kit, by its short name


def test_extra_arguments_mapping_batches_and_logits_function():
    model = KwModel()
    ids = torch.randint(0, 10, (6, 5), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (6,))
    pick = lambda out: out["logits"]  # noqa: E731
    mixer = mm.ManifoldMixup(model, ["body"], generator=1, logits=pick)
    logits, _ = mixer(ids, y, 2.0, mask=torch.ones(6, 1))
    perm, lam, _ = mixer.last_plan
    h = model.body(model.emb(ids).mean(1) * 2.0)
    expect = model.head(torch.relu(hand_mix(h, perm, lam)))
    assert torch.allclose(logits, expect, atol=1e-6)
    same = mm.ManifoldMixup(model, ["body"], generator=1, logits=pick)
    logits2, _ = same({"input_ids": ids, "scale": 2.0}, y)  # a mapping batch: model(**batch)
    assert torch.allclose(logits2, logits, atol=1e-6)


def test_a_replayed_plan_gives_the_same_step():
    model = Residual()
    x, y = data(b=8)
    mixer = mm.ManifoldMixup(model, ["stem", "block"], alpha=0.5, generator=1)
    for _ in range(3):
        logits, targets = mixer(x, y)
    mm.soft_cross_entropy(logits, targets).backward()
    g = grads(model)
    perm, lam, layer = mixer.last_plan
    replay, replay_targets = mixer(x, y, plan=mm.MixPlan(perm, lam), layer=layer)
    assert torch.equal(replay, logits) and torch.equal(replay_targets, targets)
    mm.soft_cross_entropy(replay, replay_targets).backward()
    assert all(torch.equal(v, g[n]) for n, v in grads(model).items())


# -- layers and selectors -----------------------------------------------------------------------------
def test_layer_drawn_by_weights_and_reproducible():
    model = Residual()
    x, y = data()
    names = []
    for _ in range(2):
        mixer = mm.ManifoldMixup(model, ["input", "stem", "block"], layer_weights=[0, 1, 3],
                                 generator=torch.Generator().manual_seed(5))
        seq = []
        for _ in range(40):
            mixer(x, y)
            seq.append(mixer.last_plan.layer)
        names.append(seq)
        mixer.remove()
    assert names[0] == names[1]
    assert "input" not in names[0] and {"stem", "block"} == set(names[0])
    assert names[0].count("block") > names[0].count("stem")


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.block(self.block(x)))


def test_module_called_twice_is_mixed_once_with_one_warning():
    torch.manual_seed(0)
    model = Shared()
    x, y = data()
    mixer = mm.ManifoldMixup(model, ["block"], generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        logits, _ = mixer(x, y % 2)
        mixer(x, y % 2)
    assert sum("more than once" in str(m.message) for m in w) == 1
    perm, lam, _ = mixer.last_plan
    h = model.block(x)
    # the last call: mixed at the first call only
    logits = mixer(x, y % 2, plan=mm.MixPlan(perm, lam), layer="block")[0]
    expect = model.head(model.block(hand_mix(h, perm, lam)))
    assert torch.allclose(logits, expect, atol=1e-6)


def test_a_submodule_named_input_is_not_shadowed():
    class Named(nn.Module):
        def __init__(self):
            super().__init__()
            self.input = nn.Linear(4, 4)
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            return self.head(torch.relu(self.input(x)))

    model = Named()
    x, y = data(b=6)
    with pytest.warns(UserWarning, match="'<input>'"):
        sub = mm.ManifoldMixup(model, ["input"], generator=0)
    logits, _ = sub(x, y)
    perm, lam, _ = sub.last_plan
    h = model.input(x)
    assert torch.allclose(logits, model.head(torch.relu(hand_mix(h, perm, lam))), atol=1e-6)
    at_input = mm.ManifoldMixup(model, ["<input>"], generator=0)
    logits, _ = at_input(x, y)
    perm, lam, _ = at_input.last_plan
    assert torch.allclose(logits, model(hand_mix(x, perm, lam)), atol=1e-6)


def test_tuple_output_mixed_through_a_selector():
    model = TupleOut()
    x, y = data()
    mixer = mm.ManifoldMixup(model, ["enc"], select={"enc": 0}, generator=torch.Generator().manual_seed(0))
    logits, _ = mixer(x, y % 2)
    perm, lam, _ = mixer.last_plan
    expect = model.head(hand_mix(2 * x, perm, lam))
    assert torch.allclose(logits, expect, atol=1e-6)
    seq = LastStep()  # an LSTM: (states, (h, c))
    logits, _ = mm.ManifoldMixup(seq, ["enc"], select={"enc": 0}, generator=0)(torch.randn(4, 3, 4),
                                                                               torch.tensor([0, 1, 0, 1]))
    assert logits.shape == (4, 2)


class DictOut(nn.Module):
    def forward(self, x):
        from collections import OrderedDict

        class Out(OrderedDict):
            pass

        return Out(h=x * 3, aux=torch.zeros(1))


class UsesDict(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = DictOut()
        self.head = nn.Linear(4, 2)
        self.seen = None

    def forward(self, x):
        out = self.enc(x)
        self.seen = type(out).__name__
        return self.head(out["h"])


class UsesMax(nn.Module):
    def __init__(self):
        super().__init__()
        self.pick = MaxOf()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.pick(x).values)


class MaxOf(nn.Module):
    def forward(self, x):
        return torch.max(torch.stack([x, 2 * x], 1), dim=1)


def test_selector_keeps_the_output_type():
    x, y = data()
    model = UsesDict()
    mixer = mm.ManifoldMixup(model, ["enc"], select={"enc": "h"}, generator=0)
    logits, _ = mixer(x, y % 2)
    perm, lam, _ = mixer.last_plan
    h = 3 * x
    assert model.seen == "Out"
    assert torch.allclose(logits, model.head(hand_mix(h, perm, lam)), atol=1e-6)
    model2 = UsesMax()
    logits, _ = mm.ManifoldMixup(model2, ["pick"], select={"pick": 0}, generator=0)(x, y % 2)
    assert logits.shape == (6, 2)


# -- lambda modes and policies ----------------------------------------------------------------------
def test_half_confmix_and_per_batch_lambda_through_the_mixer():
    from scipy import stats

    class Sure(nn.Module):  # a confident model: alpha_i = 1 for every row
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 4)
            self.head = nn.Linear(4, 3)

        def forward(self, x):
            return self.head(self.body(x)) * 0 + torch.tensor([50.0, 0.0, 0.0])

    x, y = data(b=400)
    lams = {}
    for name, pol in (("half", mm.HalfConfMix(0)), ("full", mm.ConfMix(0))):
        mixer = mm.ManifoldMixup(Sure(), ["body"], alpha=pol, generator=1)
        lams[name] = torch.cat([mixer(x, y) and mixer.last_plan.lam for _ in range(5)]).double().numpy()
    assert stats.kstest(lams["half"], "beta", args=(0.5, 0.5)).pvalue > 1e-3  # Beta(alpha/2, alpha/2)
    assert stats.kstest(lams["full"], "beta", args=(1.0, 1.0)).pvalue > 1e-3
    assert stats.kstest(lams["half"], "beta", args=(1.0, 1.0)).pvalue < 1e-6
    mixer = mm.ManifoldMixup(Residual(), ["block"], alpha=0.7, per_sample=False, generator=2)
    mixer(*data(b=8))
    lam = mixer.last_plan.lam
    assert (lam == lam[0]).all() and 0 < lam[0] < 1


def test_a_custom_policy_gives_per_row_alphas():
    x, y = data()
    per_row = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    mixer = mm.ManifoldMixup(Residual(), ["block"], alpha=FixedAlpha(per_row), generator=0)
    mixer(x, y)
    lam = mixer.last_plan.lam
    assert torch.equal(lam[::2], torch.ones(3)) and (lam[1::2] < 1).all()


class LossBasedAlpha(mm.AlphaPolicy):
    """A user's adaptive policy: alpha_i from sample i's loss in the previous epoch (high loss, less mixing)."""

    needs = frozenset({"index"})

    def __init__(self, n):
        super().__init__()
        self.loss = np.full(n, np.nan)
        self.seen = []

    def alpha(self, epoch, batch_size, *, index=None, **given):
        last = self.loss[index.numpy()]
        self.seen.append(last.copy())
        return np.where(np.isnan(last), 0.0, np.exp(-last))

    def observe(self, index, logits, labels):
        ce = nn.functional.cross_entropy(logits, labels, reduction="none")
        self.loss[index.numpy()] = ce.numpy()


def test_a_users_adaptive_policy_needs_no_change_to_the_mixer():
    model = Residual()
    x, y = data(b=10)
    pol = LossBasedAlpha(10)
    mixer = mm.ManifoldMixup(model, ["block"], alpha=pol, generator=0)
    idx = torch.arange(10)
    mixer(x, y, index=idx)  # first epoch: no loss known, alpha 0, nothing mixed
    assert torch.equal(mixer.last_plan.lam, torch.ones(10))
    logits, _ = mixer(x, y, index=idx)
    assert np.isfinite(pol.seen[-1]).all() and (mixer.last_plan.lam < 1).any()
    expect = np.exp(-pol.seen[-1])
    assert pol.history()[0]["mean_alpha"] == pytest.approx(expect.mean() / 2, rel=1e-6)  # two batches, one at 0
    with pytest.raises(ValueError, match="needs the batch's sample indices"):
        mixer(x, y)


def test_refused_calls_use_no_draws():
    model = Residual()
    x, y = data(b=6)
    mixer = mm.ManifoldMixup(model, ["stem", "block"], alpha=mm.ConfMix(0, confidence="cached"), num_classes=3,
                             generator=0)
    twin = copy.deepcopy(mixer)
    with pytest.raises(ValueError, match="ConfMix needs the batch's sample indices"):
        mixer(x, y)
    idx = torch.arange(6)
    mixer(x, y, index=idx), twin(x, y, index=idx)
    assert mixer.last_plan.layer == twin.last_plan.layer and torch.equal(mixer.last_plan.perm, twin.last_plan.perm)


def test_fresh_confmix_restores_each_submodule_mode():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    model[1].eval()  # a deliberately frozen BatchNorm
    mixer = mm.ManifoldMixup(model, ["2"], alpha=mm.ConfMix(warmup_epochs=0), generator=torch.Generator().manual_seed(0))
    x, y = data()
    mixer(x, y)
    assert model.training and model[0].training and not model[1].training


def test_fresh_confmix_through_the_clean_prefix_equals_the_extra_forward():
    x = torch.randn(12, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (12,), generator=torch.Generator().manual_seed(1))
    runs = []
    for reuse in (True, False):
        model = mm.models.paper_cnn((1, 8, 8), 10, generator=torch.Generator().manual_seed(0))
        calls = []
        model.fc1.register_forward_pre_hook(lambda m, a: calls.append(1))  # counts forwards past the cut
        mixer = mm.ManifoldMixup(model, mm.models.PAPER_CNN_MIX_LAYER, alpha=mm.ConfMix(warmup_epochs=0),
                                 generator=4, reuse_prefix=reuse)
        logits, targets = mixer(x, y)
        logits.sum().backward()
        runs.append((logits, targets, mixer.last_plan, [p.grad for p in model.parameters()], len(calls)))
    (l1, t1, p1, g1, c1), (l2, t2, p2, g2, c2) = runs
    assert c1 == 2 and c2 == 2  # confidence pass + training pass through the suffix, either way
    assert torch.equal(p1.perm, p2.perm) and torch.allclose(p1.lam, p2.lam, atol=1e-6)
    assert torch.allclose(l1, l2, atol=1e-5) and torch.allclose(t1, t2, atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g1, g2))


def test_fresh_confmix_takes_the_clean_prefix_path_when_it_applies(monkeypatch):
    calls = []
    forward = nn.Conv2d.forward
    monkeypatch.setattr(nn.Conv2d, "forward", lambda self, x: calls.append(1) or forward(self, x))
    x = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 10
    for reuse, convs in ((True, 2), (False, 4)):  # two convolutions: one forward, or two
        calls.clear()
        model = mm.models.paper_cnn((1, 8, 8), 10, generator=torch.Generator().manual_seed(0))
        mm.ManifoldMixup(model, "flatten", alpha=mm.ConfMix(0), generator=0, reuse_prefix=reuse)(x, y)
        assert len(calls) == convs


# -- targets and precision -------------------------------------------------------------------------
def test_integer_labels_of_any_width():
    model = Residual()
    x, y = data()
    mixer = mm.ManifoldMixup(model, ["block"], generator=0)
    for dtype in (torch.int32, torch.uint8):
        logits, t = mixer(x, y.to(dtype))
        assert torch.allclose(t.sum(1), torch.ones(6))
    plan = mixer.last_plan
    assert torch.isfinite(mm.mixed_cross_entropy(logits, y.int(), mm.MixPlan(plan.perm, plan.lam)))


def test_regression_and_multilabel_targets_mix_as_rows():
    model = Residual()
    x, _ = data(b=8)
    yr = torch.randn(8, 3, 2)
    mixer = mm.ManifoldMixup(model, ["block"], generator=0, task="regression")
    _, t = mixer(x, yr)
    perm, lam, _ = mixer.last_plan
    assert torch.allclose(t, hand_mix(yr, perm, lam), atol=1e-6)
    ym = (torch.rand(8, 3, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    mixer = mm.ManifoldMixup(model, ["block"], generator=0, task="multilabel")
    logits, t = mixer(x, ym)
    perm, lam, _ = mixer.last_plan
    assert torch.allclose(t, hand_mix(ym, perm, lam), atol=1e-6)
    assert torch.isfinite(nn.functional.binary_cross_entropy_with_logits(logits, t))


def test_label_smoothed_rows_of_many_classes_in_bfloat16_are_taken():
    """Such rows sum to 1 only to bfloat16 precision: the row-sum check allows for it."""
    x, _ = data(b=6)
    rows = torch.full((6, 1000), 0.1 / 1000).index_put_((torch.arange(6), torch.zeros(6, dtype=torch.long)),
                                                          torch.tensor(0.9 + 0.1 / 1000)).bfloat16()
    logits, targets = mm.ManifoldMixup(nn.Sequential(nn.Linear(4, 1000)), ["0"], generator=0)(x, rows)
    assert logits.shape == targets.shape == (6, 1000)


def test_autocast_keeps_activation_dtype():
    model = Residual()
    x, y = data()
    seen = {}
    model.head.register_forward_pre_hook(lambda m, a: seen.update(dtype=a[0].dtype))
    mixer = mm.ManifoldMixup(model, ["block"], alpha=1.0, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = mixer(x, y)
    assert seen["dtype"] == torch.bfloat16
