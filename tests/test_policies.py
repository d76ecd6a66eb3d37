import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import manifold_mixup as mm


def test_ramp_values_at_zero_h_and_2h():
    up, down = mm.RampUp(half_life=10), mm.RampDown(half_life=10)
    for t, u, d in [(0, 0.0, 1.0), (10, 0.5, 0.5), (20, 0.75, 0.25)]:
        up.set_epoch(t); down.set_epoch(t)
        assert up.alpha(t, 4) == pytest.approx(u) and down.alpha_at(t) == pytest.approx(d)
    assert mm.RampUp().half_life == 25


def test_an_epoch_may_be_a_numpy_integer():
    pol = mm.RampUp(10)
    pol.set_epoch(np.int64(10))
    assert pol.alpha_at(pol.epoch) == pytest.approx(0.5)


def test_confmix_alpha_uniform_zero_one_hot_one():
    for k in (2, 3, 10):
        assert mm.confmix_alpha(torch.tensor([1.0 / k]), k).item() == pytest.approx(0.0, abs=1e-7)
        assert mm.confmix_alpha(torch.tensor([1.0]), k).item() == pytest.approx(1.0)
    # below 1/K clips to 0; midway is linear
    assert mm.confmix_alpha(torch.tensor([0.0, 0.55]), 10).tolist() == pytest.approx([0.0, 0.5])


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
def test_lambda_distribution_matches_beta(alpha):
    lam = mm.sample_lambda(alpha, 20000, generator=torch.Generator().manual_seed(123))
    p = stats.kstest(lam.double().numpy(), stats.beta(alpha, alpha).cdf).pvalue
    assert p > 1e-3
    # and a wrong alpha is detected by the same test
    wrong = stats.kstest(lam.double().numpy(), stats.beta(alpha * 2, alpha * 2).cdf).pvalue
    assert wrong < 1e-6


def _mixer(policy, k=3, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, k))
    return model, mm.ManifoldMixup(model, ["1"], alpha=policy, num_classes=k, generator=torch.Generator().manual_seed(seed))


def test_confmix_warmup_gives_lambda_one_exactly_then_mixes():
    pol = mm.ConfMix(warmup_epochs=2)
    model, mixer = _mixer(pol)
    x, y = torch.randn(32, 2), torch.randint(0, 3, (32,))
    for t in (0.0, 1.0, 1.99):
        mixer.set_epoch(t)
        logits, targets = mixer(x, y)
        assert torch.equal(mixer.last_plan.lam, torch.ones(32))
        assert torch.equal(logits, model(x))
    mixer.set_epoch(2.0)
    mixer(x, y)
    assert (mixer.last_plan.lam < 1).any()
    hist = pol.history()
    assert [h["epoch"] for h in hist] == [0, 1, 2]
    assert hist[0]["mean_alpha"] == 0 and hist[0]["mean_lambda"] == 1 and hist[0]["mean_partner_weight"] == 0
    assert 0 < hist[2]["mean_partner_weight"] <= 0.5
    assert 0 < hist[2]["mean_alpha"] <= 1


def test_confmix_fresh_alpha_follows_model_confidence_and_restores_mode():
    pol = mm.ConfMix(warmup_epochs=0)
    model, mixer = _mixer(pol)
    x, y = torch.randn(16, 2), torch.randint(0, 3, (16,))
    with torch.no_grad():  # a confident model: huge logits on class 0
        model[2].bias.copy_(torch.tensor([100.0, 0.0, 0.0]))
    mixer(x, y)
    assert model.training
    assert pol.history()[0]["mean_alpha"] == pytest.approx(1.0)
    with torch.no_grad():  # an unsure model: constant logits
        model[2].weight.zero_(); model[2].bias.zero_()
    mixer(x, y)
    assert torch.equal(mixer.last_plan.lam, torch.ones(16))


def test_half_confmix_uses_half_the_parameter():
    full, half = mm.ConfMix(0), mm.HalfConfMix(0)
    a = torch.full((20000,), 0.8)
    lam_half = mm.sample_lambda(half.beta_parameter(a), 20000, generator=torch.Generator().manual_seed(0))
    assert stats.kstest(lam_half.double().numpy(), stats.beta(0.4, 0.4).cdf).pvalue > 1e-3
    assert torch.equal(full.beta_parameter(a), a)


def test_confmix_cached_uses_previous_epoch_and_costs_no_extra_forward():
    pol = mm.ConfMix(warmup_epochs=1, confidence="cached")
    model, mixer = _mixer(pol)
    calls = []
    model.register_forward_hook(lambda m, a, o: calls.append(1))
    x, y, idx = torch.randn(8, 2), torch.randint(0, 3, (8,)), torch.arange(8)
    mixer.set_epoch(0.0)
    logits, _ = mixer(x, y, index=idx)  # warm-up: clean forward, cache filled exactly
    expect = torch.softmax(logits.detach(), -1).max(-1).values
    assert torch.allclose(pol.cached_confidence(idx, 3), expect)
    mixer.set_epoch(1.0)
    mixer(x, y, index=idx)
    assert len(calls) == 2  # one forward per call: no extra confidence pass
    assert pol.history()[1]["mean_alpha"] == pytest.approx(float(mm.confmix_alpha(expect, 3).mean()), abs=1e-6)
    with pytest.raises(ValueError, match="index=idx"):
        mixer(x, y)
