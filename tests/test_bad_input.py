"""Bad input, as tables: each row is a call and the error it must raise, a one-line message that
names the argument, the value and what is allowed. ``CALLS`` holds the mixer, the mixing
primitives, the policies and the reference trainer; ``REFUSED_BEFORE_THE_MODEL_RUNS`` holds mixer
calls that must fail before any forward pass.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import FixedAlpha, KwModel, LastStep, Residual, TupleOut, data, tiny_bert

import manifold_mixup as mm
from manifold_mixup.mixing import check_alpha
from manifold_mixup.paper.devices import resolve_device
from manifold_mixup.paper.toy import spiral
from manifold_mixup.train import train_classifier


def mixer(model=None, layers=("block",), **settings):
    """A mixer over ``model`` (a fresh ``Residual`` by default) at ``layers``, seeded."""
    return mm.ManifoldMixup(Residual() if model is None else model, list(layers), **{"generator": 0, **settings})


def two_class_batch():
    x, y = data()
    return x, y % 2


class BadNeeds(mm.AlphaPolicy):
    needs = ["index"]  # a list, not a set

    def alpha_at(self, epoch):
        return 1.0


def ids():
    return torch.randint(0, 10, (6, 5), generator=torch.Generator().manual_seed(0))


def pick(out):
    return out["logits"]


def meta_model():
    with torch.device("meta"):
        return Residual()


def hf_token_ids_at_input():
    model = tiny_bert()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(1, 64, (4, 8), generator=g), torch.randint(0, 3, (4,), generator=g)
    mixer(model, ["input"])(x, y, attention_mask=torch.ones(4, 8, dtype=torch.long))


def plan3():
    return mm.draw_plan(3, 1.0, generator=torch.Generator().manual_seed(0))


SPIRAL = spiral(20, 0)

CALLS = [
    # -- the mixer's settings
    pytest.param(lambda: mixer(layers=["nope"]), ValueError, "unknown layer 'nope'.*valid names.*'block'",
                 id="unknown-layer"),
    pytest.param(lambda: mixer(layers=[["block"]]), TypeError, "layers must be a name or a list of names",
                 id="layers-nested-list"),
    pytest.param(lambda: mixer(alpha=-1.0), ValueError, "alpha", id="alpha-negative"),
    pytest.param(lambda: mixer(alpha=float("nan")), ValueError, "alpha", id="alpha-nan"),
    pytest.param(lambda: mixer(alpha=float("inf")), ValueError, "<= 1e\\+12", id="alpha-inf"),
    pytest.param(lambda: mixer(alpha=1e308), ValueError, "<= 1e\\+12", id="alpha-huge"),
    pytest.param(lambda: mixer(layers=["block", "stem"], layer_weights=[1.0]), ValueError, "layer_weights",
                 id="layer-weights-length"),
    pytest.param(lambda: mixer(generator="abc"), TypeError,
                 r"generator must be a torch.Generator, an int seed in \[0, 18446744073709551615\] or None; got str",
                 id="generator-str"),
    pytest.param(lambda: mixer(label_smoothing="a"), ValueError, "label_smoothing must be a .*number.*; got 'a'",
                 id="label-smoothing-str"),
    pytest.param(lambda: mixer(task="ranking"), ValueError, "task must be one of", id="task-unknown"),
    pytest.param(lambda: mixer(validate="sometimes"), ValueError,
                 "validate must be one of .*'first', 'always'.*; got 'sometimes'", id="validate-unknown"),
    pytest.param(lambda: mixer(meta_model()), ValueError, "meta device", id="meta-device"),
    pytest.param(lambda: mixer(layers=["input"], select={"input": 0}), ValueError, "select cannot name 'input'",
                 id="select-input"),
    pytest.param(lambda: mixer(alpha=mm.ConfMix(warmup_epochs=0), per_sample=False), ValueError, "per_sample=True",
                 id="confmix-per-batch"),
    pytest.param(lambda: mixer(alpha=mm.HalfConfMix(), per_sample=False), ValueError, "per_sample=True",
                 id="half-confmix-per-batch"),
    pytest.param(lambda: mixer(alpha=mm.ConfMix(confidence="cached")), ValueError, "needs num_classes=K",
                 id="cached-confmix-without-k"),
    pytest.param(lambda: mixer(alpha=mm.ConfMix(), task="regression"), ValueError, "task='classification'",
                 id="confmix-regression"),
    pytest.param(lambda: mixer(alpha=mm.ConfMix(), task="multilabel"), ValueError, "task='classification'",
                 id="confmix-multilabel"),
    pytest.param(lambda: mixer(alpha=BadNeeds()), ValueError, "BadNeeds.needs must be a set", id="needs-list"),
    pytest.param(lambda: mixer().load_state_dict({"stream": mixer().state_dict()["stream"]}), ValueError,
                 "'policy' and 'stream'", id="mixer-state-incomplete"),
    # -- mixer calls that fail in or after the forward pass
    pytest.param(lambda: mixer(TupleOut(), ["enc"])(*two_class_batch()), TypeError, "select=",
                 id="tuple-output-no-select"),
    pytest.param(lambda: mixer(LastStep(), ["enc"], select={"enc": 5})(torch.randn(4, 3, 4), torch.tensor([0, 1, 0, 1])),
                 ValueError, r"select\['enc'\] = 5 is out of range: the layer's output has 2 parts",
                 id="select-out-of-range"),
    pytest.param(lambda: mixer(LastStep(), ["enc"], select={"enc": lambda out, mix: out})(
        torch.randn(6, 3, 4), torch.tensor([0, 1] * 3)), ValueError, "without calling mix", id="select-never-mixes"),
    pytest.param(lambda: mixer(KwModel(), ["body"])(ids(), torch.arange(6) % 3), TypeError, "logits=",
                 id="dict-output-no-logits-function"),
    pytest.param(lambda: mixer(KwModel(), ["input"], logits=pick)(ids(), torch.arange(6) % 3), ValueError,
                 r"integer tensor.*embedding module.*\['emb'\]", id="token-ids-at-input"),
    pytest.param(lambda: mixer(KwModel(), ["input"], logits=pick)({"input_ids": ids()}, torch.arange(6) % 3),
                 ValueError, "input_key", id="mapping-batch-at-input-without-key"),
    pytest.param(hf_token_ids_at_input, (TypeError, ValueError), "embeddings", id="hf-token-ids-at-input"),
    # -- mixing primitives
    pytest.param(lambda: check_alpha(-0.1), ValueError, "alpha", id="check-alpha-negative"),
    pytest.param(lambda: check_alpha(math.inf), ValueError, "alpha", id="check-alpha-inf"),
    pytest.param(lambda: check_alpha(math.nan), ValueError, "alpha", id="check-alpha-nan"),
    pytest.param(lambda: mm.draw_plan(4, -0.1), ValueError, "alpha", id="draw-plan-alpha-negative"),
    pytest.param(lambda: mm.draw_plan(4, math.inf), ValueError, "alpha", id="draw-plan-alpha-inf"),
    pytest.param(lambda: mm.draw_plan(4, math.nan), ValueError, "alpha", id="draw-plan-alpha-nan"),
    pytest.param(lambda: mm.mix_targets(torch.tensor([0, 1, 3]), plan3(), 3), ValueError, r"\[0, 3\).*got 3",
                 id="mix-targets-label-range"),
    pytest.param(lambda: mm.mix_targets(torch.tensor([0, 1]), plan3(), 3), ValueError, "batch size 2",
                 id="mix-targets-batch"),
    pytest.param(lambda: mm.mix(torch.randn(4, 2), plan3()), ValueError, "batch-first", id="mix-batch"),
    pytest.param(lambda: mm.soft_targets(torch.tensor([0, 1]), 2, label_smoothing=1.0), ValueError,
                 "label_smoothing", id="soft-targets-smoothing"),
    # -- policies
    pytest.param(lambda: mm.RampUp(half_life=-1), ValueError, "half_life", id="ramp-half-life"),
    pytest.param(lambda: mm.RampUp().set_epoch(-1), ValueError, "epoch", id="set-epoch-negative"),
    pytest.param(lambda: mm.ConfMix(warmup_epochs=-1), ValueError, "warmup_epochs", id="confmix-warmup"),
    pytest.param(lambda: mm.ConfMix(confidence="psychic"), ValueError, "confidence", id="confmix-confidence"),
    pytest.param(lambda: mm.confmix_alpha(torch.tensor([0.5]), 1), ValueError, r"num_classes must be an integer in \[2, \d+\]; got 1",
                 id="confmix-alpha-k"),
    pytest.param(lambda: mm.confmix_alpha(torch.tensor([1.5]), 3), ValueError, r"\[0, 1\]",
                 id="confmix-alpha-above-one"),
    pytest.param(lambda: mm.confmix_alpha(torch.tensor([math.nan]), 3), ValueError, r"\[0, 1\]; got nan",
                 id="confmix-alpha-nan"),
    pytest.param(lambda: mm.Constant(0.5).load_state_dict(mm.RampUp().state_dict()), ValueError,
                 "state is of a 'RampUp' policy", id="policy-state-of-another-policy"),
    # -- the reference trainer and devices
    pytest.param(lambda: train_classifier(mm.models.mlp(2, (4,)), SPIRAL[0], SPIRAL[1][:19]), ValueError,
                 "y has 19 rows but x has 20", id="train-rows"),
    pytest.param(lambda: train_classifier(mm.models.mlp(2, (4,)), *SPIRAL, optimizer="lbfgs"), ValueError,
                 "optimizer must be .*'adam'.*'sgd'.*; got 'lbfgs'", id="train-optimizer"),
    pytest.param(lambda: resolve_device("cuda"), ValueError, "sees no CUDA device", id="device-cuda-absent",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")),
    pytest.param(lambda: resolve_device("tpu"), ValueError, "device must be", id="device-unknown"),
]


@pytest.mark.parametrize("call, error, message", CALLS)
def test_bad_input_is_refused_with_a_clear_message(call, error, message):
    with pytest.raises(error, match=message):
        call()


def onehot_rows(*rows):
    return torch.tensor(rows, dtype=torch.float32)


# (mixer settings, the call's (args, kwargs) from a batch x [4, 4], y [4] in [0, 3), message)
REFUSED_BEFORE_THE_MODEL_RUNS = [
    pytest.param({}, lambda x, y: ((x, onehot_rows([1, 0, 0], [0, 1, 0], [0, 0, 1], [-2, 3, 0])), {}),
                 "finite and >= 0; got -2", id="soft-targets-negative"),
    pytest.param({}, lambda x, y: ((x, onehot_rows(*[[1, 0, 0]] * 3, [math.nan, 0, 1])), {}),
                 "finite and >= 0; got nan", id="soft-targets-nan"),
    pytest.param({}, lambda x, y: ((x, onehot_rows(*[[0.5, 0, 0]] * 4)), {}), "rows must sum to 1",
                 id="soft-targets-row-sum"),
    pytest.param({}, lambda x, y: ((x[:0], y[:0]), {}), "got an empty batch", id="empty-batch"),
    pytest.param({}, lambda x, y: ((x[:1], y[:1]), {}), "at least 2 rows", id="one-row"),
    pytest.param({}, lambda x, y: ((x, y[:3]), {}), r"targets have shape \(3,\) but the input has a batch of 4",
                 id="targets-batch"),
    pytest.param({"num_classes": 3}, lambda x, y: ((x, torch.tensor([0, 1, 2, 7])), {}),
                 r"labels must lie in \[0, 3\); got 7", id="label-range"),
    pytest.param({}, lambda x, y: ((x, y), {"plan": mm.MixPlan(torch.tensor([0, 0, 1, 2]), torch.full((4,), 0.5)),
                                            "layer": "block"}), "permutation of 0..3", id="plan-not-a-permutation"),
    pytest.param({}, lambda x, y: ((x, y), {"plan": mm.MixPlan(torch.arange(4), torch.full((4,), 5.0)),
                                            "layer": "block"}), r"finite and in \[0, 1\]; got 5", id="plan-lambda-5"),
    pytest.param({}, lambda x, y: ((x, y), {"plan": mm.MixPlan(torch.arange(4), torch.full((4,), math.nan)),
                                            "layer": "block"}), r"finite and in \[0, 1\]; got nan",
                 id="plan-lambda-nan"),
    pytest.param({"task": "multilabel"}, lambda x, y: ((x, 2 * (torch.arange(12).view(4, 3) % 2).float()), {}),
                 r"multilabel targets must lie in \[0, 1\]; got 2", id="multilabel-range"),
    pytest.param({"task": "regression"}, lambda x, y: ((x, torch.ones(4, dtype=torch.long)), {}),
                 "regression targets must be a float tensor", id="regression-integer-targets"),
    pytest.param({"alpha": FixedAlpha(-1.0)}, lambda x, y: ((x, y), {}), r"FixedAlpha.alpha must be finite, >= 0.*got -1",
                 id="policy-returns-negative"),
    pytest.param({"alpha": mm.ConfMix(0, confidence="cached"), "num_classes": 3}, lambda x, y: ((x, y), {}),
                 "ConfMix needs the batch's sample indices", id="cached-confmix-without-index"),
]


@pytest.mark.parametrize("settings, make_call, message", REFUSED_BEFORE_THE_MODEL_RUNS)
def test_a_bad_mixer_call_is_refused_before_the_model_runs(settings, make_call, message):
    model = Residual()
    forwards = []
    model.register_forward_pre_hook(lambda m, a: forwards.append(1))
    x, y = data(b=4)
    args, kwargs = make_call(x, y)
    with pytest.raises(ValueError, match=message):
        mixer(model, **settings)(*args, **kwargs)
    assert not forwards
