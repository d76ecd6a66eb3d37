"""The mixer's fast paths give the numbers of the plain paths: dense mixing matrices, plans drawn
in blocks, batched records, and fresh ConfMix through a model cut at the mixing layer."""

import numpy as np
import pytest
import torch
from torch import nn

import manifold_mixup as mm
from manifold_mixup.manifold import sequential_split
from manifold_mixup.mixing import MixPlan, PlanSampler, mix, mixing_matrices


def _plan(b, seed=0):
    rng = np.random.default_rng(seed)
    perm = rng.permutation(b)
    lam = rng.beta(0.5, 0.5, size=b).astype(np.float32)
    lam[0] = 1.0  # an unmixed row
    m = mixing_matrices(perm[None], lam[None])[0]
    return MixPlan(torch.from_numpy(perm), torch.from_numpy(lam)), torch.from_numpy(m)


def test_mixing_matrix_rows_hold_lambda_and_its_complement():
    plan, m = _plan(9)
    assert torch.allclose(m.sum(1), torch.ones(9))
    h = torch.randn(9, 3)
    hand = plan.lam[:, None] * h + (1 - plan.lam[:, None]) * h[plan.perm]
    assert torch.allclose(m @ h, hand, atol=1e-6)
    assert torch.equal((m @ h)[0], h[0])  # lam = 1 row passes through exactly


@pytest.mark.parametrize("shape", [(7, 5), (7, 2, 3, 4), (7,)])
def test_dense_and_gather_forms_agree_in_values_and_gradients(shape):
    plan, m = _plan(shape[0], seed=1)
    dense = MixPlan(plan.perm, plan.lam, m)
    h = torch.randn(*shape, requires_grad=True)
    g = torch.randn(*shape)
    a = mix(h, plan)
    b = mix(h, dense)
    assert b.shape == h.shape and b.dtype == h.dtype
    assert torch.allclose(a, b, atol=1e-6)
    ga, = torch.autograd.grad(a, h, g)
    gb, = torch.autograd.grad(b, h, g)
    assert torch.allclose(ga, gb, atol=1e-6)


def test_dense_form_is_skipped_where_it_would_change_numbers():
    plan, m = _plan(6, seed=2)
    dense = MixPlan(plan.perm, plan.lam, m)
    h64 = torch.randn(6, 4, dtype=torch.float64)  # float64: the float32 matrix would round
    assert torch.equal(mix(h64, dense), mix(h64, plan))
    ht = torch.randn(4, 6).t()  # not contiguous: keeps its layout through the gather form
    assert torch.equal(mix(ht, dense), mix(ht, plan))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a matmul would come out in bfloat16
        h = torch.randn(6, 4)
        out = mix(h, dense)
    assert out.dtype == torch.float32 and torch.equal(out, mix(h, plan))


def test_block_sampler_is_reproducible_and_draws_valid_plans():
    def run(seed):
        s = PlanSampler(seed, block=4)
        out = []
        for step in range(11):
            alpha = 0.5 if step < 7 else 0.1 * step  # constant, then changing every call
            plan, lam = s.next_plan(8 if step != 5 else 5, alpha)
            out.append((plan, lam))
        return out

    a, b, c = run(3), run(3), run(4)
    for (pa, la), (pb, lb) in zip(a, b):
        assert torch.equal(pa.perm, pb.perm) and torch.equal(pa.lam, pb.lam) and np.array_equal(la, lb)
    assert any(not torch.equal(pa.lam, pc.lam) for (pa, _), (pc, _) in zip(a, c) if pa.lam.shape == pc.lam.shape)
    for plan, lam in a:
        b_ = plan.batch_size
        assert sorted(plan.perm.tolist()) == list(range(b_))
        assert ((plan.lam >= 0) & (plan.lam <= 1)).all() and np.array_equal(lam, plan.lam.numpy())
        h = torch.randn(b_, 3)
        assert torch.allclose(mix(h, plan), plan.lam[:, None] * h + (1 - plan.lam[:, None]) * h[plan.perm], atol=1e-6)
    # per-sample alphas: zeros stay unmixed
    s = PlanSampler(0)
    plan, _ = s.next_plan(6, np.array([0.0, 1.0, 0.0, 2.0, 0.5, 0.0]))
    assert plan.lam[[0, 2, 5]].tolist() == [1.0, 1.0, 1.0]


