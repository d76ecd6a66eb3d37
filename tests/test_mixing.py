import torch
import torch.nn.functional as F
from hand_mixing import hand_mix
from hypothesis import given, settings
from hypothesis import strategies as st

import manifold_mixup as mm

settings.register_profile("ci", deadline=None, max_examples=40)
settings.load_profile("ci")

batch = st.integers(2, 16)
alphas = st.floats(0.05, 5.0)
seeds = st.integers(0, 2**31 - 1)


@given(b=batch, alpha=alphas, seed=seeds, per_sample=st.booleans())
def test_plan_is_a_permutation_with_lambda_in_unit_interval(b, alpha, seed, per_sample):
    plan = mm.draw_plan(b, alpha, per_sample=per_sample, generator=torch.Generator().manual_seed(seed))
    assert sorted(plan.perm.tolist()) == list(range(b))
    assert ((plan.lam >= 0) & (plan.lam <= 1)).all()
    if not per_sample:
        assert (plan.lam == plan.lam[0]).all()


@given(b=batch, alpha=alphas, seed=seeds)
def test_same_seed_same_plan_other_seed_other_plan(b, alpha, seed):
    p1 = mm.draw_plan(b, alpha, generator=torch.Generator().manual_seed(seed))
    p2 = mm.draw_plan(b, alpha, generator=torch.Generator().manual_seed(seed))
    p3 = mm.draw_plan(b, alpha, generator=torch.Generator().manual_seed(seed + 1))
    assert torch.equal(p1.perm, p2.perm) and torch.equal(p1.lam, p2.lam)
    assert not torch.equal(p1.lam, p3.lam)


@given(b=batch, alpha=alphas, seed=seeds)
def test_mix_is_a_convex_combination_of_the_pair(b, alpha, seed):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(b, 3, 2, generator=g, dtype=torch.float64)
    plan = mm.draw_plan(b, alpha, generator=g)
    out = mm.mix(h, plan)
    lo = torch.minimum(h, h[plan.perm]) - 1e-12
    hi = torch.maximum(h, h[plan.perm]) + 1e-12
    assert ((out >= lo) & (out <= hi)).all()
    assert torch.allclose(out, hand_mix(h, plan.perm, plan.lam))


@given(b=batch, k=st.integers(2, 7), alpha=alphas, seed=seeds, eps=st.sampled_from([0.0, 0.1]))
def test_mixed_targets_rows_sum_to_one_and_loss_forms_agree(b, k, alpha, seed, eps):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (b,), generator=g)
    logits = torch.randn(b, k, generator=g)
    plan = mm.draw_plan(b, alpha, generator=g)
    t = mm.mix_targets(y, plan, k, label_smoothing=eps)
    assert torch.allclose(t.sum(1), torch.ones(b))
    assert (t >= 0).all()
    two_term = mm.mixed_cross_entropy(logits, y, plan, label_smoothing=eps)
    assert torch.allclose(two_term, mm.soft_cross_entropy(logits, t), atol=1e-5)


@given(b=batch, seed=seeds)
def test_lambda_one_is_identity(b, seed):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(b, 5, generator=g)
    plan = mm.MixPlan(torch.randperm(b, generator=g), torch.ones(b))
    assert torch.equal(mm.mix(h, plan), h)
    y = torch.randint(0, 3, (b,), generator=g)
    assert torch.equal(mm.mix_targets(y, plan, 3), F.one_hot(y, 3).float())


def test_alpha_zero_gives_lambda_one_exactly():
    lam = mm.sample_lambda(0.0, 10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(lam, torch.ones(10))
    mixed = mm.sample_lambda(torch.tensor([0.0, 1.0, 0.0, 2.0]), 4, generator=torch.Generator().manual_seed(0))
    assert mixed[0] == 1 and mixed[2] == 1 and mixed[1] < 1 and mixed[3] < 1


def test_mix_keeps_dtype():
    plan = mm.draw_plan(4, 1.0, generator=torch.Generator().manual_seed(0))
    h = torch.randn(4, 3).to(torch.bfloat16)
    assert mm.mix(h, plan).dtype == torch.bfloat16


def test_mixing_in_low_precision_keeps_lambda_precise():
    h = torch.randn(4, 8).bfloat16()
    plan = mm.MixPlan(torch.tensor([1, 0, 3, 2]), torch.tensor([0.999, 0.9, 0.5, 0.1]))
    exact = hand_mix(h.float(), plan.perm, plan.lam).bfloat16()  # mixed in float32, rounded once
    assert mm.mix(h, plan).dtype == torch.bfloat16 and torch.equal(mm.mix(h, plan), exact)


def test_a_row_with_lambda_one_is_exactly_its_own_row_even_beside_nan():
    h = torch.randn(4, 3)
    h[2] = float("nan")
    h[3, 0] = float("inf")
    perm = torch.tensor([2, 3, 0, 1])
    out = mm.mix(h, mm.MixPlan(perm, torch.tensor([1.0, 1.0, 0.5, 1.0])))
    assert torch.equal(out[0], h[0]) and torch.equal(out[1], h[1])
    assert torch.isinf(out[3, 0]) and torch.equal(out[3, 1:], h[3, 1:])
    assert torch.isnan(out[2]).all()  # (its own row is NaN)
