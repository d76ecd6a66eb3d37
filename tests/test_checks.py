"""The one vocabulary of setting checks (``manifold_mixup.checks``): each check against a table of
values it must take (returning them in their plain type) and values it must refuse (naming the
setting and what is allowed)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from manifold_mixup import checks as c

TAKES = [
    (lambda v: c.check_int("n", v, 1, 10), 3, 3),
    (lambda v: c.check_int("n", v, 1, 10), np.int64(10), 10),
    (lambda v: c.check_int("n", v, 1), c.COUNT_MAX, c.COUNT_MAX),
    (lambda v: c.check_real("lr", v, 0, low_open=True), 1e-3, 1e-3),
    (lambda v: c.check_real("p", v, 0, 1, high_open=True), 0, 0.0),
    (lambda v: c.check_real("p", v, 0, 1), np.float32(1.0), 1.0),
    (lambda v: c.check_real("lr", v, 0, low_open=True), torch.tensor(0.5), 0.5),  # torch takes a tensor lr
    (lambda v: c.check_range("r", v), (1, 2), (1.0, 2.0)),
    (lambda v: c.check_range("r", v, allow_equal=True), [2, 2], (2.0, 2.0)),
    (lambda v: c.check_choice("optimizer", v, c.OPTIMIZERS), "sgd", "sgd"),
    (lambda v: c.check_sizes("hidden", v), [4, 8], (4, 8)),
    (lambda v: c.check_methods(v, ("erm", "a", "b"), "erm"), ["erm", "b"], ("erm", "b")),
    (lambda v: c.check_seed("seed", v), c.SEED_MAX, c.SEED_MAX),
]

REFUSES = [  # (check, value, the message's start)
    (lambda v: c.check_int("epochs", v, 1), 0, r"epochs must be an integer in \[1, 2147483647\]; got 0"),
    (lambda v: c.check_int("epochs", v, 1), True, r"epochs must be an integer .*; got True"),
    (lambda v: c.check_int("epochs", v, 1), 2.0, r"epochs must be an integer .*; got 2.0"),
    (lambda v: c.check_int("epochs", v, 1), 10**400, r"epochs must be an integer .*\(401 characters\)$"),
    (lambda v: c.check_real("lr", v, 0, low_open=True), 0, r"lr must be a finite number > 0; got 0"),
    (lambda v: c.check_real("lr", v, 0), math.nan, r"lr must be a finite number >= 0; got nan"),
    (lambda v: c.check_real("lr", v, 0), 10**400, r"lr must be a finite number >= 0; got 1000"),
    (lambda v: c.check_real("p", v, 0, 1, high_open=True), 1.0, r"p must be a finite number >= 0 and < 1; got 1.0"),
    (lambda v: c.check_real("p", v, 0, 1), "0.5", r"p must be a finite number >= 0 and <= 1; got '0.5'"),
    (lambda v: c.check_range("sigma_range", v, positive=True), (0, 1), r"sigma_range must be two finite numbers LOW "
     r"HIGH with 0 < low < high; got \(0, 1\)"),
    (lambda v: c.check_range("r", v), (2, 1), r"r must be two finite numbers LOW HIGH with low < high"),
    (lambda v: c.check_range("r", v), (1, 2, 3), r"r must be two finite numbers"),
    (lambda v: c.check_choice("optimizer", v, c.OPTIMIZERS), "rmsprop", r"optimizer must be one of \['adam', 'sgd'\]; got 'rmsprop'"),
    (lambda v: c.check_choice("optimizer", v, c.OPTIMIZERS), ["adam"], r"optimizer must be one of"),
    (lambda v: c.check_choice("optimizer", v, c.OPTIMIZERS), np.array([1, 2]), r"optimizer must be one of"),
    (lambda v: c.check_real("lr", v, 0, low_open=True), torch.tensor([1e-3, 1e-3]), r"lr must be a finite number"),
    (lambda v: c.check_unique("ks", v), [2, 3, 2], r"ks lists \[2\] more than once"),
    (lambda v: c.check_sizes("hidden", v), (), r"hidden must be one or more integers in \[1, "),
    (lambda v: c.check_sizes("hidden", v), (4, 0), r"hidden must be one or more integers"),
    (lambda v: c.check_sizes("hidden", v), "64", r"hidden must be one or more integers"),
    (lambda v: c.check_methods(v, ("erm", "a"), "erm"), ["erm", "z"], r"unknown methods \['z'\]; valid methods: \['erm', 'a'\]"),
    (lambda v: c.check_methods(v, ("erm", "a"), "erm"), ["a"], r"methods must include 'erm', the baseline"),
    (lambda v: c.check_methods(v, ("erm", "a"), "erm"), ["erm", "a", "a"], r"methods lists \['a'\] more than once"),
    (lambda v: c.check_seed("seed", v), -1, r"seed must be an integer in \[0, 18446744073709551615\]; got -1"),
    (lambda v: c.check_seed("seed", v, c.STUDY_SEED_MAX), 2**32, r"seed must be an integer in \[0, 4294967295\]"),
]


@pytest.mark.parametrize("check,value,want", TAKES)
def test_a_valid_value_is_returned_in_its_plain_type(check, value, want):
    got = check(value)
    assert got == want and type(got) is type(want)


@pytest.mark.parametrize("check,value,message", REFUSES, ids=[m[:40] for _, _, m in REFUSES])
def test_a_bad_value_is_refused_in_one_line_naming_the_setting(check, value, message):
    with pytest.raises(ValueError, match=message) as e:
        check(value)
    assert "\n" not in str(e.value) and len(str(e.value)) < 200


def test_as_generator_is_the_one_way_from_a_seed_to_a_torch_generator():
    g = torch.Generator().manual_seed(5)
    assert c.as_generator(g) is g
    assert torch.equal(torch.rand(4, generator=c.as_generator(5)), torch.rand(4, generator=torch.Generator().manual_seed(5)))
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, "):
        c.as_generator(-1)
    with pytest.raises(TypeError, match="seed must be a torch.Generator or an int seed"):
        c.as_generator(0.5)


def test_one_alpha_ceiling_where_both_samplers_still_draw_beta_correctly():
    """At ALPHA_MAX, Beta(a, a) has standard deviation 1/sqrt(4 (2a + 1)) ~ 3.5e-7: numpy's and
    torch's samplers both still give that spread around 1/2 (numpy breaks down near 1e308)."""
    a = c.ALPHA_MAX
    sd = (1 / (4 * (2 * a + 1))) ** 0.5
    x = np.random.default_rng(0).beta(a, a, size=20_000)
    t = torch.distributions.Beta(torch.tensor(a, dtype=torch.float64), torch.tensor(a, dtype=torch.float64)).sample((20_000,))
    for v in (x, t.numpy()):
        assert abs(v.mean() - 0.5) < 5 * sd / 100 and 0.95 < v.std() / sd < 1.05