def test_records_summed_in_batches_match_the_plans():
    model = mm.models.mlp(3, hidden=(8,), generator=torch.Generator().manual_seed(0))
    mixer = mm.ManifoldMixup(model, ["relu1", "input"], alpha=0.7, generator=1)
    x, y = torch.randn(10, 2), torch.arange(10) % 3
    lams = {0: [], 1: []}
    for step in range(1300):  # more than one batch of kept records
        epoch = step / 650
        mixer.set_epoch(epoch)
        mixer(x, y)
        lams[int(epoch)].append(mixer.last_plan.lam.numpy().astype(np.float64))
    hist = mixer.policy.history()
    assert [h["epoch"] for h in hist] == [0, 1]
    for h in hist:
        lam = np.concatenate(lams[h["epoch"]])
        assert h["rows"] == lam.size
        assert h["mean_lambda"] == pytest.approx(lam.mean(), rel=1e-6)
        assert h["mean_partner_weight"] == pytest.approx(np.minimum(lam, 1 - lam).mean(), rel=1e-6)
        assert h["mean_alpha"] == pytest.approx(0.7)


def test_fresh_confmix_through_the_cut_model_gives_the_same_numbers():
    results = []
    for reuse in (True, False):
        torch.manual_seed(0)
        model = mm.models.paper_cnn((1, 8, 8), 10)
        mixer = mm.ManifoldMixup(model, mm.models.PAPER_CNN_MIX_LAYER, alpha=mm.ConfMix(warmup_epochs=0),
                                 num_classes=10, generator=7)
        mixer.reuse_prefix = reuse
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(24, 1, 8, 8, generator=g), torch.randint(0, 10, (24,), generator=g)
        out = []
        for _ in range(3):
            logits, targets = mixer(x, y)
            mm.soft_cross_entropy(logits, targets).backward()
            out.append((logits.detach(), targets, mixer.last_plan.lam, [p.grad.clone() for p in model.parameters()]))
        results.append((out, mixer.policy.history()))
    (a, ha), (b, hb) = results
    assert ha == hb
    for (la, ta, lama, ga), (lb, tb, lamb, gb) in zip(a, b):
        assert torch.equal(la, lb) and torch.equal(ta, tb) and torch.equal(lama, lamb)
        assert all(torch.equal(p, q) for p, q in zip(ga, gb))


def test_the_cut_is_made_only_where_it_changes_nothing():
    mlp = mm.models.mlp(4, hidden=(6, 6))
    split = sequential_split(mlp, "relu1")
    assert split is not None and [type(m) for m in split.prefix] == [nn.Linear, nn.ReLU]
    x = torch.randn(5, 2)
    h = x
    for m in split.prefix + split.suffix:
        h = m(h)
    assert torch.equal(h, mlp(x))
    nested = nn.Sequential(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 3)), nn.Tanh(), nn.Linear(3, 2))
    split = sequential_split(nested, "0.1")
    assert [type(m) for m in split.prefix] == [nn.Linear, nn.ReLU]
    assert [type(m) for m in split.suffix] == [nn.Linear, nn.Tanh, nn.Linear]
    # mode-dependent layers before the cut, custom containers, hooks, shared modules: no cut
    bn = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    assert sequential_split(bn, "2") is None
    assert sequential_split(nn.Sequential(nn.Linear(2, 3), nn.Dropout(0.5), nn.Linear(3, 2)), "1") is None
    assert sequential_split(bn, "0") is not None  # BatchNorm after the cut runs in eval mode for confidences
    assert sequential_split(mm.models.small_resnet((3, 8, 8), 10), "block1") is None
    hooked = mm.models.mlp(4, hidden=(6,))
    hooked.register_forward_hook(lambda m, a, o: None)
    assert sequential_split(hooked, "relu1") is None
    lin = nn.Linear(3, 3)
    assert sequential_split(nn.Sequential(nn.Linear(2, 3), lin, nn.ReLU(), lin), "2") is None


