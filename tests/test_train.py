import torch
from conftest import assert_hook_free

import manifold_mixup as mm
from manifold_mixup.paper.toy import spiral
from manifold_mixup.train import accuracy, train_classifier


def test_reference_trainer_learns_and_is_reproducible():
    x, y = spiral(200, 0, noise=0.0, turns=0.5)
    runs = []
    for _ in range(2):
        model = mm.models.mlp(2, (32, 32), generator=torch.Generator().manual_seed(0))
        before = accuracy(model, x, y)
        res = train_classifier(model, x, y, layers=["relu1"], alpha=0.5, epochs=30, batch_size=20, lr=3e-3,
                               generator=torch.Generator().manual_seed(1), x_test=x, y_test=y)
        runs.append([p.detach().clone() for p in model.parameters()])
    assert res.epochs[-1]["loss"] < res.epochs[0]["loss"]
    assert res.final_test_acc > max(before, 0.8)
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    assert len(res.policy) == 30 and 0 < res.policy[0]["mean_lambda"] < 1
    assert_hook_free(model)  # the trainer left no hook on the model


def test_confmix_cached_and_ramps_in_the_loop():
    x, y = spiral(120, 1)
    for policy in (mm.ConfMix(warmup_epochs=2, confidence="cached"), mm.HalfConfMix(warmup_epochs=2), mm.RampUp(5)):
        model = mm.models.mlp(2, (16, 16), generator=torch.Generator().manual_seed(0))
        res = train_classifier(model, x, y, layers="relu2", alpha=policy, epochs=4, batch_size=30,
                               generator=torch.Generator().manual_seed(0))
        hist = res.policy
        assert [h["epoch"] for h in hist] == [0, 1, 2, 3]
        if isinstance(policy, mm.ConfMix):
            assert hist[0]["mean_alpha"] == 0 and hist[1]["mean_lambda"] == 1
            assert hist[2]["mean_alpha"] > 0
        else:  # ramp 0 -> 1 grows
            assert hist[0]["mean_alpha"] < hist[3]["mean_alpha"]


def test_mixing_and_erm_runs_share_the_data_order():
    # alpha = 0 mixes nothing, so with the same data order every epoch the weights must agree exactly
    x, y = spiral(120, 2)
    weights = []
    for layers in (None, "relu1"):
        model = mm.models.mlp(2, (16, 16), generator=torch.Generator().manual_seed(0))
        train_classifier(model, x, y, layers=layers, alpha=0.0, epochs=3, batch_size=20,
                         generator=torch.Generator().manual_seed(5))
        weights.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))
