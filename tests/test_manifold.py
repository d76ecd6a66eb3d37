import warnings

import pytest
import torch
from torch import nn

import manifold_mixup as mm
from conftest import Residual, data as _data


def test_mixed_forward_equals_hand_computation_on_residual_network():
    torch.manual_seed(0)
    model = Residual()
    x, y = _data()
    mixer = mm.ManifoldMixup(model, ["block"], alpha=1.0, generator=torch.Generator().manual_seed(1))
    logits, targets = mixer(x, y)
    perm, lam, layer = mixer.last_plan
    assert layer == "block"
    # hand computation: rest(lam*h + (1-lam)*h[perm]) where h is block's output
    h0 = torch.relu(model.stem(x))
    hb = model.block(h0)
    lam2 = lam[:, None]
    mixed = lam2 * hb + (1 - lam2) * hb[perm]
    expect = model.head(h0 + mixed)
    assert torch.allclose(logits, expect, atol=1e-6)
    onehot = torch.nn.functional.one_hot(y, 3).float()
    assert torch.allclose(targets, lam2 * onehot + (1 - lam2) * onehot[perm])
    assert not torch.allclose(logits, model(x))  # mixing really happened


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = Residual()
    x, y = _data()
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
    x, y = _data()
    mixer = mm.ManifoldMixup(model, ["stem", "block"], alpha=0.0, generator=torch.Generator().manual_seed(0))
    logits, t = mixer(x, y)
    assert torch.equal(logits, model(x))
    assert torch.equal(t, torch.nn.functional.one_hot(y, 3).float())
    # tiny alpha: lambda concentrates at 0 or 1, so each row is (almost) a clean point
    mixer.policy = mm.Constant(1e-4)
    logits, t = mixer(x, y)
    assert torch.allclose(t.max(1).values, torch.ones(6), atol=1e-3)


def test_model_untouched_outside_calls_in_eval_and_after_remove():
    torch.manual_seed(0)
    model = Residual()
    x, y = _data()
    before = model(x).detach()
    with mm.ManifoldMixup(model, ["block"], alpha=2.0, generator=torch.Generator().manual_seed(0)) as mixer:
        assert torch.equal(model(x), before)
        mixer(x, y)
        assert torch.equal(model(x), before)  # no hook is left on the layer after a mixer call
        model.eval()
        logits, t = mixer(x, y)
        assert torch.equal(logits, before)
        model.train()
    assert torch.equal(model(x), before)
    with pytest.raises(RuntimeError, match="removed"):
        mixer(x, y)


def test_layer_drawn_by_weights_and_reproducible():
    model = Residual()
    x, y = _data()
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