def test_fresh_confidence_after_the_cut_sees_eval_mode_dropout():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(0.9), nn.Linear(16, 3))
    pol = mm.ConfMix(warmup_epochs=0)
    mixer = mm.ManifoldMixup(model, "1", alpha=pol, num_classes=3, generator=0)
    assert mixer._split("1") is not None
    x, y = torch.randn(32, 2), torch.randint(0, 3, (32,))
    mixer(x, y)
    model.eval()
    conf = torch.softmax(model(x), -1).amax(-1)
    model.train()
    expected = mm.confmix_alpha(conf, 3).double().mean().item()
    assert pol.history()[0]["mean_alpha"] == pytest.approx(expected, rel=1e-5)
    assert model.training and model[2].training


def test_num_classes_must_match_the_logits():
    mixer = mm.ManifoldMixup(mm.models.mlp(3, hidden=(4,)), "relu1", num_classes=4, generator=0)
    with pytest.raises(ValueError, match="3 logits per row but num_classes=4"):
        mixer(torch.randn(5, 2), torch.tensor([0, 1, 2, 3, 0]))


def test_cached_confidence_refuses_negative_indices():
    pol = mm.ConfMix(confidence="cached")
    with pytest.raises(ValueError, match="indices must be >= 0"):
        pol.cached_confidence(torch.tensor([0, -1]), 3)


# -- regressions found in review ----------------------------------------------------------
def _confmix_run(model_fn, layer, reuse, k=3):
    torch.manual_seed(0)
    model = model_fn().train()
    mixer = mm.ManifoldMixup(model, layer, alpha=mm.ConfMix(warmup_epochs=0), generator=1, num_classes=k)
    mixer.reuse_prefix = reuse
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 5, generator=g), torch.randint(0, k, (6,), generator=g)
    logits, targets = mixer(x, y)
    mm.soft_cross_entropy(logits, targets).backward()
    return logits.detach(), [p.grad.clone() for p in model.parameters()], mixer


def test_in_place_layer_after_the_cut_does_not_change_the_numbers():
    make = lambda: nn.Sequential(nn.Linear(5, 8), nn.ReLU(inplace=True), nn.Linear(8, 3))  # noqa: E731
    a, ga, mixer = _confmix_run(make, "0", True)
    assert mixer._split("0") is not None  # the cut is taken, with the clean output protected
    b, gb, _ = _confmix_run(make, "0", False)
    assert torch.equal(a, b) and all(torch.equal(p, q) for p, q in zip(ga, gb))


def test_hooks_before_the_cut_or_added_later_refuse_the_cut():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sn = lambda: nn.Sequential(nn.utils.spectral_norm(nn.Linear(5, 8)), nn.Linear(8, 3))  # noqa: E731
        a, _, mixer = _confmix_run(sn, "0", True)
        b, _, _ = _confmix_run(sn, "0", False)
    assert mixer._split("0") is None and torch.equal(a, b)
    model = nn.Sequential(nn.Linear(5, 8), nn.Linear(8, 3)).train()
    mixer = mm.ManifoldMixup(model, "0", alpha=mm.ConfMix(warmup_epochs=0), generator=1, num_classes=3)
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    mixer(x, y)
    assert mixer._split("0") is not None
    calls = []
    handle = model.register_forward_hook(lambda m, i, o: calls.append(1))
    mixer(x, y)
    assert calls and mixer._split("0") is None
    handle.remove()
    assert mixer._split("0") is not None


def test_label_smoothing_changed_later_is_used():
    mixer = mm.ManifoldMixup(nn.Sequential(nn.Linear(5, 3)), "input", alpha=1.0, generator=1, num_classes=3)
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    mixer(x, y)
    mixer.label_smoothing = 0.3
    _, t = mixer(x, y)
    assert t.min().item() >= 0.1 - 1e-6 and torch.allclose(t.sum(1), torch.ones(6))


def test_many_classes_use_direct_one_hot_rows():
    from manifold_mixup import manifold

    k = manifold._MAX_CACHED_CLASSES + 1
    mixer = mm.ManifoldMixup(nn.Sequential(nn.Linear(5, k)), "input", alpha=1.0, generator=1, num_classes=k,
                             label_smoothing=0.1)
    y = torch.tensor([0, k - 1, 5, 5])
    rows = mixer._label_rows(y, k)
    assert torch.allclose(rows, mm.soft_targets(y, k, 0.1)) and not mixer._eyes
    with pytest.raises(ValueError, match=r"labels must lie in \[0, "):
        mixer._label_rows(torch.tensor([0, k]), k)