def test_the_vocabulary_imports_no_torch():
    out = subprocess.run([sys.executable, "-c", "import sys, manifold_mixup.checks, manifold_mixup.paper.constants; "
                          "print('torch' in sys.modules)"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_the_limits_reach_every_place_that_checks_them():
    """The library, the kit and the CLI refuse the same alpha above the one ceiling."""
    import manifold_mixup as mm
    from manifold_mixup.paper.studies.confmix import ConfMixStudyConfig
    from manifold_mixup.paper.studies.depth import DepthStudyConfig

    too_big = c.ALPHA_MAX * 2
    for make in (lambda: mm.Constant(too_big), lambda: DepthStudyConfig(alpha=too_big),
                 lambda: ConfMixStudyConfig(alpha=too_big)):
        with pytest.raises(ValueError, match="alpha must be"):
            make()
    mm.Constant(c.ALPHA_MAX), DepthStudyConfig(alpha=c.ALPHA_MAX), ConfMixStudyConfig(alpha=c.ALPHA_MAX)


def test_each_schedule_name_builds_its_policy_with_its_closed_form():
    from manifold_mixup.policies import schedule

    assert [schedule(n, alpha=0.3, half_life=2.0).alpha_at(2.0) for n in c.SCHEDULES] == [0.3, 0.5, 0.5]
    assert schedule("ramp-up", half_life=2.0).alpha_at(4.0) == 1 - 2 ** -2
    assert schedule("ramp-down", half_life=2.0).alpha_at(6.0) == 2 ** -3
    with pytest.raises(ValueError, match=r"schedule must be one of \['constant', 'ramp-up', 'ramp-down'\]; got 'cos'"):
        schedule("cos")
    with pytest.raises(ValueError, match="half_life must be a finite number > 0; got 0"):
        schedule("ramp-up", half_life=0)


def test_a_config_given_numpy_numbers_and_lists_stores_plain_python_values():
    """What a frozen config stores hashes, and its settings serialise to the same JSON as Python's."""
    import json
    from dataclasses import asdict

    from manifold_mixup.paper.studies.depth import DepthStudyConfig

    cfg = DepthStudyConfig(hidden=[np.int64(8), np.int64(8)], ks=np.array([2, 3]).tolist(), lr=np.float64(1e-3),
                           seed=np.int32(4), methods=["baseline", "k1"])
    assert cfg == DepthStudyConfig(hidden=(8, 8), ks=(2, 3), lr=1e-3, seed=4, methods=("baseline", "k1"))
    hash(cfg)
    assert json.dumps(cfg.settings()) == json.dumps(DepthStudyConfig(hidden=(8, 8), ks=(2, 3), lr=1e-3, seed=4,
                                                                     methods=("baseline", "k1")).settings())
    assert all(type(v) in (int, float, str, tuple, type(None)) for v in asdict(cfg).values())