def test_batchnorm_dropout_and_small_resnet():
    torch.manual_seed(0)
    model = mm.models.small_resnet((3, 8, 8), 10)
    x = torch.randn(8, 3, 8, 8)
    y = torch.randint(0, 10, (8,))
    mixer = mm.ManifoldMixup(model, ["block1", "block2", "pool"], alpha=1.0, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        logits, t = mixer(x, y)
        loss = mm.soft_cross_entropy(logits, t)
        opt.zero_grad(); loss.backward(); opt.step()
        assert torch.isfinite(loss)
    model.eval()
    assert torch.equal(mixer(x, y)[0], model(x))


def test_autocast_keeps_activation_dtype():
    model = Residual()
    x, y = _data()
    seen = {}
    model.head.register_forward_pre_hook(lambda m, a: seen.update(dtype=a[0].dtype))
    mixer = mm.ManifoldMixup(model, ["block"], alpha=1.0, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = mixer(x, y)
    assert seen["dtype"] == torch.bfloat16


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = Encoder()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h, aux = self.enc(x)
        return self.head(h) + 0 * aux.sum()


class Encoder(nn.Module):
    def forward(self, x):
        return x * 2, torch.ones(1)


def test_tuple_output_needs_a_selector():
    model = TupleOut()
    x, y = _data()
    with pytest.raises(TypeError, match="select="):
        mm.ManifoldMixup(model, ["enc"], generator=torch.Generator().manual_seed(0))(x, y % 2)
    mixer = mm.ManifoldMixup(model, ["enc"], select={"enc": 0}, generator=torch.Generator().manual_seed(0))
    logits, _ = mixer(x, y % 2)
    perm, lam, _ = mixer.last_plan
    hx = 2 * x
    expect = model.head(lam[:, None] * hx + (1 - lam[:, None]) * hx[perm])
    assert torch.allclose(logits, expect, atol=1e-6)


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
    x, y = _data()
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
    expect = model.head(model.block(lam[:, None] * h + (1 - lam[:, None]) * h[perm]))
    assert torch.allclose(logits, expect, atol=1e-6)


def test_bad_input_is_refused_with_clear_messages():
    model = Residual()
    x, y = _data()
    with pytest.raises(ValueError, match="unknown layer 'nope'.*valid names.*'block'"):
        mm.ManifoldMixup(model, ["nope"])
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="alpha"):
            mm.ManifoldMixup(model, ["block"], alpha=bad)
    mixer = mm.ManifoldMixup(model, ["block"], num_classes=3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\); got 7"):
        mixer(x, torch.tensor([0, 1, 2, 7, 0, 1]))
    with pytest.raises(ValueError, match="at least 2 rows"):
        mixer(x[:1], y[:1])
    with pytest.raises(ValueError, match=r"targets have shape \(5,\) but the input has a batch of 6"):
        mixer(x, y[:5])
    with pytest.raises(ValueError, match="per_sample=True"):
        mm.ManifoldMixup(model, ["block"], alpha=mm.ConfMix(warmup_epochs=0), per_sample=False, generator=0)
    with pytest.raises(ValueError, match="layer_weights"):
        mm.ManifoldMixup(model, ["block", "stem"], layer_weights=[1.0])


def test_fresh_confmix_restores_each_submodule_mode():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    model[1].eval()  # a deliberately frozen BatchNorm
    mixer = mm.ManifoldMixup(model, ["2"], alpha=mm.ConfMix(warmup_epochs=0), generator=torch.Generator().manual_seed(0))
    x, y = _data()
    mixer(x, y)
    assert model.training and model[0].training and not model[1].training


def test_integer_labels_of_any_width():
    model = Residual()
    x, y = _data()
    mixer = mm.ManifoldMixup(model, ["block"], generator=0)
    for dtype in (torch.int32, torch.uint8):
        logits, t = mixer(x, y.to(dtype))
        assert torch.allclose(t.sum(1), torch.ones(6))
    plan = mixer.last_plan
    assert torch.isfinite(mm.mixed_cross_entropy(logits, y.int(), mm.MixPlan(plan.perm, plan.lam)))


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
    x, y = _data()
    model = UsesDict()
    mixer = mm.ManifoldMixup(model, ["enc"], select={"enc": "h"}, generator=0)
    logits, _ = mixer(x, y % 2)
    perm, lam, _ = mixer.last_plan
    h = 3 * x
    assert model.seen == "Out"
    assert torch.allclose(logits, model.head(lam[:, None] * h + (1 - lam[:, None]) * h[perm]), atol=1e-6)
    model2 = UsesMax()
    logits, _ = mm.ManifoldMixup(model2, ["pick"], select={"pick": 0}, generator=0)(x, y % 2)
    assert logits.shape == (6, 2)


class HalfOnly(mm.AlphaPolicy):
    def __init__(self, values):
        super().__init__()
        self.values = values

    def alpha(self, epoch, batch_size, **given):
        return self.values


def test_custom_policy_values_are_checked():
    x, y = _data()
    model = Residual()
    per_row = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    mixer = mm.ManifoldMixup(model, ["block"], alpha=HalfOnly(per_row), generator=0)
    mixer(x, y)
    lam = mixer.last_plan.lam
    assert torch.equal(lam[::2], torch.ones(3)) and (lam[1::2] < 1).all()
    with pytest.raises(ValueError, match=r"HalfOnly.alpha must be finite, >= 0.*got -1"):
        mm.ManifoldMixup(model, ["block"], alpha=HalfOnly(-1.0), generator=0)(x, y)
    with pytest.raises(ValueError, match="select cannot name 'input'"):
        mm.ManifoldMixup(model, ["input"], select={"input": 0})