def test_nan_confidences_and_one_class_are_refused():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 3)

        def forward(self, x):
            return self.lin(x) * float("nan")

    mixer = mm.ManifoldMixup(Bad(), "lin", alpha=mm.ConfMix(warmup_epochs=0), generator=1, num_classes=3)
    with pytest.raises(ValueError, match="NaN"):
        mixer(torch.randn(6, 5), torch.randint(0, 3, (6,)))
    mixer = mm.ManifoldMixup(nn.Sequential(nn.Linear(5, 1)), "0", alpha=mm.ConfMix(warmup_epochs=0), generator=1)
    with pytest.raises(ValueError, match="K >= 2"):
        mixer(torch.randn(6, 5), torch.rand(6, 1))


def test_a_policy_reusing_its_alpha_tensor_is_recorded_as_given():
    class Buffered(mm.AlphaPolicy):
        def __init__(self):
            super().__init__()
            self.buf = torch.zeros(6, dtype=torch.float64)

        def alpha(self, batch_size, confidence=None):
            return self.buf.fill_(1.0 if self.epoch < 1 else 0.0)

    pol = Buffered()
    mixer = mm.ManifoldMixup(nn.Sequential(nn.Linear(5, 3)), "input", alpha=pol, generator=1)
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    for epoch in (0, 1):
        pol.set_epoch(epoch)
        mixer(x, y)
    assert [h["mean_alpha"] for h in pol.history()] == [1.0, 0.0]


def test_failed_call_leaves_no_state_behind():
    class Flaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(5, 3)
            self.fail = False

        def forward(self, x):
            if self.fail:
                raise RuntimeError("boom")
            return self.a(x)

    model = Flaky()
    mixer = mm.ManifoldMixup(model, "a", alpha=mm.ConfMix(warmup_epochs=0, confidence="cached"), generator=1, num_classes=3)
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    mixer(x, y, index=torch.arange(6))
    model.fail = True
    with pytest.raises(RuntimeError, match="boom"):
        mixer(x, y, index=torch.arange(6))
    model.fail = False
    last = mixer.last_plan
    mixer(x, y, index=torch.arange(100, 106), plan=MixPlan(last.perm, last.lam), layer="a")  # grows the cache


def test_replaying_the_last_plan_gives_the_same_numbers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    mixer = mm.ManifoldMixup(model, "1", alpha=1.0, generator=3, num_classes=3)
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    logits, targets = mixer(x, y)
    last = mixer.last_plan
    again, t2 = mixer(x, y, plan=MixPlan(last.perm, last.lam), layer=last.layer)
    assert torch.equal(logits, again) and torch.equal(targets, t2)


def test_global_module_hooks_refuse_the_cut():
    from torch.nn.modules.module import register_module_forward_hook

    mixer = mm.ManifoldMixup(mm.models.mlp(3, hidden=(4,)), "relu1", alpha=mm.ConfMix(warmup_epochs=0), generator=0)
    assert mixer._split("relu1") is not None
    handle = register_module_forward_hook(lambda m, i, o: None)
    try:
        assert mixer._split("relu1") is None
    finally:
        handle.remove()
    assert mixer._split("relu1") is not None


def _steps(model, layers, direct, seed=0, n=3):
    """Logits, targets, lambdas and gradients of n mixed steps (dropout draws from a fixed seed)."""
    mixer = mm.ManifoldMixup(model, layers, alpha=0.7, num_classes=4, generator=11)
    mixer.direct_sequential = direct
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(20, 6, generator=g), torch.randint(0, 4, (20,), generator=g)
    torch.manual_seed(seed)
    out = []
    for _ in range(n):
        model.zero_grad()
        logits, targets = mixer(x, y)
        mm.soft_cross_entropy(logits, targets).backward()
        out.append((logits.detach(), targets, mixer.last_plan.layer, [p.grad.clone() for p in model.parameters()]))
    return out, mixer


