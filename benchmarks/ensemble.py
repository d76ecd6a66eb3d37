"""Benchmark of the vectorised trainer (manifold_mixup.paper.ensemble) against the machine's sgemm rate
and a plain per-model training loop. Prints one JSON object.

    python benchmarks/ensemble.py --models 40 --epochs 2

Workload = the paper's depth study: problems with K in {2,3,4,5}, n = 1000 samples, batch 50,
MLP 2-512-512-512-K, Adam lr 1e-3, methods ERM and mixing at k = 0..3 (alpha 0.5); members are
problems x 5 methods (a method shares its problem's seed). Data are random points with random
labels (the rate does not depend on them).
FLOPs counted per member: 3 * 2 * sum(in*out) * n * epochs (forward, input-grad, weight-grad GEMMs).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

import manifold_mixup as mm
from manifold_mixup.paper.ensemble import EnsembleConfig, MemberSpec, epoch_plan, train_ensemble, chunk_size_for, _n_workers

N, BATCH, HIDDEN, ALPHA = 1000, 50, (512, 512, 512), 0.5
METHODS = [None, 0, 1, 2, 3]


def flops_per_member(k: int, epochs: int) -> int:
    sizes = [2, *HIDDEN, k]
    return 3 * 2 * sum(i * o for i, o in zip(sizes[:-1], sizes[1:])) * N * epochs


def sgemm_gflops(device: torch.device, size: int = 2048, reps: int = 10) -> float:
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    best = float("inf")
    for _ in range(3):
        torch.mm(a, b)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / reps)
    return 2 * size**3 / best / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def workload(models: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ks, specs = [], []
    for i in range(models):
        problem = i // len(METHODS)
        ks.append(2 + problem % 4)
        specs.append(MemberSpec(seed=1000 + problem, mix_layer=METHODS[i % len(METHODS)], alpha=ALPHA))
    x = torch.randn(models, N, 2, generator=g)
    y = torch.stack([torch.randint(0, k, (N,), generator=g) for k in ks])
    return x, y, ks, specs


def plain_loop(x, y, ks, specs, epochs: int, device: torch.device, impl: str) -> float:
    """Seconds per member-epoch of one nn.Sequential at a time (ManifoldMixup hooks, torch Adam)."""
    t0 = time.perf_counter()
    for i, spec in enumerate(specs):
        model = mm.models.mlp(ks[i], HIDDEN, generator=torch.Generator().manual_seed(spec.seed)).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, **{impl: True})
        mixer = None if spec.mix_layer is None else mm.ManifoldMixup(model, mm.models.mlp_layer(spec.mix_layer), alpha=ALPHA)
        xi, yi = x[i].to(device), y[i].to(device)
        for epoch in range(epochs):
            order, perm, lam = epoch_plan(spec.seed, epoch, N, BATCH, spec.alpha)
            order = order.to(device)
            for b in range(N // BATCH):
                idx = order[b * BATCH:(b + 1) * BATCH]
                if mixer is None:
                    loss = torch.nn.functional.cross_entropy(model(xi[idx]), yi[idx])
                else:
                    logits, t = mixer(xi[idx], yi[idx], plan=mm.MixPlan(perm[b], lam[b].float()),
                                      layer=mm.models.mlp_layer(spec.mix_layer))
                    loss = mm.soft_cross_entropy(logits, t)
                opt.zero_grad(set_to_none=False)
                loss.backward()
                opt.step()
    _sync(device)
    return (time.perf_counter() - t0) / (len(specs) * epochs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--chunk", type=int, default=None, help="members per chunk (default: the trainer's)")
    ap.add_argument("--threads", type=int, default=None, help="threads of this process (and per worker)")
    ap.add_argument("--workers", type=int, default=1, help="worker processes (default 1: in-process)")
    ap.add_argument("--plain-models", type=int, default=5, help="members timed in the plain loop")
    ap.add_argument("--plain-epochs", type=int, default=1)
    args = ap.parse_args()
    if args.threads and args.workers <= 1:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    x, y, ks, specs = workload(args.models)
    cfg = EnsembleConfig(epochs=args.epochs, chunk_models=args.chunk, workers=args.workers, threads_per_worker=args.threads)
    chunk = chunk_size_for(2, 5, N, cfg, device.type)
    workers = _n_workers(cfg, device, -(-args.models // chunk))
    threads = args.threads or (max(1, (os.cpu_count() or 1) // workers) if workers > 1 else torch.get_num_threads())

    sgemm = sgemm_gflops(device)
    # warm-up (allocator, MKL) on a tiny run
    train_ensemble(x[:2], y[:2], ks[:2], specs[:2], EnsembleConfig(epochs=1, chunk_models=args.chunk), device=device)
    _sync(device)
    t0 = time.perf_counter()
    train_ensemble(x, y, ks, specs, cfg, device=device)
    _sync(device)
    secs = time.perf_counter() - t0
    flops = sum(flops_per_member(k, args.epochs) for k in ks)
    gflops = flops / secs / 1e9

    # plain loop: best of fused/foreach Adam, in-process with all threads, and 1 thread scaled
    # ideally by the number of cores (as if one plain loop ran per core): favourable to the baseline.
    pm = min(args.plain_models, args.models)
    threads0, cores = torch.get_num_threads(), os.cpu_count() or 1
    if device.type != "cpu":  # one accelerator runs one plain loop at a time: no per-core scaling
        cores = 1
    plain = {}
    for th in sorted({threads0, 1} if device.type == "cpu" else {threads0}, reverse=True):
        torch.set_num_threads(th)
        for impl in ("fused", "foreach"):
            s = plain_loop(x[:pm], y[:pm], ks[:pm], specs[:pm], args.plain_epochs, device, impl)
            plain[(impl, th)] = s / (cores if th == 1 and threads0 > 1 else 1)
    torch.set_num_threads(threads0)
    best_impl, best_th = min(plain, key=plain.get)
    plain_per_member = plain[(best_impl, best_th)] * args.epochs
    ours_per_member = secs / args.models
    sgemm_after = sgemm_gflops(device)

    print(json.dumps({
        "models": args.models,
        "epochs": args.epochs,
        "device": str(device),
        "workers": workers,
        "threads_per_worker": threads,
        "chunk_models": chunk,
        "layout": (f"{workers} worker process(es) x {threads} thread(s), each training chunks of {chunk} members "
                   f"stacked on the bmm batch axis; transposed weights Wt [m, in, out]; baddbmm forward, hand-written "
                   f"backward (mixing = bmm with a BxB mix matrix); fused Adam over the stacked tensors"),
        "loadavg_1min_at_end": round(os.getloadavg()[0], 2),
        "seconds": round(secs, 3),
        "models_per_second": round(args.models / secs, 4),
        "flop_count": "3 * 2 * sum(in*out) * n * epochs per member (n = 1000; fwd + input-grad + weight-grad GEMMs)",
        "gflop_total": round(flops / 1e9, 1),
        "gflops": round(gflops, 2),
        "sgemm_gflops": round(sgemm, 2),
        "sgemm_gflops_after": round(sgemm_after, 2),
        "fraction_of_sgemm_peak": round(gflops / max(sgemm, sgemm_after), 3),
        "plain_loop_seconds_per_member": round(plain_per_member, 3),
        "plain_loop_optimizer": f"torch.optim.Adam({best_impl}=True)",
        "plain_loop_layout": (f"{best_th} thread(s) in-process" if best_th > 1 or threads0 == 1 else
                              f"1 thread, scaled ideally x{cores} cores (one plain loop per core)"),
        "plain_loop_seconds_per_member_all": {f"{k[0]},{k[1]}thr": round(v * args.epochs, 3) for k, v in plain.items()},
        "plain_loop_members_timed": pm,
        "plain_loop_epochs_timed": args.plain_epochs,
        "speedup_vs_plain_loop": round(plain_per_member / ours_per_member, 3),
    }, indent=1))


if __name__ == "__main__":
    main()
