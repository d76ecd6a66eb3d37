"""The vectorised trainer equals the reference path (ManifoldMixup on nn.Sequential) member by member."""

from __future__ import annotations

import pytest
import torch

import manifold_mixup as mm
from manifold_mixup.paper.ensemble import (
    EnsembleConfig,
    MemberSpec,
    epoch_plan,
    predict_ensemble,
    to_sequential,
    train_ensemble,
)

HIDDEN = (32, 32, 32)
N, BATCH, EPOCHS = 100, 20, 3
CFG = EnsembleConfig(epochs=EPOCHS, batch_size=BATCH, hidden=HIDDEN, dtype=torch.float64)
TOL = 1e-6


def make_data(m: int, ks: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, N, 2, generator=g)
    y = torch.stack([torch.randint(0, k, (N,), generator=g) for k in ks])
    return x, y


def reference(x, y, k, spec, config=CFG, layer_override=None, perm_fn=None, lam_fn=None, momentum=0.9):
    """Train one member through mm.models.mlp + ManifoldMixup, replaying epoch_plan; returns its Linear weights."""
    torch.manual_seed(0)  # the reference path draws nothing from it; set anyway
    model = mm.models.mlp(k, config.hidden, generator=torch.Generator().manual_seed(spec.seed)).double()
    if config.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=momentum)
    depth = len(config.hidden)
    layer = spec.mix_layer if layer_override is None else layer_override
    mixer = None
    if layer is not None:
        mixer = mm.ManifoldMixup(model, mm.models.mlp_layer(layer, depth), alpha=spec.alpha, num_classes=k)
    x = x.double()
    for epoch in range(config.epochs):
        order, perm, lam = epoch_plan(spec.seed, epoch, x.shape[0], config.batch_size, spec.alpha)
        for b in range(perm.shape[0]):
            idx = order[b * config.batch_size:(b + 1) * config.batch_size]
            xb, yb = x[idx], y[idx]
            if mixer is None:
                logits, targets = model(xb), mm.soft_targets(yb, k)
            else:
                p, l = perm[b], lam[b]
                p = perm_fn(p) if perm_fn else p
                l = lam_fn(l) if lam_fn else l
                logits, targets = mixer(xb, yb, plan=mm.MixPlan(p, l), layer=mm.models.mlp_layer(layer, depth))
            loss = mm.soft_cross_entropy(logits, targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return [mod.weight.detach() for mod in model if isinstance(mod, torch.nn.Linear)] + [
        mod.bias.detach() for mod in model if isinstance(mod, torch.nn.Linear)]


def member_weights(params, i):
    model = to_sequential(params, i)
    return [mod.weight.detach() for mod in model if isinstance(mod, torch.nn.Linear)] + [
        mod.bias.detach() for mod in model if isinstance(mod, torch.nn.Linear)]


def maxdiff(a, b):
    return max(float((u - v).detach().abs().max()) for u, v in zip(a, b))


def test_init_matches_mlp():
    x, y = make_data(1, [3])
    params = train_ensemble(x, y, 3, [MemberSpec(5, None, 0.5)], EnsembleConfig(epochs=1, batch_size=BATCH, hidden=HIDDEN, lr=1e-300))
    ref = mm.models.mlp(3, HIDDEN, generator=torch.Generator().manual_seed(5))
    assert maxdiff(member_weights(params, 0), [m.weight for m in ref if isinstance(m, torch.nn.Linear)]
                   + [m.bias for m in ref if isinstance(m, torch.nn.Linear)]) < 1e-6


@pytest.mark.parametrize("layer", [None, 0, 2])
def test_single_member_matches_reference(layer):
    x, y = make_data(1, [3])
    spec = MemberSpec(11, layer, 0.5)
    params = train_ensemble(x, y, 3, [spec], CFG)
    ref = reference(x[0], y[0], 3, spec)
    assert maxdiff(member_weights(params, 0), ref) < TOL


def test_three_methods_and_negative_controls():
    specs = [MemberSpec(1, None, 0.5), MemberSpec(2, 0, 0.5), MemberSpec(3, 2, 0.5)]
    x, y = make_data(3, [3, 3, 3])
    params = train_ensemble(x, y, 3, specs, CFG)
    got = [member_weights(params, i) for i in range(3)]
    for i, s in enumerate(specs):
        assert maxdiff(got[i], reference(x[i], y[i], 3, s)) < TOL
    # negative controls on the layer-2 member: each change must move the weights clearly
    x2, y2, s2 = x[2], y[2], specs[2]
    for kw in ({"layer_override": 1}, {"layer_override": 3}, {"layer_override": 0},
               {"perm_fn": lambda p: p.roll(1)}, {"lam_fn": lambda l: (l * 0.9 + 0.05)}):
        assert maxdiff(got[2], reference(x2, y2, 3, s2, **kw)) > 100 * TOL, kw
    # and the ERM member is not the same as mixing
    assert maxdiff(got[0], reference(x[0], y[0], 3, MemberSpec(1, 1, 0.5))) > 100 * TOL


def test_different_k_padding_matches_reference():
    ks = [2, 5, 3]
    specs = [MemberSpec(4, 1, 0.5), MemberSpec(5, None, 0.5), MemberSpec(6, 3, 2.0)]
    x, y = make_data(3, ks, seed=1)
    params = train_ensemble(x, y, ks, specs, CFG)
    assert params.weights[-1].shape[1] == 5
    for i, s in enumerate(specs):
        assert maxdiff(member_weights(params, i), reference(x[i], y[i], ks[i], s)) < TOL
    assert torch.all(params.weights[-1][0, 2:] == 0) and torch.all(params.biases[-1][2, 3:] == 0)


def test_sgd_is_torchs_sgd_with_momentum_0_9():
    # 'sgd' is torch.optim.SGD(lr, momentum=0.9), as train.make_optimizer builds it, member by member
    from manifold_mixup.paper.ensemble import SGD_MOMENTUM
    from manifold_mixup.train import make_optimizer

    opt = make_optimizer([torch.nn.Parameter(torch.zeros(1))], "sgd", 0.1)
    assert SGD_MOMENTUM == 0.9 and opt.defaults["momentum"] == SGD_MOMENTUM
    assert opt.defaults["dampening"] == 0 and not opt.defaults["nesterov"]
    cfg = EnsembleConfig(epochs=EPOCHS, batch_size=BATCH, hidden=HIDDEN, dtype=torch.float64,
                         optimizer="sgd", lr=0.05)
    specs = [MemberSpec(8, 2, 0.5), MemberSpec(9, None, 0.5)]
    x, y = make_data(2, [4, 4], seed=2)
    params = train_ensemble(x, y, 4, specs, cfg)
    for i, s in enumerate(specs):
        assert maxdiff(member_weights(params, i), reference(x[i], y[i], 4, s, config=cfg)) < TOL
    # negative control: plain SGD (no momentum) ends elsewhere
    assert maxdiff(member_weights(params, 1), reference(x[1], y[1], 4, specs[1], config=cfg, momentum=0.0)) > 100 * TOL


def member_risk_proxy(epoch, members, params):
    """A picklable evaluate(): each member's mean logit on fixed points, and the epoch and member index."""
    pts = torch.linspace(-2, 2, 14, dtype=params.weights[0].dtype).view(7, 2)
    out = torch.stack([to_sequential(params, r)(pts).mean() for r in range(params.num_models)]).detach()
    return torch.stack([out.double(), torch.full_like(out, epoch).double(), torch.tensor(members).double()], 1)


@pytest.mark.parametrize("layout", [dict(), dict(memory_budget=200_000),
                                    pytest.param(dict(memory_budget=200_000, workers=2), marks=pytest.mark.slow)])
def test_eval_epochs_see_what_a_shorter_run_ends_with(layout):
    ks = [2, 3, 4, 5, 3]
    specs = [MemberSpec(s, l, 0.5) for s, l in zip(range(5), [None, 0, 1, 2, 3])]
    x, y = make_data(5, ks, seed=6)
    cfg = EnsembleConfig(epochs=4, batch_size=BATCH, hidden=HIDDEN, eval_epochs=(1, 3), **layout)
    full = train_ensemble(x, y, ks, specs, cfg)
    plain = train_ensemble(x, y, ks, specs, EnsembleConfig(epochs=4, batch_size=BATCH, hidden=HIDDEN, **layout))
    assert list(full.snapshots) == [1, 3] and not full.evaluations
    # evaluating changes nothing in training: the final parameters are bit for bit the plain run's
    for a, b in zip(full.weights + full.biases, plain.weights + plain.biases):
        assert torch.equal(a, b)
    for e in (1, 3):
        short = train_ensemble(x, y, ks, specs, EnsembleConfig(epochs=e, batch_size=BATCH, hidden=HIDDEN, **layout))
        snap = full.snapshots[e]
        assert snap.num_classes == ks
        for a, b in zip(snap.weights + snap.biases, short.weights + short.biases):
            assert torch.equal(a, b)
        assert torch.equal(full.losses[:, :e], short.losses)
    # snapshots differ between epochs (training went on)
    assert maxdiff(full.snapshots[1].weights, full.snapshots[3].weights) > 1e-4
    # an evaluate() function sees the same parameters; its rows come back in member order
    ev = train_ensemble(x, y, ks, specs, cfg, evaluate=member_risk_proxy)
    assert list(ev.evaluations) == [1, 3] and not ev.snapshots
    for e in (1, 3):
        got = ev.evaluations[e]
        assert got.shape == (5, 3) and torch.equal(got[:, 1], torch.full((5,), float(e), dtype=torch.float64))
        assert torch.equal(got[:, 2], torch.arange(5, dtype=torch.float64))
        # (the same parameters, bit for bit, as the snapshots show; evaluated in a worker process the
        # function's own float sums may round differently, so its value is compared to a float32 tolerance)
        assert torch.allclose(got[:, 0], member_risk_proxy(e, list(range(5)), full.snapshots[e])[:, 0], rtol=0, atol=1e-6)


def test_chunking_and_determinism():
    ks = [2, 3, 4, 5, 3]
    specs = [MemberSpec(s, l, 0.5) for s, l in zip(range(5), [None, 0, 1, 2, 3])]
    x, y = make_data(5, ks, seed=3)
    cfg = EnsembleConfig(epochs=2, batch_size=BATCH, hidden=HIDDEN)
    one = train_ensemble(x, y, ks, specs, cfg)
    seen = []
    small = EnsembleConfig(epochs=2, batch_size=BATCH, hidden=HIDDEN, memory_budget=200_000)
    many = train_ensemble(x, y, ks, specs, small, progress=seen.append)
    assert len(seen) > 2 and seen[-1] == 5
    again = train_ensemble(x, y, ks, specs, cfg)
    pooled = train_ensemble(x, y, ks, specs, EnsembleConfig(epochs=2, batch_size=BATCH, hidden=HIDDEN,
                                                            memory_budget=200_000, workers=2))
    for a, b, c, d in zip(one.weights + one.biases, many.weights + many.biases, again.weights + again.biases,
                          pooled.weights + pooled.biases):
        assert torch.allclose(a, b, atol=1e-5) and torch.equal(a, c) and torch.allclose(a, d, atol=1e-5)
    assert torch.allclose(one.losses, pooled.losses, atol=1e-5)


def test_predict_matches_sequential():
    ks = [2, 4, 3]
    x, y = make_data(3, ks, seed=4)
    params = train_ensemble(x, y, ks, [MemberSpec(i, None, 0.5) for i in range(3)],
                            EnsembleConfig(epochs=2, batch_size=BATCH, hidden=HIDDEN))
    grid = torch.rand(1000, 2, generator=torch.Generator().manual_seed(0)) * 6 - 3
    pred = predict_ensemble(params, grid, chunk=128)
    per = predict_ensemble(params, grid.expand(3, -1, -1), chunk=300)
    for i in range(3):
        with torch.no_grad():
            ref = to_sequential(params, i)(grid).argmax(-1)
        assert torch.equal(pred[i], ref) and torch.equal(per[i], ref)
        assert int(pred[i].max()) < ks[i]


def test_epoch_plan_shapes_and_streams():
    order, perm, lam = epoch_plan(3, 0, 100, 20, 0.5)
    assert sorted(order.tolist()) == list(range(100)) and perm.shape == lam.shape == (5, 20)
    assert all(sorted(p.tolist()) == list(range(20)) for p in perm)
    assert ((lam >= 0) & (lam <= 1)).all()
    o2, p2, l2 = epoch_plan(3, 1, 100, 20, 0.5)
    assert not torch.equal(order, o2)
    assert torch.equal(epoch_plan(3, 0, 100, 20, 0.0)[2], torch.ones(5, 20))
    assert torch.equal(epoch_plan(3, 0, 100, 20, 0.5)[0], order)


@pytest.mark.parametrize("change, match", [
    (dict(specs=[MemberSpec(0)]), "specs has 1 entries"),
    (dict(num_classes=1), "num_classes.*>= 2"),
    (dict(num_classes=[3, 3, 3]), "num_classes has 3"),
    (dict(y=torch.full((2, N), 3)), r"labels of member 0 must lie in \[0, 3\)"),
    (dict(specs=[MemberSpec(0), MemberSpec(1, 4, 0.5)]), r"specs\[1\].mix_layer .* 1..3; got 4"),
    (dict(specs=[MemberSpec(0), MemberSpec(1, 1, -0.5)]), r"specs\[1\].alpha .*>= 0"),
    (dict(specs=[MemberSpec(0), MemberSpec(-1, 1, 0.5)]), r"specs\[1\].seed"),
    (dict(config=EnsembleConfig(batch_size=30, hidden=HIDDEN)), "multiple of config.batch_size = 30"),
    (dict(config=EnsembleConfig(batch_size=BATCH, hidden=HIDDEN, memory_budget=1000)), "memory_budget = 1000"),
    (dict(config=EnsembleConfig(batch_size=BATCH, hidden=HIDDEN, memory_budget=0)), "memory_budget must be a finite number >= 1; got 0"),
    (dict(config=EnsembleConfig(batch_size=BATCH, hidden=HIDDEN, memory_budget=float("inf"))), "memory_budget must be a finite number >= 1; got inf"),
    (dict(config=EnsembleConfig(optimizer="rmsprop", hidden=HIDDEN)), r"config.optimizer must be one of \['adam', 'sgd'\]"),
    (dict(config=EnsembleConfig(epochs=2, batch_size=BATCH, hidden=HIDDEN, eval_epochs=(1, 3))),
     r"eval_epochs must be distinct integers in 1..epochs = 2; got \(1, 3\)"),
    (dict(config=EnsembleConfig(epochs=2, batch_size=BATCH, hidden=HIDDEN, eval_epochs=(1, 1))), "eval_epochs must be distinct"),
    (dict(evaluate="risk"), "evaluate must be None or a function"),
    (dict(x=torch.zeros(2, N)), r"x must be a float Tensor \[M, n, d\]"),
    (dict(y=torch.zeros(2, N - 1, dtype=torch.long)), r"y must be an integer Tensor \[M, n\]"),
])
def test_bad_inputs(change, match):
    x, y = make_data(2, [3, 3])
    kw = dict(x=x, y=y, num_classes=3, specs=[MemberSpec(0), MemberSpec(1, 1, 0.5)],
              config=EnsembleConfig(epochs=1, batch_size=BATCH, hidden=HIDDEN))
    kw.update(change)
    with pytest.raises(ValueError, match=match):
        train_ensemble(**kw)


def test_memory_budget_takes_any_finite_number_of_bytes():
    import numpy as np

    from manifold_mixup.paper.ensemble import chunk_size_for

    for budget in (2e9, np.int64(1 << 30), 1 << 30):
        cfg = EnsembleConfig(batch_size=BATCH, hidden=HIDDEN, memory_budget=budget)
        assert chunk_size_for(2, 3, N, cfg) == chunk_size_for(2, 3, N, EnsembleConfig(batch_size=BATCH, hidden=HIDDEN))
    x, y = make_data(2, [3, 3])
    train_ensemble(x, y, 3, [MemberSpec(0), MemberSpec(1, 1, 0.5)],
                   EnsembleConfig(epochs=1, batch_size=BATCH, hidden=HIDDEN, memory_budget=2e9))


def test_mix_matrices_equal_the_rows_written_one_by_one():
    from manifold_mixup.paper.ensemble import _mix_matrices

    # B = 4 makes rows that are their own partner common; tiny and huge alpha put lambda near 0 and 1
    m, nb, B = 4, 6, 4
    g = torch.Generator().manual_seed(0)
    perm = torch.stack([torch.stack([torch.randperm(B, generator=g) for _ in range(nb)]) for _ in range(m)])
    lam = torch.rand(m, nb, B, generator=g, dtype=torch.float64) ** 30
    lam[1] = 1 - lam[1]
    lam[2, 0] = 1.0  # alpha = 0: lambda is 1
    mixes = torch.tensor([True, True, True, False])
    assert (perm == torch.arange(B)).any()
    for dt in (torch.float32, torch.float64):
        want = torch.zeros(nb, m, B, B, dtype=torch.float64)
        for r in range(m):
            for b in range(nb):
                for i in range(B):
                    if not mixes[r]:
                        want[b, r, i, i] = 1.0
                        continue
                    l = float(lam[r, b, i])
                    want[b, r, i, i] += l
                    want[b, r, i, int(perm[r, b, i])] += 1.0 - l
        got = _mix_matrices(perm, lam, mixes, dt, torch.device("cpu"))
        assert got.dtype == dt and got.shape == (nb, m, B, B)
        assert torch.equal(got, want.to(dt))


def test_members_sharing_a_seed_draw_once_and_train_as_if_drawn_alone(monkeypatch):
    import manifold_mixup.paper.ensemble as ens

    calls = {"plan": 0, "init": 0}
    plan, init = ens.epoch_plan, ens.mlp_init

    def counted(name, f):
        def wrapper(*a, **k):
            calls[name] += 1
            return f(*a, **k)
        return wrapper

    # two problems x five methods (one seed per problem, the depth study's layout), chunks of two members
    ks = [3] * 5 + [4] * 5
    specs = [MemberSpec(s, l, 0.5) for s in (11, 12) for l in (None, 0, 1, 2, 3)]
    x, y = make_data(10, ks, seed=8)
    cfg = EnsembleConfig(epochs=3, batch_size=BATCH, hidden=HIDDEN, chunk_models=2)
    monkeypatch.setattr(ens, "epoch_plan", counted("plan", plan))
    monkeypatch.setattr(ens, "mlp_init", counted("init", init))
    shared = train_ensemble(x, y, ks, specs, cfg)
    assert calls == {"plan": 2 * 3, "init": 2}
    monkeypatch.setattr(ens, "_DRAWS_BUDGET", 0)  # nothing kept: every member draws its own
    alone = train_ensemble(x, y, ks, specs, cfg)
    assert calls == {"plan": 2 * 3 + 10 * 3, "init": 2 + 10}
    for a, b in zip(shared.weights + shared.biases + [shared.losses], alone.weights + alone.biases + [alone.losses]):
        assert torch.equal(a, b)


def test_draws_are_the_functions_values_and_are_let_go():
    from manifold_mixup.paper.ensemble import _Draws

    specs = [MemberSpec(5, None, 0.5), MemberSpec(5, 1, 0.5), MemberSpec(5, 2, 0.0), MemberSpec(6, 0, 0.5)]
    ks = [3, 3, 3, 2]
    for budget in (1 << 30, 0):
        draws = _Draws(specs, ks, budget=budget)
        for epoch in range(2):
            for s in specs:
                got = draws.plan(s.seed, epoch, N, BATCH, s.alpha)
                for a, b in zip(got, epoch_plan(s.seed, epoch, N, BATCH, s.alpha)):
                    assert torch.equal(a, b)
        for s, k in zip(specs, ks):
            sizes = [2, *HIDDEN, k]
            for (w, b), (w2, b2) in zip(draws.init(sizes, s.seed), mm.models.mlp_init(sizes, torch.Generator().manual_seed(s.seed))):
                assert torch.equal(w, w2) and torch.equal(b, b2)
        assert draws.kept == {} and draws.bytes == 0 and not draws.taken


# ---------------------------------------------------------------- alpha policies (schedules)
def test_a_ramp_draws_each_batch_at_the_closed_form_alpha_of_its_clock():
    """Batch b of epoch t is drawn at alpha = 1 - 2**(-(t + b / batches) / h) (RampUp's closed form,
    the clock train_classifier sets), from the documented stream, after the order and the permutations."""
    import numpy as np

    from manifold_mixup.paper.ensemble import PLAN_STREAM

    h, seed, n, b = 2.0, 7, 100, 20
    for epoch in (0, 3):
        order, perm, lam = epoch_plan(seed, epoch, n, b, mm.RampUp(h))
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(PLAN_STREAM, epoch)))
        assert torch.equal(order, torch.from_numpy(rng.permutation(n)))
        rng.permuted(np.broadcast_to(np.arange(b), (n // b, b)), axis=1)
        for i in range(n // b):
            a = 1 - 2 ** (-(epoch + i / (n // b)) / h)
            want = np.ones(b) if a == 0 else rng.beta(a, a, size=b)  # alpha 0 (t = 0) draws nothing
            assert torch.equal(lam[i], torch.from_numpy(want)), (epoch, i)
    # a constant policy is the number itself: the same plans, drawn once for both
    assert all(torch.equal(u, v) for u, v in zip(epoch_plan(3, 1, n, b, 0.5), epoch_plan(3, 1, n, b, mm.Constant(0.5))))


@pytest.mark.parametrize("policy", [mm.RampUp(1.5), mm.RampDown(1.0)])
def test_a_member_on_a_ramp_matches_the_reference_path(policy):
    """The member-by-member equality extends to a schedule: a member on a ramp equals the reference
    path replaying its plans, and the alpha it is drawn at is the one ``train_classifier`` gives the
    mixer with the same policy (its recorded mean alpha per epoch; the draws above are checked
    against the closed form)."""
    from manifold_mixup.paper.ensemble import batch_alphas

    x, y = make_data(2, [3, 3])
    specs = [MemberSpec(11, 2, policy), MemberSpec(11, 0, policy)]
    params = train_ensemble(x, y, 3, specs, CFG)
    for i, s in enumerate(specs):
        assert maxdiff(member_weights(params, i), reference(x[i], y[i], 3, s)) < TOL
    # negative control: the constant alpha of the ramp's mean is not the ramp
    assert maxdiff(member_weights(params, 0), reference(x[0], y[0], 3, MemberSpec(11, 2, 0.5))) > 100 * TOL
    same = type(policy)(policy.half_life)  # a fresh copy: the mixer records into its own
    res = mm.train_classifier(mm.models.mlp(3, HIDDEN, generator=torch.Generator().manual_seed(0)), x[0], y[0],
                              layers="relu2", alpha=same, epochs=EPOCHS, batch_size=BATCH,
                              generator=torch.Generator().manual_seed(1))
    batches = N // BATCH
    for epoch, h in enumerate(res.policy):
        assert h["mean_alpha"] == pytest.approx(sum(batch_alphas(policy, epoch, batches)) / batches, rel=1e-12)


class _Scaled(mm.AlphaPolicy):
    """An epoch-only policy whose setting is a private attribute (its repr does not show it), and
    which halves its Beta parameter as half ConfMix does."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self._scale = scale

    def alpha_at(self, epoch: float) -> float:
        return self._scale * (1 + epoch)

    def beta_parameter(self, alpha):
        return alpha / 2


def test_members_with_different_policies_never_share_a_draw_and_the_beta_parameter_is_drawn():
    x, y = make_data(2, [3, 3])
    specs = [MemberSpec(11, 2, _Scaled(0.1)), MemberSpec(11, 2, _Scaled(4.0))]
    together = train_ensemble(x, y, 3, specs, CFG)
    alone = train_ensemble(x[1:], y[1:], 3, specs[1:], CFG)
    assert maxdiff(member_weights(together, 1), member_weights(alone, 0)) < TOL
    for i, s in enumerate(specs):  # the reference replays epoch_plan, which draws Beta(alpha / 2, alpha / 2)
        assert maxdiff(member_weights(together, i), reference(x[i], y[i], 3, s)) < TOL
    import numpy as np

    from manifold_mixup.paper.ensemble import PLAN_STREAM

    order, perm, lam = epoch_plan(3, 1, N, BATCH, _Scaled(4.0))
    rng = np.random.default_rng(np.random.SeedSequence(3, spawn_key=(PLAN_STREAM, 1)))
    rng.permutation(N), rng.permuted(np.broadcast_to(np.arange(BATCH), (N // BATCH, BATCH)), axis=1)
    for b in range(N // BATCH):
        a = 4.0 * (1 + 1 + b / (N // BATCH)) / 2
        assert torch.equal(lam[b], torch.from_numpy(rng.beta(a, a, size=BATCH)))


def test_a_policy_that_needs_the_batch_is_refused_by_the_vectorised_trainer():
    x, y = make_data(2, [3, 3])
    with pytest.raises(ValueError, match=r"specs\[1\].alpha is ConfMix, which sets alpha from each batch"):
        train_ensemble(x, y, 3, [MemberSpec(0), MemberSpec(1, 1, mm.ConfMix())], CFG)