def test_sequential_layers_run_one_by_one_give_the_hook_numbers():
    def make():
        torch.manual_seed(3)
        return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(),
                             nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.3), nn.ReLU()), nn.Linear(8, 4))
    layers = ["0", "2", "3.1", "3.2"]
    (direct, mixer), (hooked, _) = _steps(make(), layers, True, n=6), _steps(make(), layers, False, n=6)
    assert mixer._split("3.1", False) is not None  # the direct path was available
    assert {s[2] for s in direct} == set(layers)
    for (la, ta, na, ga), (lb, tb, nb, gb) in zip(direct, hooked):
        assert na == nb and torch.equal(la, lb) and torch.equal(ta, tb)
        assert all(torch.equal(p, q) for p, q in zip(ga, gb))
    assert not any(m._forward_hooks for m in mixer.model.modules())


def test_direct_path_respects_hooks_and_replaced_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    mixer = mm.ManifoldMixup(model, "1", alpha=1.0, num_classes=4, generator=0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(10, 6, generator=g), torch.randint(0, 4, (10,), generator=g)
    mixer(x, y)
    assert mixer._split("1", False) is not None
    # a hook on a layer still runs (the layer is called as usual) and sees the unmixed output
    seen = []
    h = model[1].register_forward_hook(lambda m, a, o: seen.append(o.detach().clone()))
    logits, _ = mixer(x, y)
    assert len(seen) == 1 and torch.equal(seen[0], torch.relu(model[0](x)))
    h.remove()
    # a hook on the container would be skipped by the direct path: the mixer takes the hook path
    calls = []
    h = model.register_forward_hook(lambda m, a, o: calls.append(1))
    assert mixer._split("1", False) is None
    mixer(x, y)
    assert calls == [1]
    h.remove()
    # a layer replaced after the first call is the one that runs
    model[2] = nn.Linear(8, 4)
    logits, _ = mixer(x, y)
    perm, lam, _ = mixer.last_plan
    hid = torch.relu(model[0](x))
    expect = model[2](lam[:, None] * hid + (1 - lam[:, None]) * hid[perm])
    assert torch.allclose(logits, expect, atol=1e-6)


@pytest.mark.parametrize("cum", [[0.5, 1.0], [0.0, 0.25, 1.0], [0.2, 0.5, 0.7, 1.0]])
def test_layer_choices_drawn_a_block_ahead_are_the_per_call_choices(cum):
    one, ahead = PlanSampler(9, block=16), PlanSampler(9, block=16)
    per_call, queued = [], []
    for step in range(50):  # crosses block boundaries; other draws interleave as in the mixer
        per_call.append(one.choice(cum, cumulative=True))
        if not queued:
            queued = ahead.choices_ahead(cum)
        # the queue holds the choices in reverse order
        got = queued.pop()
        assert got == per_call[-1], step
        assert torch.equal(one.next_plan(8, 0.3)[0].lam, ahead.next_plan(8, 0.3)[0].lam)


def _seq_data(b=12):
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, 6, generator=g), torch.randint(0, 4, (b,), generator=g)


def _seq_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))


def test_backward_hooks_on_the_mixed_layer_see_the_mixed_output_gradient():
    x, y = _seq_data()
    grads = []
    for direct in (True, False):
        model = _seq_model()
        seen = []
        model[1].register_full_backward_hook(lambda m, gi, go: seen.append(go[0].clone()))
        mixer = mm.ManifoldMixup(model, "1", alpha=1.0, num_classes=4, generator=0)
        mixer.direct_sequential = direct
        assert mixer._split("1", False) is None  # the hook path is taken
        mm.soft_cross_entropy(*mixer(x, y)).backward()
        grads.append((seen[0], [p.grad for p in model.parameters()]))
    (ga, pa), (gb, pb) = grads
    assert torch.equal(ga, gb) and all(torch.equal(p, q) for p, q in zip(pa, pb))


