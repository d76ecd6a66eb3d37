"""The CUDA path: each test runs the library on the accelerator and compares it with the CPU.

These tests run only where PyTorch sees a CUDA device (they are skipped elsewhere, CI included).
``MM_TEST_DEVICE=cpu`` runs them on the CPU instead, which checks the tests themselves on a machine
without a GPU (there the comparisons are CPU against CPU and prove nothing about CUDA).
"""

from __future__ import annotations

import os

import pytest
import torch

import manifold_mixup as mm
from conftest import Residual as _Residual, assert_hook_free, data
from hand_mixing import hand_mix
from manifold_mixup.paper.ensemble import EnsembleConfig, MemberSpec, predict_ensemble, to_sequential, train_ensemble
from manifold_mixup.paper.toy import spiral

_forced = os.environ.get("MM_TEST_DEVICE")
if _forced:
    DEVICES = [_forced]
else:
    DEVICES = [pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _exact_float32():
    """No TF32 in matrix products and convolutions, so that CUDA and CPU agree to float32 rounding."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def Residual():
    return _Residual(width=16)


def _data(b=32, seed=0, d=4, k=3):
    return data(b, seed, d, k)


def _close(a, b, tol=1e-5):
    return torch.allclose(a.detach().cpu().double(), b.detach().cpu().double(), atol=tol, rtol=tol)


@pytest.mark.parametrize("layer", ["input", "stem", "block"])
@pytest.mark.parametrize("per_sample", [True, False])
def test_mixed_step_on_device_equals_the_cpu_step(device, layer, per_sample):
    torch.manual_seed(0)
    cpu_model = Residual()
    dev_model = Residual()
    dev_model.load_state_dict(cpu_model.state_dict())
    dev_model.to(device)
    x, y = _data()
    out = []
    for model, dev in ((cpu_model, torch.device("cpu")), (dev_model, device)):
        mixer = mm.ManifoldMixup(model, layer, alpha=0.7, per_sample=per_sample, generator=3, num_classes=3)
        logits, targets = mixer(x.to(dev), y.to(dev))
        assert logits.device.type == dev.type and targets.device.type == dev.type
        mm.soft_cross_entropy(logits, targets).backward()
        out.append((logits, targets, mixer.last_plan, [p.grad for p in model.parameters()]))
        assert_hook_free(model)  # no hook is left after the call
    (lc, tc, pc, gc), (ld, td, pd, gd) = out
    assert pc.layer == pd.layer == layer
    assert torch.equal(pc.perm.cpu(), pd.perm.cpu()) and torch.equal(pc.lam.cpu(), pd.lam.cpu())
    assert _close(lc, ld) and _close(tc, td)
    assert all(_close(a, b) for a, b in zip(gc, gd))
    assert not _close(tc, torch.nn.functional.one_hot(y, 3).float())  # something was mixed


def test_hand_computation_on_device(device):
    torch.manual_seed(1)
    model = Residual().to(device)
    x, y = (t.to(device) for t in _data())
    mixer = mm.ManifoldMixup(model, "block", alpha=1.0, generator=0)
    logits, targets = mixer(x, y)
    perm, lam, _ = mixer.last_plan
    perm, lam = perm.to(device), lam.to(device)
    h0 = torch.relu(model.stem(x))
    expect = model.head(h0 + hand_mix(model.block(h0), perm, lam))
    assert _close(logits, expect, 1e-6)
    assert _close(targets, hand_mix(torch.nn.functional.one_hot(y, 3).float(), perm, lam), 1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_on_device_keeps_the_activation_dtype(device, dtype):
    if device.type == "cpu" and dtype == torch.float16:
        pytest.skip("float16 autocast is a CUDA feature")
    model = Residual().to(device)
    x, y = (t.to(device) for t in _data())
    seen = {}
    model.head.register_forward_pre_hook(lambda m, a: seen.update(dtype=a[0].dtype))
    mixer = mm.ManifoldMixup(model, ["block"], alpha=1.0, generator=0)
    with torch.autocast(device.type, dtype=dtype):
        logits, targets = mixer(x, y)
        loss = mm.soft_cross_entropy(logits, targets)
    assert seen["dtype"] == dtype and logits.dtype == dtype
    assert targets.dtype == torch.float32 and _close(targets.sum(1), torch.ones(len(x)), 1e-6)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_bad_labels_on_device_are_a_clear_error(device):
    model = Residual().to(device)
    x, y = (t.to(device) for t in _data())
    mixer = mm.ManifoldMixup(model, "block", alpha=1.0, generator=0, num_classes=3)
    y_bad = y.clone()
    y_bad[5] = 3
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\); got 3"):
        mixer(x, y_bad)
    y_bad[5] = -1
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\); got -1"):
        mixer(x, y_bad)
    logits, _ = mixer(x, y)  # the mixer still works afterwards
    assert torch.isfinite(logits).all()


def test_batchnorm_and_dropout_model_on_device(device):
    torch.manual_seed(0)
    model = mm.models.small_resnet((3, 8, 8), 10).to(device)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 3, 8, 8, generator=g).to(device), torch.randint(0, 10, (16,), generator=g).to(device)
    mixer = mm.ManifoldMixup(model, ["input", "block1", "block2"], alpha=1.0, generator=0, num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(4):
        logits, t = mixer(x, y)
        loss = mm.soft_cross_entropy(logits, t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    model.eval()
    with torch.no_grad():
        assert torch.equal(mixer(x, y)[0], model(x))


def test_fresh_confmix_on_device_equals_the_cpu_and_the_uncut_model(device):
    results = []
    for dev, reuse in ((torch.device("cpu"), True), (device, True), (device, False)):
        torch.manual_seed(0)
        model = mm.models.paper_cnn((1, 8, 8), 10, generator=torch.Generator().manual_seed(0)).to(dev)
        mixer = mm.ManifoldMixup(model, mm.models.PAPER_CNN_MIX_LAYER, alpha=mm.ConfMix(warmup_epochs=0),
                                 num_classes=10, generator=7, reuse_prefix=reuse)
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(24, 1, 8, 8, generator=g).to(dev), torch.randint(0, 10, (24,), generator=g).to(dev)
        logits, targets = mixer(x, y)
        mm.soft_cross_entropy(logits, targets).backward()
        results.append((logits, targets, mixer.last_plan.lam, [p.grad for p in model.parameters()],
                        mixer.policy.history()[0]["mean_alpha"]))
    (l0, t0, lam0, g0, a0), *rest = results
    assert 0 < a0 < 1
    for l1, t1, lam1, g1, a1 in rest:
        # lambda ~ Beta(alpha_i, alpha_i) with alpha_i from the confidences: rounding in the
        # confidences moves lambda a little, so values agree to a tolerance, not bit for bit
        assert a1 == pytest.approx(a0, rel=1e-4)
        assert _close(lam0, lam1, 1e-3) and _close(l0, l1, 1e-3) and _close(t0, t1, 1e-3)
        assert all(_close(a, b, 1e-3) for a, b in zip(g0, g1))


def test_cached_confmix_on_device_reads_and_writes_the_cache(device):
    torch.manual_seed(0)
    model = mm.models.mlp(3, (16, 16)).to(device)
    pol = mm.ConfMix(warmup_epochs=1, confidence="cached")
    mixer = mm.ManifoldMixup(model, "relu1", alpha=pol, generator=0, num_classes=3)
    x, y = (t.to(device) for t in _data(b=40, d=2))
    idx = torch.arange(100, 140, device=device)
    mixer.set_epoch(0.0)
    logits, targets = mixer(x, y, index=idx)  # warm-up: no mixing, the cache is filled
    assert torch.equal(targets, torch.nn.functional.one_hot(y, 3).float())
    expect = torch.softmax(logits.detach().float(), -1).amax(-1)
    assert _close(pol.cached_confidence(idx, 3), expect, 1e-6)
    mixer.set_epoch(1.0)
    mixer(x, y, index=idx)
    alpha = pol.history()[-1]["mean_alpha"]
    assert alpha == pytest.approx(float(mm.confmix_alpha(expect.cpu(), 3).mean()), rel=1e-5)


def test_train_classifier_on_device_equals_the_cpu_run(device):
    x, y = spiral(200, 0)
    runs = []
    for dev in (torch.device("cpu"), device):
        model = mm.models.mlp(2, (32, 32), generator=torch.Generator().manual_seed(0)).to(dev)
        res = train_classifier_run(model, x.to(dev), y.to(dev))
        runs.append((res, [p.detach().cpu() for p in model.parameters()]))
    (rc, pc), (rd, pd) = runs
    for a, b in zip(rc.epochs, rd.epochs):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert all(_close(a, b, 1e-4) for a, b in zip(pc, pd))
    assert [h["mean_lambda"] for h in rc.policy] == pytest.approx([h["mean_lambda"] for h in rd.policy])


def train_classifier_run(model, x, y):
    from manifold_mixup.train import train_classifier

    return train_classifier(model, x, y, layers=["relu1", "relu2"], alpha=0.5, epochs=3, batch_size=25,
                            generator=torch.Generator().manual_seed(4), num_classes=2)


def test_vectorised_ensemble_on_device_equals_the_cpu_run(device):
    ks = [2, 3, 4]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 60, 2, generator=g)
    y = torch.stack([torch.randint(0, k, (60,), generator=g) for k in ks])
    specs = [MemberSpec(1, None, 0.5), MemberSpec(2, 0, 0.5), MemberSpec(3, 2, 0.5)]
    cfg = EnsembleConfig(epochs=3, batch_size=20, hidden=(32, 32, 32))
    cpu = train_ensemble(x, y, ks, specs, cfg, device="cpu")
    dev = train_ensemble(x, y, ks, specs, cfg, device=device)
    for a, b in zip(cpu.weights + cpu.biases, dev.weights + dev.biases):
        assert b.device.type == "cpu" and _close(a, b, 1e-4)
    grid = torch.rand(500, 2, generator=g) * 6 - 3
    pred = predict_ensemble(dev, grid, device=device)
    for i in range(3):
        with torch.no_grad():
            ref = to_sequential(dev, i)(grid).argmax(-1)
        assert pred[i].device.type == "cpu" and (pred[i] == ref).float().mean() > 0.99


def test_replays_on_device_are_exact(device):
    torch.manual_seed(0)
    model = Residual().to(device)
    x, y = (t.to(device) for t in _data(b=24))
    mixer = mm.ManifoldMixup(model, ["stem", "block"], alpha=0.5, generator=1, num_classes=3)
    for _ in range(3):
        logits, targets = mixer(x, y)
    perm, lam, layer = mixer.last_plan
    assert perm.device.type == device.type
    replay = mixer(x, y, plan=mm.MixPlan(perm, lam), layer=layer)
    assert torch.equal(replay[0], logits) and torch.equal(replay[1], targets)


def test_after_the_first_calls_a_mixed_step_makes_no_device_sync(device):
    """``torch.cuda.set_sync_debug_mode("error")`` turns any device-to-host synchronisation into an
    error: after the first ``VALIDATE_CALLS`` calls a mixed step (forward, loss, backward) and a
    step on which layerdrop skipped the layer make none."""
    torch.manual_seed(0)
    model = _Residual().to(device)
    x, y = data(b=8)
    x, y = x.to(device), y.to(device)
    mixer = mm.ManifoldMixup(model, ["stem", "block"], alpha=1.0, generator=0)
    for _ in range(mm.manifold.VALIDATE_CALLS):
        mixer(x, y)
    if device.type != "cuda":
        pytest.skip("sync debug mode exists for CUDA only")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            logits, targets = mixer(x, y)
            mm.soft_cross_entropy(logits, targets).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert mixer.last_plan is not None
