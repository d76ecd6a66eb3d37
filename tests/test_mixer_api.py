"""The mixer as users meet it: copies, checkpoints, the policy interface, wrapped and compiled
models, extra arguments, tasks, and clear errors for bad input (issues 14, 15, 16)."""

import copy
import pickle
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import manifold_mixup as mm
from conftest import LastStep, Residual, data


def _hand_mix(model, layer, x, perm, lam, select=None):
    """An independent hook: the model's output with ``lam*h + (1-lam)*h[perm]`` at ``layer``."""
    def hook(mod, args, out):
        h = out if select is None else out[select]
        shape = (-1,) + (1,) * (h.ndim - 1)
        m = lam.view(shape) * h + (1 - lam.view(shape)) * h[perm]
        return m if select is None else (m, *out[1:])
    handle = dict(model.named_modules())[layer].register_forward_hook(hook)
    try:
        return model(x)
    finally:
        handle.remove()


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
    with pytest.raises(ValueError, match="'policy' and 'stream'"):
        fresh.load_state_dict({"stream": state["stream"]})


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


class KwModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.body = nn.Linear(4, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, input_ids, scale=1.0, mask=None):
        h = self.emb(input_ids).mean(1) * scale
        if mask is not None:
            h = h * mask
        return {"logits": self.head(torch.relu(self.body(h)))}


def test_extra_arguments_mapping_batches_and_logits_function():
    model = KwModel()
    ids = torch.randint(0, 10, (6, 5), generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (6,))
    pick = lambda out: out["logits"]  # noqa: E731
    mixer = mm.ManifoldMixup(model, ["body"], generator=1, logits=pick)
    logits, _ = mixer(ids, y, 2.0, mask=torch.ones(6, 1))
    perm, lam, _ = mixer.last_plan
    h = model.body(model.emb(ids).mean(1) * 2.0)
    expect = model.head(torch.relu(lam[:, None] * h + (1 - lam[:, None]) * h[perm]))
    assert torch.allclose(logits, expect, atol=1e-6)
    same = mm.ManifoldMixup(model, ["body"], generator=1, logits=pick)
    logits2, _ = same({"input_ids": ids, "scale": 2.0}, y)  # a mapping batch: model(**batch)
    assert torch.allclose(logits2, logits, atol=1e-6)
    with pytest.raises(TypeError, match="logits="):
        mm.ManifoldMixup(model, ["body"], generator=1)(ids, y)
    with pytest.raises(ValueError, match=r"integer tensor.*embedding module.*\['emb'\]"):
        mm.ManifoldMixup(model, ["input"], generator=1, logits=pick)(ids, y)
    with pytest.raises(ValueError, match="input_key"):
        mm.ManifoldMixup(model, ["input"], generator=1, logits=pick)({"input_ids": ids}, y)