def test_a_reassigned_model_or_mixed_layer_is_not_trained_in_the_old_ones_place():
    x, y = _seq_data()
    mixer = mm.ManifoldMixup(_seq_model(), "1", alpha=1.0, num_classes=4, generator=0)
    mixer(x, y)
    mixer.model = _seq_model()  # the mixer's hook belongs to the old model's layer: refused, as before
    with pytest.raises(RuntimeError, match="did not run"):
        mixer(x, y)
    model = _seq_model()
    mixer = mm.ManifoldMixup(model, "1", alpha=1.0, num_classes=4, generator=0)
    mixer(x, y)
    model[1] = nn.Tanh()  # the mixed layer itself replaced: refused whichever path would run
    with pytest.raises(RuntimeError, match="did not run"):
        mixer(x, y)


def test_patched_or_compiled_containers_are_called_not_bypassed():
    x, y = _seq_data()
    model = _seq_model()
    calls = []
    plain = model.forward
    model.forward = lambda h: (calls.append("patched"), plain(h))[1]  # as accelerate's hooks do
    mixer = mm.ManifoldMixup(model, "1", alpha=1.0, num_classes=4, generator=0)
    mixer(x, y)
    assert calls == ["patched"]
    del model.forward
    model._compiled_call_impl = lambda *a, **k: (calls.append("compiled"), nn.Sequential.forward(model, *a))[1]
    mixer(x, y)
    assert calls == ["patched", "compiled"]
    model._compiled_call_impl = None
    mixer(x, y)
    assert calls == ["patched", "compiled"] and mixer._split("1", False) is not None


def test_a_layer_that_also_runs_elsewhere_keeps_the_hook_semantics():
    lin = nn.Linear(8, 8)
    model = nn.Sequential(nn.Linear(6, 8), lin, nn.Sequential(nn.ReLU(), lin), nn.Linear(8, 4))
    mixer = mm.ManifoldMixup(model, "1", alpha=1.0, num_classes=4, generator=0)
    assert mixer._split("1", False) is None
    x, y = _seq_data()
    with pytest.warns(UserWarning, match="runs more than once"):
        mixer(x, y)


def test_hooks_removed_later_let_the_direct_path_back_and_nested_edits_are_noticed():
    x, y = _seq_data()
    model = _seq_model()
    h = model.register_forward_pre_hook(lambda m, a: None)
    mixer = mm.ManifoldMixup(model, "1", alpha=1.0, num_classes=4, generator=0)
    mixer(x, y)
    assert mixer._split("1", False) is None
    h.remove()
    assert mixer._split("1", False) is not None
    # fresh ConfMix's cut: a module swapped inside a block before the cut is noticed
    torch.manual_seed(0)
    nested = nn.Sequential(nn.Sequential(nn.Linear(6, 8), nn.ReLU()), nn.ReLU(), nn.Linear(8, 4))
    cm = mm.ManifoldMixup(nested, "1", alpha=mm.ConfMix(warmup_epochs=0), num_classes=4, generator=0)
    cm(x, y)
    assert cm._split("1", True) is not None
    nested[0][1] = nn.Sequential(nn.ReLU(), nn.Dropout(0.9))
    assert cm._split("1", True) is None


def test_dense_form_gives_way_where_the_matmul_precision_cannot_be_read(monkeypatch):
    # newer torch raises from the global getter once per-backend precisions are set
    g = torch.Generator().manual_seed(0)
    h = torch.randn(10, 8, generator=g)
    plan = mm.mixing.with_matrix(MixPlan(torch.randperm(10, generator=g), torch.rand(10, generator=g)))
    gather = mix(h, MixPlan(plan.perm, plan.lam))

    def refuse():
        raise RuntimeError("PyTorch is checking the matmul precision without a specific backend name")

    monkeypatch.setattr(torch, "get_float32_matmul_precision", refuse)
    assert torch.equal(mix(h, plan), gather)


