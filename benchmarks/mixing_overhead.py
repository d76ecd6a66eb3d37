"""Cost of mixing next to a plain ERM training step, measured in the same run.

Prints one JSON line per case: {"model", "method", "ratio_to_erm", "step_ms", "erm_step_ms",
"paired_ratio_median", "paired_ratio_iqr", "images_per_second", ...}. ``paper-cnn`` is Table 2's
CNN at CIFAR-10's shape (3x32x32, batch 250), ``paper-cnn-digits`` the same CNN at the digits'
shape (1x8x8, batch 250). A step is forward + loss + backward + Adam. ERM is ``model(x)`` with
``F.cross_entropy``; mixed steps go through ``ManifoldMixup`` and ``soft_cross_entropy``.

How it is timed: all methods of a model train one model instance with one optimizer, so memory
layout favours none of them. Each round times one step of every method, in a shuffled order;
``ratio_to_erm`` is the ratio of the median step times, ``paired_ratio_*`` the median and
quartiles of the per-round ratios. Alternating single steps keeps the machine's slow drifts (on
the 2-core CI machine its speed moves by 1.5x between minutes) out of the ratios. Rounds run
until ``--seconds`` per model are spent (at least ``--min-rounds``).

Denormal floats are flushed to zero (``torch.set_flush_denormal(True)``; ``--keep-denormals``
turns that off): training the same batch for thousands of steps drives Adam's moments of dead
units into the denormal range, where CPU arithmetic is many times slower, and that slows the
ERM and the mixed steps alike by an amount that has nothing to do with mixing.

``--reference`` adds hand-written mixed steps of the Sequential models (``reference-manifold``,
``reference-confmix-cached``; see ``reference_steps``): the least code that mixes, timed beside the
library in the same rounds, so a ratio can be read as "mixing itself" plus "the library's own cost".

    python benchmarks/mixing_overhead.py [--seconds 40] [--models paper-mlp ...] [--device cpu] [--reference]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

import manifold_mixup as mm


def cases(device):
    g = torch.Generator().manual_seed(0)
    mlp_x, mlp_y = torch.randn(50, 2, generator=g), torch.randint(0, 5, (50,), generator=g)
    cnn_x, cnn_y = torch.randn(250, 3, 32, 32, generator=g), torch.randint(0, 10, (250,), generator=g)
    res_x, res_y = torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,), generator=g)
    yield "paper-mlp", (lambda: mm.models.mlp(5, generator=torch.Generator().manual_seed(1))), mlp_x, mlp_y, {
        "manifold": (["relu1", "relu2", "relu3"], 0.5),
        "input": ("input", 0.5),
        "confmix-fresh": (["relu1", "relu2", "relu3"], "fresh"),
        "confmix-cached": (["relu1", "relu2", "relu3"], "cached"),
    }
    yield "paper-cnn", (lambda: mm.models.paper_cnn((3, 32, 32), 10)), cnn_x, cnn_y, {
        "manifold": (mm.models.PAPER_CNN_MIX_LAYER, 0.5),
        "confmix-fresh": (mm.models.PAPER_CNN_MIX_LAYER, "fresh"),
        "confmix-cached": (mm.models.PAPER_CNN_MIX_LAYER, "cached"),
    }
    dig_x, dig_y = torch.randn(250, 1, 8, 8, generator=g), torch.randint(0, 10, (250,), generator=g)
    yield "paper-cnn-digits", (lambda: mm.models.paper_cnn((1, 8, 8), 10)), dig_x, dig_y, {
        "input": ("input", 0.5),
        "manifold": (mm.models.PAPER_CNN_MIX_LAYER, 0.5),
        "confmix-fresh": (mm.models.PAPER_CNN_MIX_LAYER, "fresh"),
        "confmix-cached": (mm.models.PAPER_CNN_MIX_LAYER, "cached"),
    }
    yield "small-resnet", (lambda: mm.models.small_resnet((3, 32, 32), 10)), res_x, res_y, {
        "manifold": (["block1", "block2"], 0.5),
    }


def make_step(model, opt, x, y, method):
    if method is None:
        def step():
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step
    layers, alpha = method
    if alpha in ("fresh", "cached"):
        alpha = mm.ConfMix(warmup_epochs=0, confidence=alpha)
    mixer = mm.ManifoldMixup(model, layers, alpha=alpha, num_classes=int(y.max()) + 1,
                             generator=torch.Generator().manual_seed(2))
    index = torch.arange(len(x), device=x.device)

    def step():
        logits, targets = mixer(x, y, index=index)
        loss = mm.soft_cross_entropy(logits, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def reference_steps(model, opt, x, y, layers, seed=4):
    """Hand-written mixed steps for a plain ``nn.Sequential`` (``--reference``): what the least
    code can do, with no checks, records or dispatch, so the library's own cost per step can be
    told apart from the cost of the mixing itself on this machine.

    ``reference-manifold``: plans (permutation, Beta(1/2, 1/2) lambdas, mixing matrix) and layers
    drawn 64 steps ahead, then per step the layers before the cut, one matrix product, the layers
    after it, and the targets as the same product of one-hot rows. ``reference-confmix-cached``:
    per step alpha_i read from a numpy array of cached alphas, lambda_i ~ Beta(alpha_i, alpha_i),
    a permutation and the matrix built in numpy, the same forward, and the new alphas written back
    from the max softmax of the outputs."""
    mods = list(model)
    names = list(model._modules)
    layers = [layers] if isinstance(layers, str) else layers
    cuts = [names.index(layer) + 1 for layer in layers]
    b, k = len(x), int(y.max()) + 1
    rng = np.random.default_rng(seed)
    eye = torch.eye(k, device=x.device)
    ahead = []

    def forward(m, cut):
        h = x
        for mod in mods[:cut]:
            h = mod(h)
        h = torch.mm(m, h.reshape(b, -1)).reshape(h.shape)
        for mod in mods[cut:]:
            h = mod(h)
        return h, torch.mm(m, torch.index_select(eye, 0, y))

    def train(logits, targets):
        loss = F.cross_entropy(logits, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return logits

    def manifold():
        if not ahead:
            perms = rng.permuted(np.broadcast_to(np.arange(b), (64, b)), axis=1)
            lams = rng.beta(0.5, 0.5, (64, b)).astype(np.float32)
            mats = np.zeros((64, b, b), np.float32)
            at, rows_ = np.arange(64)[:, None], np.arange(b)
            mats[at, rows_, rows_] = lams
            mats[at, rows_, perms] += 1 - lams
            ahead.extend(zip(torch.from_numpy(mats).to(x.device).unbind(0), rng.integers(0, len(cuts), 64).tolist()))
        m, c = ahead.pop()
        train(*forward(m, cuts[c]))

    alphas = np.zeros(b)
    alphas_t = torch.from_numpy(alphas)
    rows = np.arange(b)
    index = torch.arange(b, device=x.device)

    def confmix_cached():
        a = alphas[index.cpu().numpy()]
        on = a > 0
        lam = rng.beta(a, a) if on.all() else np.where(on, rng.beta(np.where(on, a, 1), np.where(on, a, 1)), 1.0)
        m = np.zeros((b, b), np.float32)
        m[rows, rows] = lam
        m[rows, rng.permutation(b)] += 1 - lam
        logits = train(*forward(torch.from_numpy(m).to(x.device), cuts[int(rng.integers(len(cuts)))]))
        with torch.no_grad():
            conf = torch.softmax(logits, -1).amax(-1)
            alphas_t.index_copy_(0, index.cpu(), conf.sub_(1 / k).mul_(k / (k - 1)).clamp_(0, 1).double().cpu())

    return {"reference-manifold": manifold, "reference-confmix-cached": confmix_cached}


def timed(step, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=40.0, help="time budget per model")
    ap.add_argument("--min-rounds", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep-denormals", action="store_true", help="do not flush denormal floats to zero")
    ap.add_argument("--reference", action="store_true",
                    help="also time hand-written mixed steps (no library code) of the Sequential models")
    ap.add_argument("--models", nargs="+", default=None, help="subset of: paper-mlp paper-cnn paper-cnn-digits small-resnet")
    a = ap.parse_args()
    if not a.keep_denormals:
        torch.set_flush_denormal(True)
    device = torch.device(a.device)
    order = random.Random(0)
    for name, build, x, y, methods in cases(device):
        if a.models and name not in a.models:
            continue
        x, y = x.to(device), y.to(device)
        # one model and one optimizer for every method of a case, so that no method gains or
        # loses by where its tensors happen to lie in memory; only the step itself differs
        model = build().to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        steps = {"erm": make_step(model, opt, x, y, None)}
        for m, spec in methods.items():
            steps[m] = make_step(model, opt, x, y, spec)
        if a.reference and isinstance(model, torch.nn.Sequential):
            steps.update(reference_steps(model, opt, x, y, methods["manifold"][0]))
        warm = {m: min(timed(s, device) for _ in range(5)) for m, s in steps.items()}
        rounds = max(a.min_rounds, int(a.seconds / sum(warm.values())))
        times = {m: [] for m in steps}
        for _ in range(rounds):
            names = list(steps)
            order.shuffle(names)
            for m in names:
                times[m].append(timed(steps[m], device))
        erm = statistics.median(times["erm"])
        for m in (m for m in steps if m != "erm"):
            t = statistics.median(times[m])
            paired = [tm / te for tm, te in zip(times[m], times["erm"])]
            q1, q2, q3 = statistics.quantiles(paired, n=4)
            print(json.dumps({
                "model": name, "method": m, "ratio_to_erm": round(t / erm, 4), "step_ms": round(1e3 * t, 3),
                "erm_step_ms": round(1e3 * erm, 3), "paired_ratio_median": round(q2, 4),
                "paired_ratio_iqr": [round(q1, 4), round(q3, 4)], "rounds": rounds,
                "images_per_second": round(len(x) / t, 1), "erm_images_per_second": round(len(x) / erm, 1),
                "batch": len(x), "input_shape": list(x.shape[1:]), "device": str(device),
                "threads": torch.get_num_threads(), "flush_denormal": not a.keep_denormals,
            }), flush=True)


if __name__ == "__main__":
    main()