def test_regression_and_multilabel_targets_mix_as_rows():
    model = Residual()
    x, _ = data(b=8)
    yr = torch.randn(8, 3, 2)
    mixer = mm.ManifoldMixup(model, ["block"], generator=0, task="regression")
    _, t = mixer(x, yr)
    perm, lam, _ = mixer.last_plan
    assert torch.allclose(t, lam[:, None, None] * yr + (1 - lam[:, None, None]) * yr[perm], atol=1e-6)
    ym = (torch.rand(8, 3, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    mixer = mm.ManifoldMixup(model, ["block"], generator=0, task="multilabel")
    logits, t = mixer(x, ym)
    perm, lam, _ = mixer.last_plan
    assert torch.allclose(t, lam[:, None] * ym + (1 - lam[:, None]) * ym[perm], atol=1e-6)
    assert torch.isfinite(nn.functional.binary_cross_entropy_with_logits(logits, t))
    with pytest.raises(ValueError, match=r"multilabel targets must lie in \[0, 1\]; got 2"):
        mixer(x, ym * 2)
    with pytest.raises(ValueError, match="regression targets must be a float tensor"):
        mm.ManifoldMixup(model, ["block"], task="regression")(x, torch.ones(8, dtype=torch.long))
    with pytest.raises(ValueError, match="task must be one of"):
        mm.ManifoldMixup(model, ["block"], task="ranking")


def test_bad_input_gets_a_clear_error_before_any_work():
    model = Residual()
    x, y = data(b=4)
    forwards = []
    model.register_forward_pre_hook(lambda m, a: forwards.append(1))
    mixer = mm.ManifoldMixup(model, ["block"], generator=0)
    cases = [
        (lambda: mixer(x, torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [-2.0, 3.0, 0]])), "finite and >= 0; got -2"),
        (lambda: mixer(x, torch.tensor([[1.0, 0, 0]] * 3 + [[float("nan"), 0, 1]])), "finite and >= 0; got nan"),
        (lambda: mixer(x, torch.tensor([[0.5, 0, 0]] * 4)), "rows must sum to 1"),
        (lambda: mixer(x[:0], y[:0]), "got an empty batch"),
        (lambda: mixer(x, y, plan=mm.MixPlan(torch.tensor([0, 0, 1, 2]), torch.full((4,), 0.5)), layer="block"),
         "permutation of 0..3"),
        (lambda: mixer(x, y, plan=mm.MixPlan(torch.arange(4), torch.full((4,), 5.0)), layer="block"),
         r"finite and in \[0, 1\]; got 5"),
        (lambda: mixer(x, y, plan=mm.MixPlan(torch.arange(4), torch.full((4,), float("nan"))), layer="block"),
         r"finite and in \[0, 1\]; got nan"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    assert not forwards  # refused before the model ran
    with pytest.raises(TypeError, match="generator must be a torch.Generator, an int seed >= 0 or None; got str"):
        mm.ManifoldMixup(model, ["block"], generator="abc")
    for alpha in (1e308, float("inf")):
        with pytest.raises(ValueError, match="<= 1e\\+12"):
            mm.ManifoldMixup(model, ["block"], alpha=alpha)
    with torch.device("meta"):
        meta = Residual()
    with pytest.raises(ValueError, match="meta device"):
        mm.ManifoldMixup(meta, ["block"])


def test_a_selector_that_does_not_fit_is_named():
    model = LastStep()
    x = torch.randn(4, 3, 4)
    with pytest.raises(ValueError, match=r"select\['enc'\] = 5 is out of range: the layer's output has 2 parts"):
        mm.ManifoldMixup(model, ["enc"], select={"enc": 5}, generator=0)(x, torch.tensor([0, 1, 0, 1]))
    logits, _ = mm.ManifoldMixup(model, ["enc"], select={"enc": 0}, generator=0)(x, torch.tensor([0, 1, 0, 1]))
    assert logits.shape == (4, 2)


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
    assert torch.allclose(logits, model.head(torch.relu(lam[:, None] * h + (1 - lam[:, None]) * h[perm])), atol=1e-6)
    at_input = mm.ManifoldMixup(model, ["<input>"], generator=0)
    logits, _ = at_input(x, y)
    perm, lam, _ = at_input.last_plan
    assert torch.allclose(logits, model(lam[:, None] * x + (1 - lam[:, None]) * x[perm]), atol=1e-6)


def test_the_mixer_is_no_module_and_the_public_api_is_small():
    assert not isinstance(mm.ManifoldMixup(Residual(), ["block"]), nn.Module)
    assert len(mm.__all__) <= 25
    for name in mm.__all__:
        assert getattr(mm, name) is not None
    for sub in ("models", "toy", "ensemble", "data"):
        assert getattr(mm, sub).__name__ == f"manifold_mixup.paper.{sub}"  # the kit, by its short name


def test_hand_mix_helper_agrees_with_the_mixer():
    model = Residual()
    x, y = data(b=6)
    mixer = mm.ManifoldMixup(model, ["block"], generator=2)
    logits, _ = mixer(x, y)
    perm, lam, _ = mixer.last_plan
    assert torch.allclose(logits, _hand_mix(model, "block", x, perm, lam), atol=1e-6)


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
    h = lam[:, None] * model.stem(x) + (1 - lam[:, None]) * model.stem(x)[perm]
    h = torch.relu(h)
    assert torch.allclose(logits, model.head(h + model.block(h)), atol=1e-6)


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


def test_settings_a_policy_cannot_use_are_refused_when_the_mixer_is_made():
    with pytest.raises(ValueError, match="needs num_classes=K"):
        mm.ManifoldMixup(Residual(), ["block"], alpha=mm.ConfMix(confidence="cached"))
    with pytest.raises(ValueError, match="per_sample=True"):
        mm.ManifoldMixup(Residual(), ["block"], alpha=mm.HalfConfMix(), per_sample=False)


def test_refused_calls_use_no_draws_and_policies_refuse_other_tasks():
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
    for task in ("regression", "multilabel"):
        with pytest.raises(ValueError, match="task='classification'"):
            mm.ManifoldMixup(model, ["block"], alpha=mm.ConfMix(), task=task)


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


def test_more_bad_input_from_review():
    model = Residual()
    x, y = data(b=6)

    with pytest.raises(ValueError, match="without calling mix"):
        mm.ManifoldMixup(LastStep(), ["enc"], select={"enc": lambda out, mix: out}, generator=0)(
            torch.randn(6, 3, 4), y % 2)

    class BadNeeds(mm.AlphaPolicy):
        needs = ["index"]

        def alpha_at(self, epoch):
            return 1.0

    with pytest.raises(ValueError, match="BadNeeds.needs must be a set"):
        mm.ManifoldMixup(model, ["block"], alpha=BadNeeds())
    with pytest.raises(ValueError, match="label_smoothing must be a number"):
        mm.ManifoldMixup(model, ["block"], label_smoothing="a")
    with pytest.raises(TypeError, match="layers must be a name or a list of names"):
        mm.ManifoldMixup(model, [["block"]])
    with pytest.raises(ValueError, match="state is of a 'RampUp' policy"):
        mm.Constant(0.5).load_state_dict(mm.RampUp().state_dict())
    pol = mm.RampUp(10)
    pol.set_epoch(np.int64(10))
    assert pol.alpha_at(pol.epoch) == pytest.approx(0.5)
    # label-smoothed rows of many classes in bfloat16 sum to 1 only to bfloat16 precision
    rows = torch.full((6, 1000), 0.1 / 1000).index_put_((torch.arange(6), torch.zeros(6, dtype=torch.long)),
                                                          torch.tensor(0.9 + 0.1 / 1000)).bfloat16()
    mm.ManifoldMixup(nn.Sequential(nn.Linear(4, 1000)), ["0"], generator=0)(x, rows)


def test_mixing_in_low_precision_keeps_lambda_precise():
    h = torch.randn(4, 8).bfloat16()
    plan = mm.MixPlan(torch.tensor([1, 0, 3, 2]), torch.tensor([0.999, 0.9, 0.5, 0.1]))
    exact = (plan.lam[:, None] * h.float() + (1 - plan.lam[:, None]) * h.float()[plan.perm]).bfloat16()
    assert mm.mix(h, plan).dtype == torch.bfloat16 and torch.equal(mm.mix(h, plan), exact)