@pytest.mark.parametrize("k", [3, 4])
def test_cached_alpha_is_the_torch_alpha_bit_for_bit(k):
    g = torch.Generator().manual_seed(k)
    pol = mm.ConfMix(warmup_epochs=0, confidence="cached")
    logits = torch.randn(30, k, generator=g) * 3
    logits[0] = 0.0  # uniform prediction: confidence 1/K, alpha exactly 0
    logits[1] = torch.tensor([50.0] + [0.0] * (k - 1))  # near one-hot: alpha 1 after clipping
    seen = torch.randperm(40, generator=g)[:30]
    pol.observe(seen, logits)
    inside = torch.randint(0, 40, (64,), generator=g)  # some never seen (NaN in the cache)
    inside[:2] = seen[:2]
    got = pol.cached_alpha(inside, k)  # read in numpy
    expect = mm.confmix_alpha(pol.cached_confidence(inside, k), k).double().numpy()
    assert got.dtype == np.float64 and np.array_equal(got, expect)
    assert got[0] == 0.0 and got[1] == pytest.approx(1.0, abs=1e-6)  # (float32: 1 - 6e-8 at K = 3)
    assert (got[~np.isin(inside.numpy(), seen.numpy())] == 0).all()
    beyond = torch.tensor([3, 45, 39])  # past the end of the cache: grown, then read
    assert np.array_equal(pol.cached_alpha(beyond, k), mm.confmix_alpha(pol.cached_confidence(beyond, k), k).double().numpy())
    assert pol._cache.shape[0] == 46
    with pytest.raises(ValueError, match="indices must be >= 0"):
        pol.cached_alpha(torch.tensor([0, -1]), k)
    pol.set_epoch(0.0)
    assert np.array_equal(mm.ConfMix(warmup_epochs=1, confidence="cached").cached_alpha(inside, k), np.zeros(64))


def test_cached_confmix_refuses_a_bad_index_before_drawing_anything():
    model = mm.models.mlp(3, hidden=(8,), generator=torch.Generator().manual_seed(0))
    mixer = mm.ManifoldMixup(model, "relu1", alpha=mm.ConfMix(warmup_epochs=0, confidence="cached"), num_classes=3, generator=5)
    twin = mm.ManifoldMixup(model, "relu1", alpha=mm.ConfMix(warmup_epochs=0, confidence="cached"), num_classes=3, generator=5)
    x, y = torch.randn(8, 2), torch.randint(0, 3, (8,))
    for bad in (torch.arange(8)[:, None], torch.arange(8.0), torch.ones(8, dtype=torch.bool)):
        with pytest.raises(ValueError, match="index must be an integer tensor"):
            mixer(x, y, index=bad)
    mixer(x, y, index=torch.arange(8))
    twin(x, y, index=torch.arange(8))
    assert torch.equal(mixer.last_plan.perm, twin.last_plan.perm)  # the refused calls drew nothing
    assert torch.equal(mixer.last_plan.lam, twin.last_plan.lam)


def test_dense_form_steps_aside_on_a_device_type_autocast_does_not_know():
    from manifold_mixup.mixing import _dense_allowed
    assert _dense_allowed("meta") is False
    model = mm.models.mlp(3, hidden=(8,), generator=torch.Generator().manual_seed(0)).to("meta")
    mixer = mm.ManifoldMixup(model, "relu1", num_classes=3, generator=0)
    logits, targets = mixer(torch.randn(100, 2, device="meta"), torch.randint(0, 3, (100,)))  # (labels checked on the CPU)
    assert logits.shape == targets.shape == (100, 3)


def test_cached_confmix_under_a_float64_default_dtype():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = mm.models.mlp(3, hidden=(8,), generator=torch.Generator().manual_seed(0))
        pol = mm.ConfMix(warmup_epochs=0, confidence="cached")
        mixer = mm.ManifoldMixup(model, "relu1", alpha=pol, num_classes=3, generator=0)
        x, y, idx = torch.randn(6, 2), torch.randint(0, 3, (6,)), torch.arange(6)
        logits, _ = mixer(x, y, index=idx)
        assert pol._cache.dtype == torch.float32
        expect = torch.softmax(logits.detach().float(), -1).amax(-1)
        assert torch.equal(pol.cached_confidence(idx, 3), expect)
    finally:
        torch.set_default_dtype(old)


def test_cached_confmix_without_num_classes_is_refused_at_once():
    model = mm.models.mlp(3, hidden=(8,), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="needs num_classes=K"):
        mm.ManifoldMixup(model, "relu1", alpha=mm.ConfMix(warmup_epochs=5, confidence="cached"))
    mm.ManifoldMixup(model, "relu1", alpha=mm.ConfMix(warmup_epochs=5))  # fresh confidences need no K
