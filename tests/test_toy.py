"""Tests of the Gaussian-mixture toy problems: quadrature risk, Monte Carlo, MMLB, spiral."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.stats import norm

from manifold_mixup.paper.toy import (
    DEFAULT_MEAN_RANGE,
    DEFAULT_SIGMA_RANGE,
    GaussianMixtureProblem,
    spiral,
)


def two_gaussians(d: float, sigma: float, priors=None, **kw) -> GaussianMixtureProblem:
    """Two classes, one Gaussian each, at distance d along a tilted direction."""
    u = torch.tensor([math.cos(0.3), math.sin(0.3)], dtype=torch.float64)
    means = torch.stack([(0.2 - 0.5 * d) * u, (0.2 + 0.5 * d) * u])[:, None, :]
    return GaussianMixtureProblem(means, sigma, priors, **kw)


def linear_rule(k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(2, k, generator=g)
    b = torch.randn(k, generator=g)
    return lambda x: x @ w + b


def small_mlp(k: int, seed: int) -> torch.nn.Module:
    m = torch.nn.Sequential(
        torch.nn.Linear(2, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, k)
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(-0.5, 0.5, generator=g)
    return m


# ---------------------------------------------------------------- exact values
@pytest.mark.parametrize("d,sigma", [(0.5, 0.3), (2.0, 1.0), (3.0, 0.7), (1.0, 1.5)])
def test_bayes_risk_of_two_gaussians_is_phi(d, sigma):
    p = two_gaussians(d, sigma)
    assert p.bayes_risk() == pytest.approx(norm.cdf(-d / (2 * sigma)), abs=1e-5)


def test_bayes_risk_with_unequal_priors():
    # boundary shifts to t = sigma^2 log(pi0/pi1)/d + d/2 from mean 0 along the axis
    d, s, pi0 = 2.0, 1.0, 0.7
    p = two_gaussians(d, s, [pi0, 1 - pi0])
    t = s**2 * math.log(pi0 / (1 - pi0)) / d + d / 2
    exact = pi0 * norm.sf(t / s) + (1 - pi0) * norm.cdf((t - d) / s)
    assert p.bayes_risk() == pytest.approx(exact, abs=1e-5)


def test_constant_predictor_has_risk_one_minus_prior():
    means = torch.tensor([[[0.0, 0.0], [1.0, 2.0]], [[3.0, 0.0], [2.0, -1.0]], [[-1.0, 3.0], [0.0, 1.0]]])
    priors = [0.5, 0.3, 0.2]
    p = GaussianMixtureProblem(means, 0.8, priors)
    for c in range(3):
        r = p.risk(lambda x, c=c: torch.full((x.shape[0],), c, dtype=torch.int64))
        assert r == pytest.approx(1 - priors[c], abs=1e-5)
    assert p.bayes_risk() < 1 - max(priors)


def test_bayes_predictor_has_zero_excess_risk():
    p = GaussianMixtureProblem.random(4, 3, 7)
    ex = p.excess_risk(p.bayes_predict)
    assert ex.absolute == pytest.approx(0.0, abs=1e-12)
    assert ex.relative_percent == pytest.approx(0.0, abs=1e-9)
    assert ex.bayes_risk == pytest.approx(p.bayes_risk(), abs=1e-15)


# ---------------------------------------------------------------- quadrature vs Monte Carlo
@pytest.mark.parametrize("seed,k,n", [(1, 2, 5), (2, 3, 5), (3, 5, 5), (4, 4, 1)])
def test_quadrature_agrees_with_monte_carlo(seed, k, n):
    p = GaussianMixtureProblem.random(k, n, seed)
    for predict in (p.bayes_predict, linear_rule(k, seed)):
        quad = p.risk(predict)
        mc = p.monte_carlo_risk(predict, 100_000, 1000 + seed)
        assert mc.stderr > 0
        assert abs(quad - mc.risk) < 4 * mc.stderr, (quad, mc)


def test_excess_risk_is_nonnegative_and_consistent():
    p = GaussianMixtureProblem.random(3, 4, 11)
    g = torch.Generator().manual_seed(5)
    pts, _, _ = p.grid()
    preds = torch.randint(0, 3, (6, pts.shape[0]), generator=g)
    preds[0] = p.bayes_predict(pts)
    preds[1, :100] = (preds[0, :100] + 1) % 3  # Bayes almost everywhere
    preds[1, 100:] = preds[0, 100:]
    ex = p.excess_risk_from_predictions(preds)
    assert ex.shape == (6,)
    assert (ex >= 0).all()
    assert float(ex[0]) == 0.0
    risks = p.risk_from_predictions(preds)
    assert torch.allclose(risks - p.bayes_risk(), ex, atol=1e-12)
    assert torch.allclose(risks, torch.stack([p.risk_from_predictions(r) for r in preds]))
    for seed in range(3):
        e = p.excess_risk(small_mlp(3, seed))
        assert e.absolute >= 0 and e.relative_percent >= 0
        assert e.absolute_percent == pytest.approx(100 * e.absolute)
        assert e.relative_percent == pytest.approx(100 * e.absolute / e.bayes_risk)


def test_scores_and_labels_give_the_same_risk():
    p = GaussianMixtureProblem.random(3, 2, 3)
    rule = linear_rule(3, 0)
    assert p.risk(rule) == p.risk(lambda x: rule(x).argmax(1))
    assert p.risk(lambda x: rule(x).numpy()) == p.risk(rule)


def test_doubling_resolution_stays_within_error_estimate():
    p = GaussianMixtureProblem.random(3, 5, 21, grid_resolution=128)
    q = p.with_grid_resolution(256)
    for predict in (p.bayes_predict, linear_rule(3, 1), small_mlp(3, 2)):
        lp, lq = p.predict_on_grid(predict), q.predict_on_grid(predict)
        diff = abs(float(p.risk_from_predictions(lp)) - float(q.risk_from_predictions(lq)))
        bound = float(p.risk_error_estimate(lp)) + float(q.risk_error_estimate(lq))
        assert diff <= bound, (diff, bound)


def test_uncovered_mass_is_below_1e_6():
    p = GaussianMixtureProblem.random(5, 5, 0)
    pts, w, joint = p.grid()
    assert pts.dtype == torch.float32 and w.dtype == torch.float64 and joint.dtype == torch.float64
    assert joint.shape == (pts.shape[0], 5) and w.shape == (pts.shape[0],)
    assert p.uncovered_mass_bound < 1e-6
    assert 1 - float((w[:, None] * joint).sum()) == pytest.approx(0.0, abs=1e-6)
    assert p.grid() is not None and p.grid().points is pts  # cached


# ---------------------------------------------------------------- MMLB
def test_mmlb_of_two_gaussians_matches_1d_integral():
    d, s = 2.0, 1.0
    p = two_gaussians(d, s)

    def mis(lam):
        return norm.cdf(-(d / 2) / (s * math.sqrt(lam**2 + (1 - lam) ** 2)))

    exact, _ = integrate.quad(mis, 0.0, 1.0)
    res = p.mmlb(100_000, 3)
    assert abs(res.normalised - exact) < 4 * res.normalised_stderr
    assert abs(res.value - 0.5 * exact) < 4 * res.stderr
    assert res.value == pytest.approx(0.5 * res.normalised)


def test_mmlb_stderr_target_for_five_classes():
    res = GaussianMixtureProblem.random(5, 5, 2).mmlb(generator=0)
    assert res.stderr <= 0.002 and res.normalised_stderr <= 0.002
    assert 0 <= res.normalised <= 1


# ---------------------------------------------------------------- determinism
def test_same_seed_same_problem_and_samples():
    a = GaussianMixtureProblem.random(3, 5, 42)
    b = GaussianMixtureProblem.random(3, 5, torch.Generator().manual_seed(42))
    assert torch.equal(a.means, b.means) and a.sigma == b.sigma
    assert not torch.equal(a.means, GaussianMixtureProblem.random(3, 5, 43).means)
    xa, ya = a.sample(500, 9)
    xb, yb = b.sample(500, torch.Generator().manual_seed(9))
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert xa.dtype == torch.float32 and ya.dtype == torch.int64 and xa.shape == (500, 2)
    lo, hi = DEFAULT_MEAN_RANGE
    assert (a.means >= lo).all() and (a.means <= hi).all()
    assert DEFAULT_SIGMA_RANGE[0] <= a.sigma <= DEFAULT_SIGMA_RANGE[1]
    assert a.mmlb(1000, 1) == a.mmlb(1000, 1)


def test_samples_follow_priors():
    p = two_gaussians(1.0, 1.0, [0.8, 0.2])
    _, y = p.sample(20_000, 0)
    assert float(y.float().mean()) == pytest.approx(0.2, abs=0.01)


def test_roundtrip_and_pickle_drop_cache():
    p = GaussianMixtureProblem.random(3, 2, 1)
    size = len(pickle.dumps(p))
    p.bayes_risk()  # builds the quadrature grid, a cache that the pickle leaves out
    q = pickle.loads(pickle.dumps(p))
    assert len(pickle.dumps(p)) == size and q.bayes_risk() == p.bayes_risk()
    r = GaussianMixtureProblem.from_dict(p.to_dict())
    assert torch.equal(r.means, p.means) and r.sigma == p.sigma


def test_log_density_is_stable_far_away():
    p = two_gaussians(2.0, 0.3)
    ld = p.log_density(torch.tensor([[1e3, 1e3], [0.0, 0.0]]))
    assert torch.isfinite(ld).all() and ld.dtype == torch.float64
    # single component: log phi at the mean = -log(2 pi sigma^2)
    at_mean = p.log_density(p.means[0])
    assert float(at_mean[0, 0]) == pytest.approx(-math.log(2 * math.pi * 0.09))


def test_log_density_is_the_formula_bit_for_bit():
    # the study's numbers (grids, Bayes labels, MMLB) rest on these exact values: the squared distance is
    # one rounding of dx^2 + dy^2, then logsumexp over components, as the broadcast formula computes it
    p = GaussianMixtureProblem.random(5, 5, 11)
    x = torch.randn(70_000, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 4
    d2 = (x[:, None, None, :] - p.means[None]).square().sum(-1)
    want = torch.logsumexp(d2 * -(1.0 / (2.0 * p.sigma**2)), dim=2) + (-math.log(5) - math.log(2 * math.pi * p.sigma**2))
    assert torch.equal(p.log_density(x), want)
    assert torch.allclose(p.log_density(x[:3]).exp(), torch.tensor(
        [[np.mean([norm.pdf(xi[0], m[0], p.sigma) * norm.pdf(xi[1], m[1], p.sigma) for m in mk]) for mk in p.means.numpy()]
         for xi in x[:3].numpy()], dtype=torch.float64), rtol=1e-12, atol=1e-300)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(means=np.zeros((2, 1, 2)), sigma=0.0), "sigma must be a positive finite number, got 0.0"),
        (dict(means=np.zeros((2, 1, 2)), sigma=float("nan")), "sigma must be a positive finite number"),
        (dict(means=np.zeros((2, 1, 2)), sigma=-1), "sigma must be a positive"),
        (dict(means=np.zeros((2, 2)), sigma=1.0), r"means must have shape \(K, N, 2\), got shape \(2, 2\)"),
        (dict(means=np.zeros((2, 1, 3)), sigma=1.0), r"means must have shape \(K, N, 2\)"),
        (dict(means=np.zeros((1, 3, 2)), sigma=1.0), "K >= 2 classes, got K = 1"),
        (dict(means=np.full((2, 1, 2), np.inf), sigma=1.0), "means must be finite"),
        (dict(means=np.zeros((2, 1, 2)), sigma=1.0, priors=[1.0]), "priors must have length K = 2, got length 1"),
        (dict(means=np.zeros((2, 1, 2)), sigma=1.0, priors=[1.5, -0.5]), "non-negative"),
        (dict(means=np.zeros((2, 1, 2)), sigma=1.0, priors=[0.5, 0.6]), "priors must sum to 1"),
    ],
)
def test_bad_problem_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixtureProblem(**kwargs)


def test_bad_call_arguments():
    p = GaussianMixtureProblem.random(3, 2, 0)
    with pytest.raises(ValueError, match=r"n must be an integer in \[1, \d+\]; got 0"):
        p.sample(0, 0)
    with pytest.raises(ValueError, match=r"num_classes must be an integer in \[2, \d+\]; got 1"):
        GaussianMixtureProblem.random(1, 2, 0)
    with pytest.raises(ValueError, match="sigma_range must be two finite numbers LOW HIGH with 0 < low <= high"):
        GaussianMixtureProblem.random(2, 2, 0, sigma_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="mean_range must be two finite numbers LOW HIGH with low <= high"):
        GaussianMixtureProblem.random(2, 2, 0, mean_range=(1.0, -1.0))
    with pytest.raises(TypeError, match="seed must be a torch.Generator or an int seed"):
        GaussianMixtureProblem.random(2, 2, 0.5)
    with pytest.raises(ValueError, match=r"x must have shape \[n, 2\]"):
        p.log_density(torch.zeros(3, 3))
    with pytest.raises(ValueError, match=r"predict\(x\) must be labels in \[0, 2\], got values in \[3, 3\]"):
        p.risk(lambda x: torch.full((x.shape[0],), 3))
    with pytest.raises(ValueError, match=r"pred must be integer labels of shape"):
        p.risk_from_predictions(torch.zeros(5, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"num_samples must be an integer in \[6, "):
        p.mmlb(5, 0)


# ---------------------------------------------------------------- spiral
def test_spiral():
    x, y = spiral(1001, 0)
    assert x.shape == (1001, 2) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert set(y.tolist()) == {0, 1} and abs(int((y == 0).sum()) - int((y == 1).sum())) <= 1
    x2, y2 = spiral(1001, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, y3 = spiral(30, 1, arms=3, noise=0.0, turns=1.0)
    r = x3.norm(dim=1)
    assert set(y3.tolist()) == {0, 1, 2} and (r >= 0.1 - 1e-6).all() and (r <= 1 + 1e-6).all()
    with pytest.raises(ValueError, match=r"arms must be an integer in \[2, \d+\]; got 1"):
        spiral(10, 0, arms=1)
    with pytest.raises(ValueError, match="noise must be a finite number >= 0; got -0.1"):
        spiral(10, 0, noise=-0.1)
    with pytest.raises(ValueError, match="turns must be a finite number > 0"):
        spiral(10, 0, turns=0)
    with pytest.raises(ValueError, match=r"n must be an integer in \[2, \d+\]; got 1"):
        spiral(1, 0)


# ---------------------------------------------------------------- plot
def test_plot_toy_problem_writes_png(tmp_path):
    from manifold_mixup.paper.plots import plot_toy_problem

    out = plot_toy_problem(GaussianMixtureProblem.random(3, 2, 0), 100, 0, tmp_path / "sub" / "f.png", resolution=64)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_coarsest_grid_allowed_still_gives_the_bayes_risk_to_a_fraction_of_a_point():
    """At GRID_MIN cells the Bayes risk of random problems is within 0.5 pp of a 256-cell grid's (it
    was negative at 8 cells); coarser grids are refused."""
    from manifold_mixup.paper.constants import GRID_MIN

    for k in (2, 3, 5):
        for seed in range(5):
            coarse = GaussianMixtureProblem.random(k, 5, 100 * k + seed, grid_resolution=GRID_MIN).bayes_risk()
            fine = GaussianMixtureProblem.random(k, 5, 100 * k + seed, grid_resolution=256).bayes_risk()
            assert 0 <= coarse and abs(coarse - fine) < 0.005, (k, seed, coarse, fine)
    with pytest.raises(ValueError, match=rf"grid_resolution must be an integer in \[{GRID_MIN}, "):
        GaussianMixtureProblem.random(2, 5, 0, grid_resolution=GRID_MIN - 1)
